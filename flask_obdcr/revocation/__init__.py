"""Revocation of transport certificates: OCSP first, CRLs as the fallback, verdicts cached.

The core API is :class:`RevocationChecker` (see :mod:`.checker`); :mod:`.ocsp` and
:mod:`.crl` are the two clients, :mod:`.cache` the verdict caches. Part of the protocol core:
no Flask imports.
"""

from .base import Answer, Fetch, NoAnswer
from .cache import (
    MemoryRevocationCache,
    RedisRevocationCache,
    RevocationCache,
    StatusRecord,
    status_key,
)
from .checker import MODES, CertificateRevocation, RevocationChecker, RevocationStatus

__all__ = [
    "MODES",
    "Answer",
    "CertificateRevocation",
    "Fetch",
    "MemoryRevocationCache",
    "NoAnswer",
    "RedisRevocationCache",
    "RevocationCache",
    "RevocationChecker",
    "RevocationStatus",
    "StatusRecord",
    "status_key",
]
