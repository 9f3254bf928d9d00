"""The console's blueprint: a list of clients, a page per client, the operator's actions, the
last registrations refused (with their explain report) and the validator's settings.

Nothing secret is ever rendered: no client secret, registration access token or access token,
nor any hash of one (:func:`shown_metadata` drops them by name and drops every ``sha256:``
value). Every value goes through Jinja's autoescaping; a URL becomes a link only when it is
``https``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from ..errors import RegistrationError, TemporarilyUnavailable
from ..registration import SUSPENDED, TRUST, suspension
from ..signals import client_deleted, client_reinstated, client_suspended
from ..state import EXTENSION_KEY, DCRState
from ..storage import StoredClient
from .refusals import DEFAULT_LIMIT, refusal_log
from .settings import settings_sections

#: the session key of the console's CSRF token
CSRF_SESSION_KEY = "obdcr_console_csrf"
#: the form field that carries it
CSRF_FIELD = "csrf_token"
#: what the confirmation page of each action says it will do (one template for both)
CONFIRM = {
    "suspend": {
        "verb": "Suspend",
        "endpoint": "suspend",
        "consequence": "Its access tokens are revoked at once and it gets no new one until an"
        " operator reinstates it (or re-validation finds it sound); its registration is kept.",
    },
    "delete": {
        "verb": "Delete",
        "endpoint": "delete",
        "consequence": "Its access tokens are revoked and its registration deleted; the software"
        " must register again.",
    },
}
#: the reason an operator's suspension records
OPERATOR_REASON = "suspended by an operator"

#: never shown, whatever a store or a future version puts in the metadata or the SSA
HIDDEN_KEYS = frozenset(
    {
        "client_secret",
        "client_secret_hash",
        "registration_access_token",
        "registration_access_token_hash",
        "access_token",
        "access_token_hash",
        "refresh_token",
        "software_statement",  # the SSA itself: its claims are shown one by one
    }
)
#: shown as links when their value is an https URL
LINK_KEYS = frozenset(
    {
        "logo_uri",
        "policy_uri",
        "tos_uri",
        "client_uri",
        "jwks_uri",
        "software_logo_uri",
        "software_policy_uri",
        "software_tos_uri",
        "software_client_uri",
        "software_jwks_endpoint",
        "software_on_behalf_of_org",
    }
)

NO_SECRET_KEY = (
    "The console's actions need sessions for their CSRF protection: set the app's SECRET_KEY."
)
BAD_CSRF = "The form's CSRF token is missing or wrong: reload the page and try again."


def _state() -> DCRState:
    return current_app.extensions[EXTENSION_KEY]


def _app() -> Any:
    """The app itself (the sender of the extension's signals), not the proxy."""
    return current_app._get_current_object()  # type: ignore[attr-defined]


def _hidden(key: str, value: Any) -> bool:
    if key in HIDDEN_KEYS or key.endswith("_hash"):
        return True
    return isinstance(value, str) and value.lower().startswith("sha256:")


def _display(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value, sort_keys=True, default=str)


def is_https(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith("https://")


def shown_metadata(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{"key", "text", "link"}`` of ``values`` with every secret left out; ``link`` is
    the value when it is an https URL under a key of :data:`LINK_KEYS`, else None."""
    rows = []
    for key in sorted(values):
        value = values[key]
        if _hidden(key, value):
            continue
        link = value if key in LINK_KEYS and is_https(value) else None
        rows.append({"key": key, "text": _display(value), "link": link})
    return rows


def _when(epoch: Any) -> str:
    try:
        return datetime.fromtimestamp(float(epoch), tz=timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
    except (TypeError, ValueError, OverflowError, OSError):
        return str(epoch)


def summary(client: StoredClient) -> dict[str, Any]:
    """What the list shows of ``client``."""
    ssa = client.ssa_claims
    held = suspension(client)
    return {
        "client_id": client.client_id,
        "software_name": ssa.get("software_client_name") or client.metadata.get("client_name"),
        "org_name": ssa.get("org_name"),
        "auth_method": client.token_endpoint_auth_method,
        "status": "suspended" if held is not None else "active",
        "reason": None if held is None else held.get("reason"),
        "since": None if held is None else _when(held.get("since")),
    }


def matches(client: StoredClient, query: str) -> bool:
    """Whether ``query`` (case-insensitive) is in the client_id, software or org name."""
    if not query:
        return True
    row = summary(client)
    needle = query.casefold()
    return any(
        needle in str(row[key]).casefold()
        for key in ("client_id", "software_name", "org_name")
        if row[key]
    )


def trust_rows(client: StoredClient) -> dict[str, Any]:
    """The certificate binding registration established (``extra["trust"]``)."""
    trust = client.extra.get(TRUST)
    if not isinstance(trust, Mapping):
        return {"binding": None, "x5t": None}
    binding = trust.get("certificate_binding")
    return {
        "binding": None if binding is None else _display(binding),
        "x5t": trust.get("x5t#S256"),
    }


# -- CSRF -----------------------------------------------------------------------------------


def _sessions_available() -> bool:
    return bool(current_app.secret_key)


def csrf_token() -> str | None:
    """The session's CSRF token, made on first use; None when the app has no SECRET_KEY."""
    if not _sessions_available():
        return None
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def _plain(message: str, status: int) -> Response:
    return Response(message + "\n", status=status, mimetype="text/plain")


def _check_csrf() -> Response | None:
    if not _sessions_available():
        return _plain(NO_SECRET_KEY, 400)
    expected = session.get(CSRF_SESSION_KEY)
    sent = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not expected or not sent:
        return _plain(BAD_CSRF, 400)
    if not hmac.compare_digest(expected.encode(), sent.encode()):
        return _plain(BAD_CSRF, 400)
    return None


# -- the blueprint ----------------------------------------------------------------------------


@contextlib.contextmanager
def _store_failures_as_503(what: str, *, many: bool = False) -> Iterator[None]:
    try:
        yield
    except RegistrationError:
        raise
    except Exception as exc:  # the store or token store is down: nothing half done is claimed
        subject = "The clients" if many else "The client"
        raise TemporarilyUnavailable(
            f"{subject} could not be {what}; retry later.", detail=repr(exc)
        ) from exc


def console_blueprint(
    authorize: Callable[[], bool],
    *,
    name: str = "obdcr_console",
    keep_refused: int = DEFAULT_LIMIT,
) -> Blueprint:
    """A new console blueprint; ``authorize()`` is called before every request of it (pages
    and actions) and a false answer is a 403 that says nothing of any client.

    Registering it on an app starts keeping that app's last ``keep_refused`` refused
    registrations and updates (in this process's memory) for ``GET /refused``."""
    if not callable(authorize):
        raise TypeError("console_blueprint(authorize=...) needs a callable returning a bool.")
    if isinstance(keep_refused, bool) or not isinstance(keep_refused, int) or keep_refused < 1:
        raise ValueError(f"keep_refused must be a positive integer; got {keep_refused!r}")
    bp = Blueprint(name, __name__, template_folder="templates")

    @bp.record_once
    def listen(setup: Any) -> None:
        # from the app's registration on, not from its first page: a refusal made before an
        # operator opens the console is on the page
        refusal_log(setup.app, keep_refused)

    @bp.errorhandler(RegistrationError)
    def unavailable(error: RegistrationError) -> Any:
        # e.g. the store is down: a plain page that says so, never a 500
        headers = {"Content-Type": "text/plain; charset=utf-8", **error.headers}
        return f"{error.description}\n", error.status, headers

    @bp.before_request
    def check_operator() -> Response | None:
        if not authorize():
            return _plain("Forbidden: you may not see the console.", 403)
        if request.method == "POST":
            return _check_csrf()
        return None

    @bp.after_request
    def no_store(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @bp.context_processor
    def common() -> dict[str, Any]:
        return {
            "csrf_token": csrf_token,
            "csrf_field": CSRF_FIELD,
            "sessions": _sessions_available(),
            "console": name,
        }

    def client_or_404(client_id: str) -> StoredClient:
        with _store_failures_as_503("read"):
            client = _state().store.get(client_id)
        if client is None:
            abort(404)
        return client

    @bp.get("/")
    def index() -> str | Response:
        try:
            query = request.args.get("q", "").strip()
        except UnicodeDecodeError:  # Werkzeug decodes a query string's raw bytes strictly
            return _plain("The search's query string is not UTF-8: search again.", 400)
        with _store_failures_as_503("listed", many=True):
            clients: Iterable[StoredClient] = _state().store.list()
            rows = [summary(c) for c in clients if matches(c, query)]
        rows.sort(key=lambda r: (str(r["org_name"] or ""), str(r["software_name"] or "")))
        return render_template("obdcr_console/index.html", rows=rows, query=query)

    @bp.get("/clients/<client_id>")
    def client_page(client_id: str) -> str:
        client = client_or_404(client_id)
        return render_template(
            "obdcr_console/client.html",
            client=summary(client),
            issued_at=_when(client.client_id_issued_at),
            updated_at=None if client.updated_at is None else _when(client.updated_at),
            metadata=shown_metadata(client.metadata),
            ssa=shown_metadata(client.ssa_claims),
            trust=trust_rows(client),
        )

    @bp.get("/clients/<client_id>/suspend")
    def confirm_suspend(client_id: str) -> str:
        client = client_or_404(client_id)
        return render_template(
            "obdcr_console/confirm.html", client=summary(client), action=CONFIRM["suspend"]
        )

    @bp.post("/clients/<client_id>/suspend")
    def suspend(client_id: str) -> Any:
        state = _state()
        client = client_or_404(client_id)
        extra = dict(client.extra)
        extra[SUSPENDED] = {"reason": OPERATOR_REASON, "since": int(state.clock())}
        suspended = client.with_changes(extra=extra)
        with _store_failures_as_503("suspended"):
            state.store.replace(suspended)
            state.tokens.revoke_client(client.client_id)
        # as re-validation does: audit receivers hear of it, and this process's client cache
        # forgets the client at once
        client_suspended.send(_app(), client=suspended, reason=OPERATOR_REASON)
        return redirect(url_for(".client_page", client_id=client.client_id), 303)

    @bp.post("/clients/<client_id>/reinstate")
    def reinstate(client_id: str) -> Any:
        state = _state()
        client = client_or_404(client_id)
        extra = {k: v for k, v in client.extra.items() if k != SUSPENDED}
        reinstated = client.with_changes(extra=extra)
        with _store_failures_as_503("reinstated"):
            state.store.replace(reinstated)
        client_reinstated.send(_app(), client=reinstated)
        return redirect(url_for(".client_page", client_id=client.client_id), 303)

    @bp.get("/refused")
    def refused() -> str:
        log = refusal_log(_app(), keep_refused)
        return render_template("obdcr_console/refused.html", refusals=log.recent(), limit=log.limit)

    @bp.get("/settings")
    def settings_page() -> str:
        return render_template("obdcr_console/settings.html", sections=settings_sections(_state()))

    @bp.get("/clients/<client_id>/delete")
    def confirm_delete(client_id: str) -> str:
        client = client_or_404(client_id)
        return render_template(
            "obdcr_console/confirm.html", client=summary(client), action=CONFIRM["delete"]
        )

    @bp.post("/clients/<client_id>/delete")
    def delete(client_id: str) -> Any:
        state = _state()
        client = client_or_404(client_id)
        state.registrar.delete(client)  # its tokens first, then the client
        client_deleted.send(_app(), client=client)
        return redirect(url_for(".index"), 303)

    return bp
