"""The last registrations refused, kept in memory for the console's "Refused" page.

A :class:`RefusalLog` per app listens to
:data:`~flask_obdcr.signals.registration_request_refused`
(connected when a console blueprint is registered on the app) and keeps the last ``limit``
refusals of ``POST /register`` and ``PUT /register/<id>``: in this process only, lost on a
restart, each worker of a multi-process server keeping its own.

Everything kept comes from a request that was refused, so nothing of it is trusted: every text
is cut to a bounded length with its control characters escaped, and the page escapes it again
(Jinja's autoescaping).

Each refusal carries its explain report (docs/architecture.md, "Contract: explain": one row per
policy of the pipeline, ``passed`` / ``failed`` / ``not reached``, the detail and the clause),
taken from the run that refused it rather than from a second run: the pipeline stops at its
first refusal, whose name the error carries, so the policies before it passed and those after
it were not reached. A second run would fetch again whatever the request names that could not
be fetched the first time (an unreachable software JWKS would hold a worker twice as long) and
could judge differently from the run that refused (a key rotated in between); this costs
nothing and reports what happened. The rows are those ``dcr.explain`` gives for the same
request at the same moment.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from flask import Flask, has_request_context, request

from .. import jose
from ..errors import RegistrationError
from ..explain import FAILED, NOT_REACHED, PASSED, describe
from ..log import escape, get_logger
from ..policies import RequestBody, RequestJWT
from ..registration import REPLAY_CHECK, STORE_CHECK
from ..state import EXTENSION_KEY

__all__ = ["DEFAULT_LIMIT", "Refusal", "RefusalLog", "refusal_log"]

logger = get_logger()

#: how many refusals an app keeps by default
DEFAULT_LIMIT = 50
#: ``app.extensions`` key of the app's :class:`RefusalLog`
LOG_KEY = "obdcr_console_refusals"
#: the most characters kept of a short value (ids, names, codes) and of a long one (details)
SHORT = 200
LONG = 1000
#: the request methods whose refusals are kept: a registration and an update
KEPT_METHODS = ("POST", "PUT")
#: what an unknown software or organisation is shown as
UNKNOWN = "unknown"
#: the policy whose row holds the registrar's replay check (as in explain)
REPLAY_HOST = "request_claims"
SSA_POLICY = "software_statement"


def shown(value: Any, limit: int = SHORT) -> str:
    """``value`` as text fit to show: control characters escaped, at most ``limit``
    characters (an ellipsis says it was cut)."""
    text = escape(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Refusal:
    """One refused request, as the page shows it (every text already bounded)."""

    at: float
    kind: str  # "registration" or "update"
    path: str
    software_id: str
    org: str
    #: whether software_id and org come from a verified software statement
    ssa_verified: bool
    certificate_subject: str | None
    policy: str
    status: int
    code: str
    description: str
    detail: str | None
    #: explain's rows: {"policy", "verdict", "detail", "clause"}
    report: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)
    #: what the report cannot say in its rows (a refusal outside the pipeline)
    note: str | None = None

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))


class RefusalLog:
    """The last ``limit`` refusals of one app, newest last; safe across threads."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValueError(f"keep_refused must be an integer from 1 to 10000; got {limit!r}")
        self.limit = limit
        self._items: deque[Refusal] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def recent(self) -> list[Refusal]:
        """The refusals kept, newest first."""
        with self._lock:
            return list(reversed(self._items))

    def add(self, refusal: Refusal) -> None:
        with self._lock:
            self._items.append(refusal)

    def receive(
        self,
        sender: Flask,
        *,
        error: RegistrationError | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        certificate: x509.Certificate | None = None,
        **extra: Any,
    ) -> None:
        """The ``registration_request_refused`` receiver. It never raises: a failure here must not
        turn a refusal into a 500, so it is logged and the refusal is not kept."""
        if error is None:
            return
        if has_request_context() and request.method not in KEPT_METHODS:
            return  # a GET or DELETE of a registration refused: no registration was tried
        try:
            self.add(_refusal(sender, error, body, content_type, certificate))
        except Exception:
            logger.exception("the console could not keep a refused registration")


def refusal_log(app: Flask, limit: int = DEFAULT_LIMIT) -> RefusalLog:
    """The app's refusal log, made and connected to the signal on first use; a later call
    with a larger ``limit`` enlarges it (two consoles on one app share one log)."""
    from ..signals import registration_request_refused

    log: RefusalLog | None = app.extensions.get(LOG_KEY)
    if log is None:
        log = RefusalLog(limit)
        app.extensions[LOG_KEY] = log
        # a weak reference to the bound method: the log lives as long as the app holds it
        registration_request_refused.connect(log.receive, sender=app)
    elif limit > log.limit:
        with log._lock:
            log._items = deque(log._items, maxlen=limit)
            log.limit = limit
    return log


# -- building one refusal ---------------------------------------------------------------------


def _refusal(
    app: Flask,
    error: RegistrationError,
    body: bytes | None,
    content_type: str | None,
    certificate: x509.Certificate | None,
) -> Refusal:
    state = app.extensions[EXTENSION_KEY]
    report, note = report_of(state.registrar.pipeline, error)
    verified = any(row["policy"] == SSA_POLICY and row["verdict"] == PASSED for row in report)
    claims = _ssa_claims(state, body, content_type)
    method = request.method if has_request_context() else "POST"
    path = request.path if has_request_context() else "/register"
    return Refusal(
        at=float(state.clock()),
        kind="update" if method == "PUT" else "registration",
        path=shown(path),
        software_id=shown(claims.get("software_id") or UNKNOWN),
        org=_org(claims),
        ssa_verified=verified and bool(claims),
        certificate_subject=None if certificate is None else _subject(certificate),
        policy=shown(error.policy or "-"),
        status=error.status,
        code=shown(error.error),
        description=shown(error.description, LONG),
        detail=None if not error.detail else shown(error.detail, LONG),
        report=tuple(report),
        note=note,
    )


def report_of(pipeline: Any, error: RegistrationError) -> tuple[list[dict[str, Any]], str | None]:
    """Explain's rows for a request ``error`` refused, from the policy it names; and a note
    when the refusal came from outside the pipeline (the store, the management checks)."""
    items = [(str(item.name), _clause(item)) for item in pipeline]
    names = [name for name, _ in items]
    failed = describe(error)
    target = REPLAY_HOST if error.policy == REPLAY_CHECK else error.policy
    note = None
    if target in names:
        at = names.index(target)
    elif error.policy == STORE_CHECK:
        at = len(names)  # every check passed, then the store refused
        note = f"Every check passed; then the client store refused it: {failed}"
    else:
        at = -1  # refused before any check ran (who may use /register/<id>, say)
        note = f"Refused by {error.policy or 'the endpoint'} before the checks ran: {failed}"
    rows = []
    for index, (name, clause) in enumerate(items):
        if at < 0 or index > at:
            verdict, detail = NOT_REACHED, None
        elif index < at:
            verdict, detail = PASSED, None
        else:
            verdict, detail = FAILED, shown(failed, LONG)
        rows.append({"policy": name, "verdict": verdict, "detail": detail, "clause": clause})
    return rows, None if note is None else shown(note, LONG)


def _clause(item: Any) -> str | None:
    clause = getattr(item, "clause", None)
    return clause if isinstance(clause, str) else None


def _ssa_claims(state: Any, body: bytes | None, content_type: str | None) -> dict[str, Any]:
    """The software statement's claims, read (not verified) from the body with the pipeline's
    own first two checks; {} when they cannot be read. Reads nothing but the body: no fetch."""
    if not body:
        return {}
    context = state.registrar.new_context(body, content_type, lambda: None)
    try:
        RequestBody()(context)  # the size limit, the media type, a compact JWS
        RequestJWT()(context)
        _header, claims = jose.peek(context.software_statement)
    except (RegistrationError, jose.MalformedJWS):
        return {}
    return claims


def _org(claims: Mapping[str, Any]) -> str:
    name, org_id = claims.get("org_name"), claims.get("org_id")
    name = name if isinstance(name, str) and name else None
    org_id = org_id if isinstance(org_id, str) and org_id else None
    if name and org_id:
        return shown(f"{name} ({org_id})")
    return shown(name or org_id or UNKNOWN)


def _subject(certificate: x509.Certificate) -> str:
    try:
        return shown(certificate.subject.rfc4514_string())
    except ValueError:  # a subject cryptography cannot render
        return "unreadable"
