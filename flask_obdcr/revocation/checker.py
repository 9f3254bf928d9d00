"""RevocationChecker: is any certificate of a verified transport chain revoked?

docs/architecture.md, "Revocation": each certificate of the chain that names an OCSP
responder (authorityInfoAccess) or CRL distribution points (http or https) is checked, the
leaf and the intermediates alike; one that names neither is not checked. OCSP is asked first;
the CRL is the fallback. Revoked raises ``revoked_error`` (``InvalidClient``; callers at
``/register/<id>`` and ``require_token`` pass ``InvalidToken``). Status unknown (no source
answered, nothing usable cached) raises ``TemporarilyUnavailable`` (503 + Retry-After) with
``mode="require"``, and is logged and let through with ``"prefer"``. ``"off"`` fetches nothing.

Caching, per certificate (issuer key + serial): the verified verdict is kept in ``cache``
(memory, or Redis to share it between processes) and used without any fetch, parse or
signature check until ``cache_seconds`` after it was fetched (or its nextUpdate, if sooner).
It is then refreshed; when the refresh fails, the cached verdict stands until its nextUpdate.
A revocation is final (except a certificateHold) and is never refreshed away. Concurrent
refreshes of one certificate wait for a single fetch (a lock per certificate, and one per CRL
URL); after a failed attempt no new one is made for ``retry_after`` seconds, so an outage
costs each request a cache lookup, not a timeout. Verified CRLs are kept too (at most
``max_crls``, per URL and issuer), so the certificates of one CA share one CRL fetch; a CRL
is refreshed after ``cache_seconds`` and, when that fails, used until its nextUpdate.

Every fetch goes through ``fetch`` (a :class:`~flask_obdcr.fetch.BoundedFetch`: whole-fetch
deadline, size cap, no redirects). At most two OCSP responders and two distribution points are
tried per certificate. No failure of a fetch, a cache or a response becomes anything but "no
answer from this source".

Part of the protocol core: no Flask imports; clock, fetch, cache and logger are injected.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from ..errors import InvalidClient, RegistrationError, TemporarilyUnavailable
from ..fetch import show
from ..log import get_logger
from ..storage.memory import MemoryRevocationCache
from ..storage.revocation_cache import RevocationCache, StatusRecord, status_key
from . import crl as crl_module
from . import ocsp
from .base import Answer, Fetch, NoAnswer

__all__ = ["MODES", "CertificateRevocation", "RevocationChecker", "RevocationStatus"]

MODES = ("require", "prefer", "off")
Mode = Literal["require", "prefer", "off"]

REVOKED_DESCRIPTION = "The client certificate has been revoked."
UNKNOWN_DESCRIPTION = (
    "The revocation status of the client certificate cannot be checked right now; retry later."
)


@dataclass(frozen=True)
class CertificateRevocation:
    """What the check found about one certificate of the chain."""

    subject: str
    serial: int
    status: Literal["good", "unknown"]
    #: "ocsp" or "crl"; None when unknown
    source: str | None = None
    url: str | None = None
    this_update: float | None = None
    next_update: float | None = None
    #: answered without a fresh fetch: from the cache (or from a CRL kept past a failed
    #: refresh)
    cached: bool = False
    #: why the status is unknown (for the log)
    detail: str | None = None


@dataclass(frozen=True)
class RevocationStatus:
    """The outcome of :meth:`RevocationChecker.check` when it does not raise.

    ``status``: ``"good"`` (every certificate that names a source is good), ``"unknown"``
    (with ``"prefer"``: some status could not be had), ``"not_checked"`` (no certificate names
    a source) or ``"off"``.
    """

    status: Literal["good", "unknown", "not_checked", "off"]
    certificates: tuple[CertificateRevocation, ...] = ()


_OFF = RevocationStatus("off")
_NOT_CHECKED = RevocationStatus("not_checked")


@dataclass(frozen=True)
class _Target:
    """A certificate to check, with what the hot path needs worked out once."""

    certificate: x509.Certificate
    issuer: x509.Certificate
    key: str
    subject: str
    serial: int
    ocsp_urls: tuple[str, ...]
    crl_urls: tuple[str, ...]


@dataclass(frozen=True)
class _Failure:
    at: float
    reason: str


class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # holders and waiters


class _KeyedLocks:
    """One lock per key, existing only while someone holds or waits for it (bounded memory)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
            slot.users += 1
        try:
            with slot.lock:
                yield
        finally:
            with self._guard:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]


class RevocationChecker:
    """Checks the revocation status of verified transport certificate chains.

    Build one per app (``init_app``) from ``OBDCR_REVOCATION`` (``mode``),
    ``OBDCR_REVOCATION_CACHE_SECONDS`` (``cache_seconds``) and a
    :class:`~flask_obdcr.fetch.BoundedFetch` made with ``OBDCR_HTTP_TIMEOUT`` and
    ``OBDCR_HTTP_VERIFY``; ``cache`` defaults to a :class:`MemoryRevocationCache`
    (a :class:`~flask_obdcr.storage.redis.RedisRevocationCache` shares verdicts between
    processes). ``clock`` is the app's clock; ``skew`` the tolerated clock difference with
    responders (seconds) for thisUpdate; ``retry_after`` how long after a failed attempt the
    next is made (and the 503's Retry-After at most). ``ocsp_hash`` is the CertID hash
    (``"sha1"``, the norm, or ``"sha256"``). ``crl_max_bytes`` caps a CRL download (default:
    the fetch's own cap).
    """

    def __init__(
        self,
        *,
        mode: Mode | str = "require",
        cache_seconds: float = 300,
        fetch: Fetch | None = None,
        cache: RevocationCache | None = None,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
        skew: float = 30.0,
        retry_after: float = 30.0,
        ocsp_hash: str = "sha1",
        crl_max_bytes: int | None = None,
        max_crls: int = 16,
        max_targets: int = 1024,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}; got {mode!r}")
        if mode != "off" and fetch is None:
            raise ValueError("a fetch is needed unless mode is 'off'")
        if min(cache_seconds, skew, retry_after) < 0:
            raise ValueError("cache_seconds, skew and retry_after must not be negative")
        if ocsp_hash not in ocsp.CERT_ID_HASHES:
            raise ValueError(f"ocsp_hash must be one of {list(ocsp.CERT_ID_HASHES)}")
        if max_crls < 1 or max_targets < 1:
            raise ValueError("max_crls and max_targets must be at least 1")
        self.mode = mode
        self.cache_seconds = float(cache_seconds)
        self.fetch = fetch
        self.cache: RevocationCache = cache if cache is not None else MemoryRevocationCache()
        self.clock = clock
        self.log = logger if logger is not None else get_logger(__name__)
        self.skew = float(skew)
        self.retry_after = float(retry_after)
        self.ocsp_hash = ocsp_hash
        self.crl_max_bytes = crl_max_bytes
        self.max_crls = max_crls
        self.max_targets = max_targets
        self._locks = _KeyedLocks()
        self._state_lock = threading.Lock()
        # (id(certificate), id(issuer)) -> (certificate, issuer, target): holding both objects
        # keeps the ids theirs, and one dict read sees one consistent entry
        self._targets: dict[
            tuple[int, int], tuple[x509.Certificate, x509.Certificate, _Target | None]
        ] = {}
        # certificate key -> the last failed attempt; CRL memo key -> the same
        self._failures: OrderedDict[str, _Failure] = OrderedDict()
        # certificate key -> (the cached record, what check() reported for it)
        self._results: dict[str, tuple[StatusRecord, CertificateRevocation]] = {}
        self._crls: OrderedDict[str, crl_module.VerifiedCRL] = OrderedDict()
        self._max_failures = 4096
        # id(chain) -> (chain, the "good" status, the time its first record needs refreshing):
        # every position of a chain answered from fresh cached records gives the same answer
        # until one of them is due; holding the chain keeps the id its own
        self._warm: dict[int, tuple[Sequence[x509.Certificate], RevocationStatus, float]] = {}

    # ----------------------------------------------------------------- public API

    def check(
        self,
        chain: Sequence[x509.Certificate],
        *,
        revoked_error: type[RegistrationError] = InvalidClient,
    ) -> RevocationStatus:
        """Check ``chain`` (verified, leaf first: each certificate's issuer is the next one).

        Raises ``revoked_error`` (401) if a certificate is revoked, ``TemporarilyUnavailable``
        (503 + Retry-After) if a status is unknown and the mode is ``"require"``; otherwise
        returns what it found.
        """
        if self.mode == "off":
            return _OFF
        warm = self._warm.get(id(chain))
        if warm is not None and warm[0] is chain and self.clock() < warm[2]:
            # the hot path (require_token on every call): the records it was made from are
            # still fresh, so the walk below would read them and answer the same
            return warm[1]
        found: list[CertificateRevocation] = []
        unknown: list[tuple[CertificateRevocation, float]] = []
        fresh_until = math.inf  # when the first record read fresh from the cache is due
        for position in range(len(chain) - 1):
            target = self._target(chain[position], chain[position + 1])
            if target is None:
                continue  # names neither an OCSP responder nor a CRL: not checked
            record, cached, failure = self._status(target)
            if record is None or not (cached and record.status == "good"):
                fresh_until = -math.inf  # fetched now, or not good: not remembered
            elif not record.final:
                fresh_until = min(fresh_until, record.refresh_at)
            if record is None:
                detail = failure.reason if failure is not None else "no answer"
                result = CertificateRevocation(
                    target.subject, target.serial, "unknown", detail=detail
                )
                retry = self.retry_after
                if failure is not None:
                    retry = max(1.0, failure.at + self.retry_after - self.clock())
                unknown.append((result, retry))
                found.append(result)
                continue
            if record.status == "revoked":
                detail = self._revoked_detail(target, record)
                raise revoked_error(REVOKED_DESCRIPTION, detail=detail)
            found.append(self._good(target, record, cached))
        if not found:
            return _NOT_CHECKED
        if not unknown:
            status = RevocationStatus("good", tuple(found))
            if fresh_until > self.clock():
                with self._state_lock:
                    while len(self._warm) >= self.max_targets:
                        del self._warm[next(iter(self._warm))]  # the oldest first
                    self._warm[id(chain)] = (chain, status, fresh_until)
            return status
        details = "; ".join(
            f"{result.subject} (serial {result.serial:x}): {result.detail}" for result, _ in unknown
        )
        if self.mode == "require":
            retry_after = math.ceil(max(retry for _, retry in unknown))
            raise TemporarilyUnavailable(
                UNKNOWN_DESCRIPTION,
                retry_after=retry_after,
                detail=f"revocation status unknown: {details}",
            )
        self.log.warning(
            "revocation status unknown, carrying on (OBDCR_REVOCATION=prefer): %s", details
        )
        return RevocationStatus("unknown", tuple(found))

    def _good(self, target: _Target, record: StatusRecord, cached: bool) -> CertificateRevocation:
        # A warm check reports the same thing every time: make it once per cached record.
        remembered = self._results.get(target.key)
        if cached and remembered is not None and remembered[0] is record:
            return remembered[1]
        result = CertificateRevocation(
            target.subject,
            target.serial,
            "good",
            source=record.source,
            url=record.url,
            this_update=record.this_update,
            next_update=record.next_update,
            cached=cached,
        )
        if cached:
            with self._state_lock:
                while len(self._results) >= self.max_targets:
                    del self._results[next(iter(self._results))]
                self._results[target.key] = (record, result)
        return result

    # ----------------------------------------------------------------- targets

    def _target(self, certificate: x509.Certificate, issuer: x509.Certificate) -> _Target | None:
        ids = (id(certificate), id(issuer))
        known = self._targets.get(ids)
        if known is not None and known[0] is certificate and known[1] is issuer:
            return known[2]  # the hot path: one dict read and two identity checks
        ocsp_urls = ocsp.ocsp_urls(certificate)
        crl_urls = crl_module.crl_urls(certificate)
        target = None
        if ocsp_urls or crl_urls:
            target = _Target(
                certificate=certificate,
                issuer=issuer,
                key=status_key(certificate, issuer),
                subject=certificate.subject.rfc4514_string(),
                serial=certificate.serial_number,
                ocsp_urls=ocsp_urls,
                crl_urls=crl_urls,
            )
        with self._state_lock:
            while len(self._targets) >= self.max_targets:
                del self._targets[next(iter(self._targets))]  # the oldest first
            self._targets[ids] = (certificate, issuer, target)
        return target

    # ----------------------------------------------------------------- status

    def _fresh(self, record: StatusRecord, now: float) -> bool:
        return record.final or now < record.refresh_at

    def _status(self, target: _Target) -> tuple[StatusRecord | None, bool, _Failure | None]:
        """(the verdict or None, whether it came from the cache, the failure if there was)."""
        record = self._cache_get(target.key)
        if record is not None and self._fresh(record, self.clock()):
            return record, True, None  # the warm path: no lock, no I/O, no parsing
        with self._locks.hold(target.key):
            # a concurrent check may have refreshed it while we waited for the lock
            record = self._cache_get(target.key)
            now = self.clock()
            if record is not None and self._fresh(record, now):
                return record, True, None
            failure = self._recent_failure(target.key, now)
            attempted = failure is None
            if failure is None:
                try:
                    fetched, degraded = self._lookup(target, now)
                except NoAnswer as error:
                    failure = self._fail(target.key, now, str(error))
                    self.log.warning(
                        "revocation status of %s (serial %x) could not be fetched: %s",
                        target.subject,
                        target.serial,
                        error,
                    )
                else:
                    self._cache_set(target.key, fetched)
                    if degraded:
                        # answered from a CRL kept past a failed refresh: try again only
                        # after retry_after, as after any failure
                        self._fail(target.key, now, "the CRL could not be refreshed")
                    else:
                        self._forget_failure(target.key)
                    return fetched, degraded, None
            if record is not None and (record.final or now < record.usable_until):
                if attempted:
                    self.log.warning(
                        "revocation status of %s (serial %x): the cached %s status from %s "
                        "stands until its nextUpdate %s",
                        target.subject,
                        target.serial,
                        record.status,
                        record.source,
                        record.usable_until,
                    )
                return record, True, None
            return None, False, failure

    def _lookup(self, target: _Target, now: float) -> tuple[StatusRecord, bool]:
        """A fresh verdict: OCSP first, then the CRL. (record, whether it came from a CRL
        kept past a failed refresh); :class:`NoAnswer` listing why each source failed."""
        reasons: list[str] = []
        algorithm = ocsp.CERT_ID_HASHES[self.ocsp_hash]()
        for url in target.ocsp_urls:
            assert self.fetch is not None
            try:
                answer = ocsp.query(
                    self.fetch,
                    url,
                    target.certificate,
                    target.issuer,
                    now=now,
                    skew=self.skew,
                    max_age=self.cache_seconds,
                    algorithm=algorithm,
                )
            except NoAnswer as error:
                reasons.append(f"OCSP {show(url)}: {error}")
                continue
            except Exception as error:  # a custom fetch's own failure: still no answer
                reasons.append(f"OCSP {show(url)}: {type(error).__name__}: {error}")
                continue
            if answer.status == "unknown":
                reasons.append(f"OCSP {show(url)}: the responder does not know the certificate")
                continue
            return self._record(answer, "ocsp", url, now, target), False
        for url in target.crl_urls:
            try:
                verified, degraded = self._crl(url, target, now)
                answer = verified.status_of(target.certificate)
            except NoAnswer as error:
                reasons.append(f"CRL {show(url)}: {error}")
                continue
            except Exception as error:
                reasons.append(f"CRL {show(url)}: {type(error).__name__}: {error}")
                continue
            return self._record(answer, "crl", url, verified.fetched_at, target), degraded
        raise NoAnswer("; ".join(reasons) or "no source to ask")

    def _record(
        self, answer: Answer, source: str, url: str, fetched_at: float, target: _Target
    ) -> StatusRecord:
        refresh_at = fetched_at + self.cache_seconds
        if answer.next_update is not None:
            refresh_at = min(refresh_at, answer.next_update)
        usable_until = answer.next_update if answer.next_update is not None else refresh_at
        keep_until = usable_until
        status: Literal["good", "revoked"] = "good" if answer.status == "good" else "revoked"
        if status == "revoked" and answer.reason != "certificate_hold":
            # a revocation is permanent: keep it as long as the certificate could be shown
            keep_until = max(keep_until, target.certificate.not_valid_after_utc.timestamp())
        return StatusRecord(
            status=status,
            source=source,
            url=url,
            fetched_at=fetched_at,
            this_update=answer.this_update,
            next_update=answer.next_update,
            refresh_at=refresh_at,
            keep_until=keep_until,
            revoked_at=answer.revoked_at,
            reason=answer.reason,
        )

    # ----------------------------------------------------------------- CRLs

    def _crl(self, url: str, target: _Target, now: float) -> tuple[crl_module.VerifiedCRL, bool]:
        """The verified CRL at ``url`` for ``target``'s issuer: kept, fetched, or kept past a
        failed refresh until its nextUpdate (then the flag is True)."""
        memo_key = f"crl {target.key.partition(':')[0]} {url}"
        entry = self._crl_memo(memo_key)
        if entry is not None and self._crl_fresh(entry, now):
            return entry, False
        with self._locks.hold(memo_key):
            entry = self._crl_memo(memo_key)
            if entry is not None and self._crl_fresh(entry, now):
                return entry, False
            failure = self._recent_failure(memo_key, now)
            error: NoAnswer | None = None
            if failure is None:
                assert self.fetch is not None
                try:
                    fetched = crl_module.fetch_crl(
                        self.fetch,
                        url,
                        target.issuer,
                        now=now,
                        skew=self.skew,
                        max_age=self.cache_seconds,
                        max_bytes=self.crl_max_bytes,
                    )
                except NoAnswer as caught:
                    error = caught
                    failure = self._fail(memo_key, now, str(caught))
                else:
                    self._forget_failure(memo_key)
                    with self._state_lock:
                        self._crls[memo_key] = fetched
                        self._crls.move_to_end(memo_key)
                        while len(self._crls) > self.max_crls:
                            self._crls.popitem(last=False)
                    return fetched, False
            if entry is not None and now < self._crl_usable_until(entry):
                if error is not None:
                    self.log.warning(
                        "CRL %s could not be refreshed (%s); the copy fetched at %s stands "
                        "until its nextUpdate %s",
                        show(url),
                        error,
                        entry.fetched_at,
                        self._crl_usable_until(entry),
                    )
                return entry, True
            if error is not None:
                raise error
            assert failure is not None
            raise NoAnswer(f"the last fetch failed {now - failure.at:.0f} s ago: {failure.reason}")

    def _crl_memo(self, memo_key: str) -> crl_module.VerifiedCRL | None:
        with self._state_lock:
            return self._crls.get(memo_key)

    def _crl_fresh(self, entry: crl_module.VerifiedCRL, now: float) -> bool:
        return now < min(entry.fetched_at + self.cache_seconds, self._crl_usable_until(entry))

    def _crl_usable_until(self, entry: crl_module.VerifiedCRL) -> float:
        if entry.next_update is not None:
            return entry.next_update
        return entry.this_update + self.cache_seconds

    # ----------------------------------------------------------------- failures and cache

    def _fail(self, key: str, now: float, reason: str) -> _Failure:
        failure = _Failure(now, reason)
        with self._state_lock:
            self._failures[key] = failure
            self._failures.move_to_end(key)
            while len(self._failures) > self._max_failures:
                self._failures.popitem(last=False)
        return failure

    def _forget_failure(self, key: str) -> None:
        with self._state_lock:
            self._failures.pop(key, None)

    def _recent_failure(self, key: str, now: float) -> _Failure | None:
        with self._state_lock:
            failure = self._failures.get(key)
        # `at <= now`: if the clock went backwards, do not block fetching until it catches up
        if failure is not None and failure.at <= now < failure.at + self.retry_after:
            return failure
        return None

    def _cache_get(self, key: str) -> StatusRecord | None:
        try:
            return self.cache.get(key)
        except Exception as error:  # a cache must not turn a check into a 500
            self.log.warning("revocation cache unavailable (%s); fetching", error)
            return None

    def _cache_set(self, key: str, record: StatusRecord) -> None:
        try:
            self.cache.set(key, record)
        except Exception as error:
            self.log.warning("revocation cache unavailable (%s); verdict not kept", error)

    @staticmethod
    def _revoked_detail(target: _Target, record: StatusRecord) -> str:
        when = f" at {record.revoked_at:.0f}" if record.revoked_at is not None else ""
        reason = f" ({record.reason})" if record.reason else ""
        return (
            f"client certificate {target.subject} (serial {target.serial:x}) is revoked{when}"
            f"{reason} according to {record.source} {show(record.url)}"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, cache_seconds={self.cache_seconds:g}, "
            f"cache={self.cache!r})"
        )
