"""Explain a registration request: every check's verdict, in order, and the rule it enforces.

:func:`explain` runs the registrar's whole pipeline on a request the way ``POST /register``
would, but stores nothing, sends no signal and does not consume the request's ``jti``: the
same body can be registered afterwards. Each policy gets one row::

    {"policy": "software_statement", "verdict": "passed" | "failed" | "not reached",
     "detail": "..." or None, "clause": "OB DCR v3.3 ... ; RFC ... ; docs/architecture.md ..."}

The first policy to refuse is "failed", with the detail the wire error withholds (the part
``POST /register`` only logs); the policies after it are "not reached". The report has exactly
one row per policy (the contract): the registrar's replay check, which runs after the pipeline
when a request is registered, is reported in the row of ``request_claims``, the policy whose
rule it is ("jti missing or replayed"); here it only *looks* (``ReplayCache.seen``) and never
remembers. docs/architecture.md, "Contract: explain".

Core: no Flask. ``dcr.explain``, ``flask obdcr explain`` and the sandbox-only
``POST /register/explain`` are the glue over it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography import x509

from .certificates import load_certificate
from .errors import InvalidClient, RegistrationError, TemporarilyUnavailable
from .log import get_logger
from .policies import RegistrationContext
from .registration import (
    CertificateLoader,
    Registrar,
    replayed,
)
from .storage import StoredClient

__all__ = [
    "FAILED",
    "NOT_REACHED",
    "PASSED",
    "certificate_loader",
    "describe",
    "explain",
    "format_report",
    "registrable",
]

PASSED = "passed"
FAILED = "failed"
NOT_REACHED = "not reached"

logger = get_logger()

#: what a certificate may be given as: PEM (or DER) text or bytes, a parsed certificate, none
CertificateInput = x509.Certificate | str | bytes | None


def certificate_loader(certificate: CertificateInput) -> CertificateLoader:
    """A deferred loader for ``certificate``, as the pipeline reads the request's: a PEM or
    DER that is not a certificate is refused (401 ``invalid_client``) by the first policy that
    asks for it, exactly as a garbage ``SSL_CLIENT_CERT`` would be at ``POST /register``."""
    if certificate is None or isinstance(certificate, x509.Certificate):
        parsed = certificate
        return lambda: parsed
    if not isinstance(certificate, str | bytes):
        raise TypeError(
            "certificate must be PEM (str or bytes), an x509.Certificate or None;"
            f" got {type(certificate).__name__}"
        )
    data = certificate

    def load() -> x509.Certificate:
        try:
            return load_certificate(data)
        except (ValueError, TypeError) as exc:
            raise InvalidClient(
                "The client certificate could not be read.", detail=str(exc)
            ) from None

    return load


def explain(
    registrar: Registrar,
    body: bytes | str,
    content_type: str | None,
    certificate: CertificateLoader,
    *,
    existing: StoredClient | None = None,
) -> list[dict[str, Any]]:
    """One row per policy of ``registrar.pipeline``, in order (the replay check in the row of
    ``request_claims``).

    ``certificate`` is a loader (:func:`certificate_loader`, or the certificate service's
    ``loader(environ)`` for a live request). Nothing is stored and no jti is remembered;
    what the policies cache anyway (fetched key sets, verified SSAs, revocation answers) is
    what any registration would have cached.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    context = registrar.new_context(body, content_type, certificate, existing=existing)
    rows: list[dict[str, Any]] = []
    refused = False
    for item in registrar.pipeline:
        clause = getattr(item, "clause", None)
        clause = clause if isinstance(clause, str) else None
        if refused:
            rows.append(_row(item.name, NOT_REACHED, None, clause))
            continue
        try:
            item(context)
        except RegistrationError as exc:
            refused = True
            rows.append(_row(item.name, FAILED, describe(exc), clause))
        except Exception as exc:  # a broken policy: POST /register would answer 500
            logger.exception("policy %s raised while explaining a request", item.name)
            refused = True
            broken = f"500 (an error in the policy): {type(exc).__name__}: {exc}"
            rows.append(_row(item.name, FAILED, broken[:1000], clause))
        else:
            verdict: str = PASSED
            detail: str | None = None  # what request_claims' row says of the replay check
            if item.name == REPLAY_HOST:
                verdict, detail = _replay_verdict(registrar, context)
                refused = verdict == FAILED
            rows.append(_row(item.name, verdict, detail, clause))
    return rows


#: the policy whose rule the registrar's replay check enforces ("jti missing or replayed")
REPLAY_HOST = "request_claims"


def _replay_verdict(registrar: Registrar, context: RegistrationContext) -> tuple[str, str | None]:
    """Would the registrar's check-and-set let this jti through? Asked with ``seen``, which
    reads without remembering (the ReplayCache contract); a cache without it is not asked."""
    seen: Callable[[str], bool] | None = getattr(registrar.replay_cache, "seen", None)
    if seen is None:
        return PASSED, "jti replay not checked: this cache cannot be read without remembering"
    try:
        hit = seen(context.jti_key)
    except Exception as exc:  # a shared cache that is down: registration would get a 503
        error = TemporarilyUnavailable(
            "The replay check cannot be made right now; retry later.", detail=repr(exc)
        )
        return FAILED, describe(error)
    if hit:
        return FAILED, describe(replayed(context))
    return PASSED, None


def describe(error: RegistrationError) -> str:
    """What ``POST /register`` would answer, and (in brackets) what it would only log:
    ``400 invalid_client_metadata: The request aud does not name this authorization server.
    (aud 'https://another-bank.example')``."""
    text = f"{error.status} {error.error}: {error.description}"
    if error.detail and error.detail != error.description:
        text += f" ({error.detail})"
    return text


def registrable(report: Iterable[Mapping[str, Any]]) -> bool:
    """True when no row of ``report`` failed: ``POST /register`` would store the client now
    (unless something changes first: a key rotated, a certificate revoked, the jti used)."""
    return not any(row["verdict"] == FAILED for row in report)


def _row(policy: str, verdict: str, detail: str | None, clause: str | None) -> dict[str, Any]:
    return {"policy": policy, "verdict": verdict, "detail": detail, "clause": clause}


HEADERS = ("#", "policy", "verdict", "detail", "clause")


def format_report(report: Iterable[Mapping[str, Any]], *, width: int = 120) -> str:
    """``report`` as a text table (``#``, policy, verdict, detail, clause), the long cells
    wrapped so the table fits in ``width`` columns; then one line: registrable, or which
    policy refused it."""
    rows = [
        (
            str(number),
            str(row["policy"]),
            str(row["verdict"]),
            row.get("detail") or "",
            row.get("clause") or "",
        )
        for number, row in enumerate(report, 1)
    ]
    fixed = [max([len(HEADERS[k])] + [len(row[k]) for row in rows]) for k in range(3)]
    gap = "  "
    flexible = max(40, width - sum(fixed) - len(gap) * 4)
    # the detail column as wide as its longest cell (at most half), the clause the rest
    detail = min(max([len(HEADERS[3])] + [len(row[3]) for row in rows]), flexible // 2)
    widths = [*fixed, detail, flexible - detail]
    lines = [_line(HEADERS, widths, gap), _line(tuple("-" * w for w in widths), widths, gap)]
    for index, row in enumerate(rows):
        cells = [textwrap.wrap(text, w) or [""] for text, w in zip(row, widths, strict=True)]
        if index:
            lines.append("")
        for depth in range(max(len(cell) for cell in cells)):
            parts = tuple(cell[depth] if depth < len(cell) else "" for cell in cells)
            lines.append(_line(parts, widths, gap))
    failed = next((row for row in rows if row[2] == FAILED), None)
    lines.append("")
    lines.append(
        "registrable: every check passed"
        if failed is None
        else f"not registrable: refused by {failed[1]}"
    )
    return "\n".join(lines)


def _line(cells: tuple[str, ...], widths: list[int], gap: str) -> str:
    return gap.join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
