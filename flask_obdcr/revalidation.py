"""Re-validation of registered clients (docs/architecture.md, "Contract: revocation").

Registration checks trust once; the Directory changes its mind later: it rotates its keys,
revokes a software's keys or certificates, or stops an organisation. A pass re-checks, for every
stored client, what registration checked and can change:

* the SSA's signature against the Directory's current keys (and that its issuer is still
  trusted);
* the key that signed the registration request, and the transport certificate's key, against
  the SSA's revoked key sets;
* the transport certificate registration saw: still valid and trusted (chain, expiry and, where
  the certificate names a responder, its revocation status);
* the organisation's status, where a :class:`DirectoryStatus` source reports it.

A client that fails is **suspended**, not deleted: the reason is kept with it, its tokens are
revoked and the token endpoint refuses it (401 ``invalid_client``) until a later pass finds it
sound again and reinstates it. A check whose answer cannot be had (a Directory down) decides
nothing: the client keeps its status and the finding says why.

Every distinct key set is fetched once per pass, fresh, by a bounded pool of workers; the
clients are then judged from what was fetched. Protocol core: no Flask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import jose
from .certificates import ClientCertificates, load_certificate
from .config import RuleSettings
from .errors import RegistrationError, TemporarilyUnavailable
from .jwks import JWKSClient, JWKSError, KeyNotFound
from .log import get_logger
from .registration import SUSPENDED, TRUST, suspension
from .revoked_keys import REVOKED_ENDPOINT_CLAIMS, RevokedKeys
from .storage import ClientStore, StoredClient, TokenStore

__all__ = [
    "DirectoryStatus",
    "Finding",
    "HTTPDirectoryStatus",
    "RevalidationReport",
    "Revalidator",
    "StaticDirectoryStatus",
]

log = get_logger()

PASSED, SUSPENDED_NOW, STILL_SUSPENDED, REINSTATED, UNDECIDED = (
    "passed",
    "suspended",
    "still suspended",
    "reinstated",
    "undecided",
)


class DirectoryStatus(Protocol):
    """Where re-validation learns an organisation's current status."""

    def org_status(self, org_id: str) -> str | None:
        """``"Active"``, ``"Revoked"``, ``"Withdrawn"``...; None when it cannot be told (the
        check then decides nothing). May raise: that too decides nothing."""


class StaticDirectoryStatus:
    """Statuses from a mapping (tests, or a bank's own register); unknown orgs: None."""

    def __init__(self, statuses: Mapping[str, str] | None = None) -> None:
        self.statuses: dict[str, str] = dict(statuses or {})

    def org_status(self, org_id: str) -> str | None:
        return self.statuses.get(org_id)


class HTTPDirectoryStatus:
    """Statuses from a Directory API returning the organisation as JSON, e.g. the sandbox
    Directory's ``GET /api/organisations/<org_id>`` (``{"org_status": "Active", ...}``).

    ``fetcher`` is a JWKS fetcher (:class:`~flask_obdcr.jwks.HTTPFetcher`): the same https,
    allow-list, size and time rules apply."""

    def __init__(
        self, url_template: str, fetcher: Callable[[str], Any], *, field: str = "org_status"
    ) -> None:
        if "{org_id}" not in url_template:
            raise ValueError("url_template must contain {org_id}")
        self.url_template = url_template
        self.fetcher = fetcher
        self.field = field

    def org_status(self, org_id: str) -> str | None:
        import json
        from urllib.parse import quote

        document = self.fetcher(self.url_template.format(org_id=quote(org_id, safe="")))
        value = json.loads(document.body).get(self.field)
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Finding:
    """What a pass concluded about one client."""

    client_id: str
    software_id: str | None
    org_id: str | None
    outcome: str
    #: why it failed (or, for "undecided", what could not be checked); None when it passed
    reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.outcome in (SUSPENDED_NOW, STILL_SUSPENDED)


@dataclass
class RevalidationReport:
    findings: list[Finding] = field(default_factory=list)
    #: distinct key sets fetched this pass, and how many of those fetches failed
    fetched: int = 0
    fetch_failures: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for finding in self.findings if finding.outcome == outcome)

    @property
    def suspended(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome == SUSPENDED_NOW]

    @property
    def reinstated(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome == REINSTATED]

    @property
    def any_failed(self) -> bool:
        return any(finding.failed for finding in self.findings)


class _Undecided(Exception):
    """A check that could not be made: the client keeps its status."""


class Revalidator:
    """One re-validation pass over a store; see the module docstring."""

    def __init__(
        self,
        *,
        store: ClientStore,
        tokens: TokenStore,
        jwks: JWKSClient,
        rules: RuleSettings,
        certificates: ClientCertificates,
        revoked_keys: RevokedKeys,
        directory_status: DirectoryStatus | None = None,
        clock: Callable[[], float] = time.time,
        max_workers: int = 8,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.store = store
        self.tokens = tokens
        self.jwks = jwks
        self.rules = rules
        self.certificates = certificates
        self.revoked_keys = revoked_keys
        self.directory_status = directory_status
        self.clock = clock
        self.max_workers = max_workers

    def run(
        self,
        clients: Iterable[StoredClient] | None = None,
        *,
        on_finding: Callable[[Finding, StoredClient], None] | None = None,
    ) -> RevalidationReport:
        """Judge every client (or ``clients``); suspend and reinstate as found. ``on_finding``
        is called after each client, with the client as it now stands."""
        report = RevalidationReport(started_at=self.clock())
        clients = list(self.store.list() if clients is None else clients)
        report.fetched, report.fetch_failures = self._refresh_key_sets(clients)
        for client in clients:
            finding, current = self._judge(client)
            report.findings.append(finding)
            if on_finding is not None:
                on_finding(finding, current)
        report.finished_at = self.clock()
        return report

    # -- fetching: each distinct key set once, fresh, by a bounded pool ---------------------

    def _refresh_key_sets(self, clients: list[StoredClient]) -> tuple[int, int]:
        urls: set[str] = set()
        for client in clients:
            ssa = client.ssa_claims
            for claim in ("software_jwks_endpoint", *REVOKED_ENDPOINT_CLAIMS):
                if isinstance(ssa.get(claim), str):
                    urls.add(ssa[claim])
            directory = self.rules.trusted_directories.get(_ssa_issuer(client) or "")
            if directory:
                urls.add(directory)
        if self.revoked_keys.mode == "off":
            urls -= {
                c.ssa_claims[claim]
                for c in clients
                for claim in REVOKED_ENDPOINT_CLAIMS
                if isinstance(c.ssa_claims.get(claim), str)
            }

        def refresh(url: str) -> bool:
            try:
                self.jwks.refresh(url)
                return True
            except JWKSError as exc:
                # the cached set (if any) stands; checks that need it decide nothing
                log.warning("re-validation could not refresh %s: %s", url, exc)
                return False

        if not urls:
            return 0, 0
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(urls))) as pool:
            results = list(pool.map(refresh, sorted(urls)))
        return len(results), results.count(False)

    # -- judging one client ---------------------------------------------------------------

    def _judge(self, client: StoredClient) -> tuple[Finding, StoredClient]:
        was_suspended = suspension(client) is not None
        try:
            reason = self._failure(client)
        except _Undecided as exc:
            return self._finding(client, UNDECIDED, str(exc)), client
        if reason is None:
            if not was_suspended:
                return self._finding(client, PASSED), client
            current = self._write(client, None)
            return self._finding(client, REINSTATED), current
        if was_suspended:
            previous = suspension(client) or {}
            if previous.get("reason") != reason:  # suspended for another reason now: say so
                client = self._write(client, reason, since=previous.get("since"))
            return self._finding(client, STILL_SUSPENDED, reason), client
        current = self._write(client, reason)
        try:
            self.tokens.revoke_client(client.client_id)
        except Exception as exc:  # the suspension stands; the token endpoint refuses it anyway
            log.warning("could not revoke the tokens of suspended %s: %r", client.client_id, exc)
        return self._finding(client, SUSPENDED_NOW, reason), current

    def _failure(self, client: StoredClient) -> str | None:
        """Why ``client`` no longer passes, or None; :class:`_Undecided` if it cannot be told."""
        return (
            self._ssa_failure(client)
            or self._org_failure(client)
            or self._key_failure(client)
            or self._certificate_failure(client)
        )

    def _ssa_failure(self, client: StoredClient) -> str | None:
        ssa = client.metadata.get("software_statement")
        if not isinstance(ssa, str):
            return None  # registered before SSAs were kept: nothing to re-check
        try:
            header, _claims = jose.peek(ssa)
        except jose.MalformedJWS:
            return "the stored software statement is no longer a JWS"
        issuer = _ssa_issuer(client)
        url = self.rules.trusted_directories.get(issuer or "")
        if url is None:
            return f"the software statement's issuer {issuer!r} is no longer trusted"
        alg = header.get("alg")
        if alg not in self.rules.signing_algs:
            return f"the software statement's algorithm {alg!r} is no longer accepted"
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        try:
            keys = self.jwks.candidate_keys(url, kid=kid, alg=alg)
        except KeyNotFound:
            return f"the Directory no longer publishes the key {kid!r} that signed the SSA"
        except JWKSError as exc:
            raise _Undecided(f"the Directory's keys cannot be had: {exc}") from None
        try:
            jose.verify(ssa, keys, alg)
        except (jose.BadSignature, jose.MalformedJWS):
            return "the software statement no longer verifies with the Directory's keys"
        return None

    def _org_failure(self, client: StoredClient) -> str | None:
        if self.directory_status is None or not client.org_id:
            return None
        try:
            status = self.directory_status.org_status(client.org_id)
        except Exception as exc:  # any source failure: undecided, never a suspension
            raise _Undecided(f"the organisation's status cannot be had: {exc!r}") from None
        if status is None or status.lower() == "active":
            return None
        return f"the Directory reports the organisation as {status}"

    def _key_failure(self, client: StoredClient) -> str | None:
        trust = _trust(client)
        certificate = _stored_certificate(trust)
        try:
            found = self.revoked_keys.find(
                client.ssa_claims,
                kid=trust.get("request_kid"),
                thumbprint=trust.get("request_jkt"),
            )
            if found is not None:
                return f"the key that signed its registration was revoked ({found})"
            if certificate is not None:
                found = self.revoked_keys.find(client.ssa_claims, key=certificate)
                if found is not None:
                    return f"its transport certificate's key was revoked ({found})"
        except TemporarilyUnavailable as exc:
            raise _Undecided(exc.detail) from None
        return None

    def _certificate_failure(self, client: StoredClient) -> str | None:
        certificate = _stored_certificate(_trust(client))
        if certificate is None:
            return None
        try:
            self.certificates.verify(certificate, now=self.clock())
        except TemporarilyUnavailable as exc:
            raise _Undecided(exc.detail) from None
        except RegistrationError as exc:
            return f"its transport certificate fails: {exc.detail}"
        return None

    # -- writing ----------------------------------------------------------------------------

    def _write(
        self, client: StoredClient, reason: str | None, *, since: int | None = None
    ) -> StoredClient:
        extra = {k: v for k, v in client.extra.items() if k != SUSPENDED}
        if reason is not None:
            extra[SUSPENDED] = {
                "reason": reason,
                "since": int(self.clock()) if since is None else since,
            }
        updated = client.with_changes(extra=extra)
        self.store.replace(updated)
        return updated

    @staticmethod
    def _finding(client: StoredClient, outcome: str, reason: str | None = None) -> Finding:
        return Finding(client.client_id, client.software_id, client.org_id, outcome, reason)


def _ssa_issuer(client: StoredClient) -> str | None:
    ssa = client.metadata.get("software_statement")
    if not isinstance(ssa, str):
        return None
    try:
        _header, claims = jose.peek(ssa)
    except jose.MalformedJWS:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


def _trust(client: StoredClient) -> Mapping[str, Any]:
    record = client.extra.get(TRUST)
    return record if isinstance(record, Mapping) else {}


def _stored_certificate(trust: Mapping[str, Any]) -> Any:
    pem = trust.get("certificate")
    if not isinstance(pem, str):
        return None
    try:
        return load_certificate(pem)
    except ValueError:
        return None
