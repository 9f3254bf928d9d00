"""The RevocationCache contract: where verified revocation verdicts live between requests.

What is cached is the verdict (:class:`StatusRecord`), never the raw OCSP response or CRL: a
warm check reads a record and compares two numbers, with no parsing and no signature to
verify. A cache does not judge freshness; the revocation checker
(:mod:`flask_obdcr.revocation.checker`) does, from the record's timestamps (all POSIX seconds
from the checker's clock).

Keys are short and bounded whatever the certificate holds: the SHA-256 of the issuer's public
key and the serial number in hex (:func:`status_key`). ``tests/test_revocation_cache.py`` runs
one contract test class against every backend (:mod:`.memory`, :mod:`.redis`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["RevocationCache", "StatusRecord", "status_key"]


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
    """Where verdicts live between requests (in this process, or shared through Redis).

    Implementations must be thread-safe. ``get`` returns ``None`` for an unknown key, else a
    record equal to the last one ``set`` for it (not necessarily the same object), and never
    judges freshness: a record past its ``refresh_at`` and ``next_update`` is still returned
    while it is kept. A record is kept until its ``keep_until`` (measured from its
    ``fetched_at``, so the backend's clock and the checker's need not agree) and may be
    dropped from then on, or earlier only to keep the cache bounded. A stored record the
    backend cannot read back as a :class:`StatusRecord` is ignored (``None``, with a warning).

    A cache should not fail a check: a shared backend that is down answers from this process's
    copy (or ``None``, so the checker fetches) and keeps what is set in this process. The
    checker treats a cache that raises all the same as a miss, so a check never becomes a 500.
    """

    def get(self, key: str) -> StatusRecord | None: ...

    def set(self, key: str, record: StatusRecord) -> None: ...
