"""Where verified revocation verdicts live between requests: in this process
(:class:`MemoryRevocationCache`) or in Redis for every process (:class:`RedisRevocationCache`).

What is cached is the verdict (:class:`StatusRecord`), never the raw OCSP response or CRL: a
warm check reads a record and compares two numbers, with no parsing and no signature to
verify. A cache does not judge freshness; the checker does, from the record's timestamps
(all POSIX seconds from the checker's clock).

Keys are short and bounded whatever the certificate holds: the SHA-256 of the issuer's public
key and the serial number in hex (:func:`status_key`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..log import get_logger

__all__ = [
    "MemoryRevocationCache",
    "RedisRevocationCache",
    "RevocationCache",
    "StatusRecord",
    "status_key",
]

log = get_logger(__name__)


@dataclass(frozen=True)
class StatusRecord:
    """A verified verdict about one certificate."""

    status: Literal["good", "revoked"]
    #: "ocsp" or "crl"
    source: str
    #: the responder or distribution point it came from
    url: str
    #: when it was fetched (for a CRL-derived record: when the CRL was)
    fetched_at: float
    this_update: float
    #: ``None`` when the source gave none; the record is then usable until ``refresh_at`` only
    next_update: float | None
    #: after this the checker fetches again (fetched_at + cache seconds, or nextUpdate if sooner)
    refresh_at: float
    #: how long a cache should keep it (a revocation outlives its nextUpdate: see the checker)
    keep_until: float
    revoked_at: float | None = None
    reason: str | None = None

    @property
    def final(self) -> bool:
        """A revocation is permanent, except a certificateHold (RFC 5280 section 5.3.1)."""
        return self.status == "revoked" and self.reason != "certificate_hold"

    @property
    def usable_until(self) -> float:
        """Until when the record may stand when a refresh fails."""
        return self.next_update if self.next_update is not None else self.refresh_at

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for a shared cache."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatusRecord:
        """Inverse of :meth:`to_dict`; ``ValueError`` for anything else."""
        status = data["status"]
        if status not in ("good", "revoked"):
            raise ValueError(f"unknown status {status!r}")

        def number(name: str) -> float | None:
            value = data.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} is not a number")
            return float(value)

        def text(name: str) -> str | None:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} is not a string")
            return value

        required = {name: number(name) for name in ("fetched_at", "this_update", "refresh_at")}
        keep_until = number("keep_until")
        if None in required.values() or keep_until is None:
            raise ValueError("a timestamp is missing")
        return cls(
            status=status,
            source=str(data["source"]),
            url=str(data["url"]),
            fetched_at=float(data["fetched_at"]),
            this_update=float(data["this_update"]),
            next_update=number("next_update"),
            refresh_at=float(data["refresh_at"]),
            keep_until=keep_until,
            revoked_at=number("revoked_at"),
            reason=text("reason"),
        )


def status_key(certificate: x509.Certificate, issuer: x509.Certificate) -> str:
    """``<sha256 of the issuer's SubjectPublicKeyInfo>:<serial in hex>``: the certificate,
    as the issuer identifies it (one issuer key never signs two certificates with one serial).
    """
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"{hashlib.sha256(spki).hexdigest()}:{certificate.serial_number:x}"


class RevocationCache(Protocol):
    """Where verdicts live between requests. Implementations must be thread-safe; ``get``
    returns ``None`` for an unknown key and never judges freshness."""

    def get(self, key: str) -> StatusRecord | None: ...

    def set(self, key: str, record: StatusRecord) -> None: ...


class MemoryRevocationCache:
    """Thread-safe in-process cache of at most ``maxsize`` verdicts (least recently used
    dropped first), so many certificates cannot grow memory without bound."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._records: OrderedDict[str, StatusRecord] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> StatusRecord | None:
        with self._lock:
            record = self._records.get(key)
            if record is not None:
                self._records.move_to_end(key)
            return record

    def set(self, key: str, record: StatusRecord) -> None:
        with self._lock:
            self._records[key] = record
            self._records.move_to_end(key)
            while len(self._records) > self.maxsize:
                self._records.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class RedisRevocationCache:
    """The verdicts of every instance at once, in Redis (the ``redis`` extra).

    Each record is ``<prefix>revocation:<key>``, the JSON of :meth:`StatusRecord.to_dict`,
    expiring from Redis at its ``keep_until`` (measured from ``fetched_at``, so the record's
    clock and Redis's need not agree). A verdict another instance fetched is used here without
    fetching it again.

    So that a warm check does not cost a Redis round trip, a record this process read or wrote
    in the last ``recheck_after`` seconds (by ``monotonic``) and not yet due for refresh (by
    ``clock``, the checker's clock) is served from a per-process memo of ``memo_size``
    records: a verdict another instance refreshed reaches this one within that time.

    A cache must not take the service down: when Redis fails, ``get`` answers from the memo
    (or ``None``, so the checker fetches) and ``set`` keeps the record in the memo; both log a
    warning. Anyone who can write to this Redis can make a revoked certificate look good:
    protect it as the other shared state (AUTH, TLS, a private network).
    """

    def __init__(
        self,
        client_or_url: Any,
        *,
        prefix: str = "obdcr:",
        memo_size: int = 1024,
        recheck_after: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis  # the extra: only needed when this cache is used

        if not isinstance(prefix, str) or not prefix or len(prefix) > 100:
            raise ValueError(
                f"prefix must be a non-empty string of at most 100 characters: {prefix!r}"
            )
        if memo_size < 1:
            raise ValueError("memo_size must be at least 1")
        if recheck_after < 0:
            raise ValueError("recheck_after must not be negative")
        if isinstance(client_or_url, str):
            # the same short timeouts as flask_obdcr.redis: a request must not hang on Redis
            client_or_url = redis.Redis.from_url(
                client_or_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
            )
        self.client = client_or_url
        self.prefix = prefix
        self.memo_size = memo_size
        self.recheck_after = recheck_after
        self.clock = clock
        self._monotonic = monotonic
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        # key -> (record, when Redis last confirmed it or we wrote it, monotonic seconds)
        self._memo: OrderedDict[str, tuple[StatusRecord, float]] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, key: str) -> str:
        """The Redis key holding the record of ``key``."""
        return f"{self.prefix}revocation:{key}"

    def get(self, key: str) -> StatusRecord | None:
        now = self._monotonic()
        with self._lock:
            remembered = self._memo.get(key)
        if (
            remembered is not None
            and 0 <= now - remembered[1] < self.recheck_after
            and self.clock() < remembered[0].refresh_at
        ):
            return remembered[0]
        try:
            value = self.client.get(self.key(key))
        except self._errors as error:
            log.warning("Redis revocation cache unavailable (%s); using this process's copy", error)
            return remembered[0] if remembered is not None else None
        if value is None:
            return None
        try:
            record = StatusRecord.from_dict(json.loads(value))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("Redis revocation record %s is corrupt (%s); ignored", self.key(key), error)
            return None
        self._keep(key, record, now)
        return record

    def set(self, key: str, record: StatusRecord) -> None:
        self._keep(key, record, self._monotonic())
        ttl_ms = math.ceil((record.keep_until - record.fetched_at) * 1000)
        if ttl_ms <= 0:
            return
        value = json.dumps(record.to_dict(), separators=(",", ":"))
        try:
            self.client.set(self.key(key), value, px=ttl_ms)
        except self._errors as error:
            log.warning("Redis revocation cache unavailable (%s); record kept here only", error)

    def delete(self, key: str) -> None:
        """Forget ``key`` here and in Redis."""
        with self._lock:
            self._memo.pop(key, None)
        self.client.delete(self.key(key))

    def _keep(self, key: str, record: StatusRecord, now: float) -> None:
        with self._lock:
            self._memo[key] = (record, now)
            self._memo.move_to_end(key)
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"
