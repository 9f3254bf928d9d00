"""AnyBank's operator console behind a sign-in page, for a sandbox operator.

``install_console(app, dcr)`` mounts the extension's console (``dcr.console_blueprint``) at
``/console`` and a small sign-in page:

* ``GET /console-login`` shows the form, ``POST /console-login`` signs in (user name and
  password from ``ANYBANK_OPERATOR_USER`` / ``ANYBANK_OPERATOR_PASSWORD``, by default the
  sandbox's ``operator`` / :data:`SANDBOX_PASSWORD`, which the page states as sandbox-only);
  then a 303 to ``next``, which must be a path of this site (anything else goes to the
  console's first page);
* ``POST /console-logout`` signs out.

The operator is remembered in Flask's session (a signed cookie: the app needs a
``secret_key``). Both forms carry the console's CSRF token (kept in the session). A browser
that is not signed in and asks for a console page is sent to the sign-in page with that page
as ``next``; any other request of the console gets its 403.

The console and the sign-in page are browser pages, reached without a TPP certificate: the
bank's certificate gate lets :data:`BROWSER_ENDPOINTS` through.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from flask_obdcr import OpenBankingDCR
from flask_obdcr.console.views import CSRF_FIELD, CSRF_SESSION_KEY, csrf_token

from .pages import csrf_ok, secure_page_headers

__all__ = [
    "BROWSER_ENDPOINTS",
    "CONSOLE_ENDPOINTS",
    "PASSWORD_KEY",
    "SANDBOX_PASSWORD",
    "SANDBOX_USER",
    "USER_KEY",
    "install_console",
]

USER_KEY = "ANYBANK_OPERATOR_USER"
PASSWORD_KEY = "ANYBANK_OPERATOR_PASSWORD"
#: the sandbox's operator; a real deployment sets both keys (and signs operators in its own way)
SANDBOX_USER = "operator"
SANDBOX_PASSWORD = "anybank-sandbox-only"
#: the session key of the signed-in operator's user name
SESSION_KEY = "anybank_operator"
CONSOLE = "obdcr_console"
OPERATOR = "anybank_operator"
#: the console's endpoints (its pages and actions)
CONSOLE_ENDPOINTS = frozenset(
    f"{CONSOLE}.{name}"
    for name in (
        "index",
        "client_page",
        "confirm_suspend",
        "suspend",
        "reinstate",
        "confirm_delete",
        "delete",
        "refused",
        "settings_page",
    )
)
#: every endpoint install_console adds: reached by a browser, without a TPP certificate
BROWSER_ENDPOINTS = CONSOLE_ENDPOINTS | {f"{OPERATOR}.sign_in", f"{OPERATOR}.sign_out"}

WRONG_CREDENTIALS = "That user name and password do not match. Try again."
BAD_FORM = "The form had expired or was not sent from this page. Sign in again below."


def signed_in() -> bool:
    """Whether this session's operator is the configured one (a change of user name in the
    configuration signs everyone out)."""
    user = session.get(SESSION_KEY)
    return isinstance(user, str) and user == current_app.config[USER_KEY]


def local_path(target: Any) -> str | None:
    """``target`` when it is a path of this site (``/console/clients/x?q=1``); None for
    anything a browser could take elsewhere: another scheme or host, ``//host``, ``/\\host``
    (browsers read a backslash as a slash), control characters."""
    if not isinstance(target, str) or not target.startswith("/") or len(target) > 2000:
        return None
    if target.startswith("//") or "\\" in target:
        return None
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _asked_next() -> Any:
    """The ``next`` of the form, else of the query string; None when the query string is not
    UTF-8 (Werkzeug decodes its raw bytes strictly), as for any ``next`` that is not a path."""
    if "next" in request.form:
        return request.form["next"]
    try:
        return request.args.get("next")
    except UnicodeDecodeError:
        return None


def _credentials_match(user: str, password: str) -> bool:
    # both compared, always, in constant time: the answer takes as long whichever is wrong
    config = current_app.config
    user_ok = hmac.compare_digest(user.encode(), str(config[USER_KEY]).encode())
    password_ok = hmac.compare_digest(password.encode(), str(config[PASSWORD_KEY]).encode())
    return user_ok & password_ok


def _sign_in_page(*, status: int = 200, message: str | None = None, user: str = "") -> Response:
    next_path = local_path(_asked_next()) or url_for(f"{CONSOLE}.index")
    body = render_template(
        "operator/sign_in.html",
        message=message,
        user=user[:200],
        next_path=next_path,
        csrf_field=CSRF_FIELD,
        csrf_token=csrf_token(),
        sandbox=current_app.config[PASSWORD_KEY] == SANDBOX_PASSWORD,
        sandbox_user=SANDBOX_USER,
        sandbox_password=SANDBOX_PASSWORD,
    )
    return secure_page_headers(Response(body, status=status, mimetype="text/html"), None)


def _operator_blueprint() -> Blueprint:
    bp = Blueprint(OPERATOR, __name__, template_folder="templates")

    @bp.route("/console-login", methods=["GET", "POST"], endpoint="sign_in")
    def sign_in() -> Response:
        if not current_app.secret_key:
            # a server set up without sessions: say so, rather than fail on the first write
            return _sign_in_page(
                status=503, message="This server has no secret_key: it cannot sign anyone in."
            )
        if request.method == "GET":
            if signed_in():
                target = local_path(_asked_next()) or url_for(f"{CONSOLE}.index")
                return redirect(target, 303)  # type: ignore[return-value]
            return _sign_in_page()
        user = request.form.get("user", "")
        password = request.form.get("password", "")
        if not csrf_ok(CSRF_SESSION_KEY, CSRF_FIELD):
            return _sign_in_page(status=400, message=BAD_FORM, user=user)
        if not _credentials_match(user, password):
            return _sign_in_page(status=401, message=WRONG_CREDENTIALS, user=user)
        target = local_path(request.form.get("next")) or url_for(f"{CONSOLE}.index")
        # the operator's keys only: the bank's customer pages keep theirs in the same cookie.
        # A new CSRF token from now on: none seen before signing in is good afterwards.
        session.pop(CSRF_SESSION_KEY, None)
        session[SESSION_KEY] = current_app.config[USER_KEY]
        return redirect(target, 303)  # type: ignore[return-value]

    @bp.post("/console-logout", endpoint="sign_out")
    def sign_out() -> Response:
        if not csrf_ok(CSRF_SESSION_KEY, CSRF_FIELD):
            return _sign_in_page(status=400, message=BAD_FORM)
        session.pop(SESSION_KEY, None)
        session.pop(CSRF_SESSION_KEY, None)
        return redirect(url_for(f"{OPERATOR}.sign_in"), 303)  # type: ignore[return-value]

    return bp


def install_console(app: Flask, dcr: OpenBankingDCR) -> None:
    """Mount the console at ``/console`` for a signed-in operator, and the sign-in page.
    Once per app: a second call (create_app installs it) does nothing."""
    if OPERATOR in app.blueprints:
        return
    app.config.setdefault(USER_KEY, SANDBOX_USER)
    app.config.setdefault(PASSWORD_KEY, SANDBOX_PASSWORD)
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        # the session cookie is the operator's credential: not sent with other sites' requests
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"

    @app.before_request
    def send_browsers_to_sign_in() -> Any:
        # before the console's own check, which would answer 403: a browser asking for a page
        # is sent to sign in, and brought back afterwards
        if request.blueprint != CONSOLE or signed_in():
            return None
        if request.method in ("GET", "HEAD"):
            try:
                back = request.full_path.rstrip("?")
            except UnicodeDecodeError:  # a query string that is not UTF-8: the page alone
                back = request.path
            return redirect(url_for(f"{OPERATOR}.sign_in", next=back), 303)
        return None

    @app.context_processor
    def sign_out_button() -> dict[str, Any]:
        if request.blueprint != CONSOLE or not signed_in():
            return {}
        return {
            "console_sign_out": {
                "url": url_for(f"{OPERATOR}.sign_out"),
                "user": session.get(SESSION_KEY),
            }
        }

    app.register_blueprint(_operator_blueprint())
    app.register_blueprint(dcr.console_blueprint(authorize=signed_in), url_prefix="/console")
