"""The TPP's web page: where a customer connects their AnyBank accounts (``obdcr-tpp web``).

``create_tpp_web_app(workdir, redirect_uri=...)`` reads the TPP's working folder, the same
files ``obdcr-tpp`` writes (tpp.json, the keys and certificates, registration.json), and uses
the command line's own steps (:mod:`example_app.tpp`):

* ``GET /``: "Connect your AnyBank accounts": the software, its client_id, whether it is
  registered (and the command to run when not), and the Connect button;
* ``POST /connect`` (CSRF): a client_credentials token over mTLS, an account-access-consent,
  a request object signed with the registered ``request_object_signing_alg``; the state and
  nonce kept for the callback; the browser sent to the bank's ``authorization_endpoint``. A
  sandbox-only option spoils the request on purpose, to see the bank refuse it;
* ``GET /callback``: the bank answers in the fragment (OIDC hybrid flow), which never reaches
  a server: a few lines of JavaScript post it to ``POST /callback`` (CSRF), which checks the
  state and the id_token, exchanges the code over mTLS, and shows the accounts;
* ``GET /accounts``: the accounts and balances the consent opens, the token's certificate
  binding (``cnf``; never a token), and ``POST /refresh`` and ``POST /revoke`` (CSRF).

Refusals are pages that say what went wrong and what to do: 400 for an answer this TPP cannot
accept (state, id_token), 502 when the bank refused or could not be reached, 409 when the
working folder is not ready (not registered), and the customer's denial a page of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from flask import (
    Flask,
    Response,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from jwcrypto import jwk

from ._util import Refusal, read_json
from .pages import csrf_context, csrf_ok, secure_page_headers
from .tpp import (
    DEFAULT_PERMISSIONS,
    DEFAULT_REDIRECT_URI,
    PERMISSIONS,
    TPP,
    ConsentDenied,
    Failed,
    InvalidAnswer,
    cli,
    complete_authorization,
    consent_status,
    create_consent,
    delete_consent,
    load_consent,
    read_accounts,
    refresh_consent_token,
    start_authorization,
    tpp_command,
)

__all__ = ["TAMPERING", "create_tpp_web_app", "web_certificate"]

#: the session cookie's name: the bank's pages live on the same host (another port), and a
#: browser keeps cookies per host, not per port
SESSION_COOKIE = "obdcr_tpp_session"
CSRF_KEY = "csrf"
STATE_KEY = "state"
#: the sandbox's ways to spoil a request on purpose (the Connect form's debug option)
TAMPERING = {
    "": "none: a correct request",
    "other-key": "request object signed by another key (same kid)",
    "unregistered-redirect": "a redirect URI the client did not register",
}
#: the fields of the bank's answer the callback page posts on
ANSWER_FIELDS = ("code", "id_token", "state", "error", "error_description", "error_uri")


def web_certificate(tpp: TPP, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """An HTTPS certificate for the page from the sandbox CA whose bundle tpp.json names
    (``<instance>/directory``), kept in ``<workdir>/web-tls/``."""
    from .directory import DirectoryState
    from .serving import server_hosts

    ca_file = tpp.config.get("ca_file")
    candidates = [Path(ca_file).parent] if ca_file else []
    candidates.append(tpp.workdir.parent / "directory")
    folder = next((c for c in candidates if (c / "ca-bundle.pem").is_file()), None)
    if folder is None:
        raise click.UsageError(
            "no sandbox CA to issue the page's HTTPS certificate (looked in"
            f" {', '.join(str(c) for c in candidates)}): start `make serve` and `onboard`"
            " first, or pass --cert and --key"
        )
    state = DirectoryState.open(folder, create=False)
    return state.issue_server_certificate(
        tpp.workdir / "web-tls", name="tpp-web", hosts=server_hosts(host)
    )


def create_tpp_web_app(
    workdir: str | os.PathLike[str],
    *,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
    secret_key: bytes | None = None,
) -> Flask:
    """The TPP's page for the working folder ``workdir``; ``redirect_uri`` is where it is
    served plus ``/callback`` (what the software statement lists and the client registered)."""
    app = Flask(__name__, template_folder="templates", static_folder="static")
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_bytes(32),
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        TPP_WORKDIR=str(Path(workdir).resolve()),
        TPP_REDIRECT_URI=redirect_uri,
    )

    def open_tpp() -> TPP:
        return TPP(app.config["TPP_WORKDIR"])

    @contextlib.contextmanager
    def as_command_line(tpp: TPP) -> Iterator[None]:
        """The command line's hints name this working folder (``--workdir``) from here too."""
        with click.Context(cli, obj=tpp):
            yield

    @app.before_request
    def check_csrf() -> Any:
        g.script_nonce = secrets.token_urlsafe(16)
        if request.method != "POST" or csrf_ok(CSRF_KEY):
            return None
        return problem(
            400,
            "This form has expired",
            "The page was opened in another browser session, or too long ago (its CSRF token"
            " does not match this session's).",
            "Go back to the start page and try again.",
        )

    @app.after_request
    def headers(response: Response) -> Response:
        # no-referrer: the callback's address carries the code and id_token (in its fragment,
        # which no Referer includes; no-referrer all the same)
        return secure_page_headers(
            response,
            f"default-src 'self'; script-src 'nonce-{g.get('script_nonce', '')}';"
            " base-uri 'none'; frame-ancestors 'none'",
        )

    @app.context_processor
    def common() -> dict[str, Any]:
        return {
            **csrf_context(CSRF_KEY),
            "script_nonce": g.get("script_nonce", ""),
            "software_name": open_tpp().config.get("client_name"),
        }

    def problem(status: int, title: str, cause: str, remedy: str, **extra: Any) -> Any:
        page = render_template("tpp/problem.html", title=title, cause=cause, remedy=remedy, **extra)
        return page, status

    def refusal(exc: Refusal) -> Any:
        """A refusal of the command line's steps as a page: its first line, cause and what to
        do; 400 for an id_token or state this TPP cannot accept, 502 when the bank refused or
        could not be reached, 409 when the working folder is not ready."""
        status = 400 if isinstance(exc, InvalidAnswer) else 502 if upstream(exc) else 409
        message = exc.format_message()
        return problem(status, message[:1].upper() + message[1:], exc.cause, exc.remedy)

    def upstream(exc: Refusal) -> bool:
        return not isinstance(exc, Failed) or exc.upstream

    def overview(tpp: TPP) -> dict[str, Any]:
        registration = read_json(tpp.path("registration.json"))
        redirect_uris = list((registration or {}).get("redirect_uris") or [])
        return {
            "software_name": tpp.config.get("client_name"),
            "software_id": tpp.config.get("software_id"),
            "org_id": tpp.config.get("org_id"),
            "bank_url": tpp.config.get("bank_url"),
            "registration": registration,
            "redirect_uri": app.config["TPP_REDIRECT_URI"],
            "redirect_registered": app.config["TPP_REDIRECT_URI"] in redirect_uris,
            "status_command": tpp_command(tpp, "status"),
            "onboard_command": tpp_command(
                tpp, f"onboard --redirect-uri {app.config['TPP_REDIRECT_URI']}"
            ),
            "workdir": tpp.workdir,
            "consent": load_consent(tpp),
        }

    @app.get("/")
    def home() -> Any:
        tpp = open_tpp()
        return render_template(
            "tpp/home.html",
            permissions=PERMISSIONS,
            chosen=DEFAULT_PERMISSIONS,
            tampering=TAMPERING,
            **overview(tpp),
        )

    @app.post("/connect")
    def connect() -> Any:
        tpp = open_tpp()
        permissions = request.form.getlist("permission") or list(DEFAULT_PERMISSIONS)
        unknown = [p for p in permissions if p not in PERMISSIONS]
        tamper = request.form.get("tamper", "")
        if unknown or tamper not in TAMPERING:
            return problem(
                400,
                "This request cannot be sent",
                f"Unknown permission or option: {', '.join(unknown) or tamper}.",
                "Go back to the start page and choose from the list.",
            )
        redirect_uri = app.config["TPP_REDIRECT_URI"]
        key = None
        with as_command_line(tpp):
            try:
                if tamper == "other-key":
                    # the same kid as the published signing key, but another key: the
                    # signature cannot verify with the software's JWKS
                    key = jwk.JWK.generate(kty="RSA", size=2048, kid=tpp.signing_key()["kid"])
                elif tamper == "unregistered-redirect":
                    redirect_uri = redirect_uri.rsplit("/", 1)[0] + "/not-registered"
                data = create_consent(tpp, permissions)
                url, claims = start_authorization(
                    tpp, data["ConsentId"], redirect_uri=redirect_uri, origin="web", key=key
                )
            except Refusal as exc:
                return refusal(exc)
        session[STATE_KEY] = claims["state"]
        return redirect(url, code=303)

    @app.get("/callback")
    def callback_page() -> Any:
        command = tpp_command(open_tpp(), "callback 'ADDRESS'")
        return render_template("tpp/callback.html", fields=ANSWER_FIELDS, command=command)

    @app.post("/callback")
    def callback() -> Any:
        tpp = open_tpp()
        answer = {k: request.form[k] for k in ANSWER_FIELDS if k in request.form}
        browser_state = session.pop(STATE_KEY, None)
        with as_command_line(tpp):
            try:
                complete_authorization(tpp, answer, session_state=browser_state)
            except ConsentDenied as exc:
                status = None
                if exc.consent_id:
                    with contextlib.suppress(Refusal):
                        status = consent_status(tpp, exc.consent_id).get("Status")
                return render_template(
                    "tpp/denied.html",
                    message=exc.format_message(),
                    consent_id=exc.consent_id,
                    consent_status=status,
                )
            except Refusal as exc:
                return refusal(exc)
        flash("Connected: the bank checked you, and you chose these accounts.")
        return redirect(url_for("accounts"), code=303)

    @app.get("/accounts")
    def accounts() -> Any:
        tpp = open_tpp()
        record = load_consent(tpp)
        if not record or not record.get("access_token"):
            return render_template("tpp/accounts.html", consent=None, found=[], **_none())
        found: list[dict[str, Any]] = []
        failure: Refusal | None = None
        with as_command_line(tpp):
            try:
                found = read_accounts(tpp)
            except Refusal as exc:
                failure = exc
        page = render_template(
            "tpp/accounts.html",
            consent=record,
            found=found,
            failure=failure,
            failure_message=failure.format_message() if failure else None,
        )
        return page, (502 if failure is not None and upstream(failure) else 200)

    def _none() -> dict[str, Any]:
        return {"failure": None, "failure_message": None}

    @app.post("/refresh")
    def refresh() -> Any:
        tpp = open_tpp()
        with as_command_line(tpp):
            try:
                refresh_consent_token(tpp)
            except Refusal as exc:
                return refusal(exc)
        flash(
            "A new access token for the same consent (refresh_token grant), bound to the same"
            " certificate."
        )
        return redirect(url_for("accounts"), code=303)

    @app.post("/revoke")
    def revoke() -> Any:
        tpp = open_tpp()
        record = load_consent(tpp)
        if not record or not record.get("consent_id"):
            return problem(
                409,
                "No consent to revoke",
                "No customer has connected through this page yet.",
                "Connect first, on the start page.",
            )
        with as_command_line(tpp):
            try:
                delete_consent(tpp, record["consent_id"])
            except Refusal as exc:
                return refusal(exc)
        flash(
            f"Consent {record['consent_id']} revoked at the bank. The token is kept, to show"
            " the bank refusing it:"
        )
        return redirect(url_for("accounts"), code=303)

    @app.errorhandler(404)
    def not_found(error: Any) -> Any:
        return problem(
            404,
            "No such page",
            f"{request.path} is not a page of this TPP.",
            "Start from the start page.",
        )

    @app.errorhandler(405)
    def not_allowed(error: Any) -> Any:
        return problem(
            405,
            "Not like that",
            f"{request.method} {request.path} is not accepted here.",
            "Start from the start page.",
        )

    return app
