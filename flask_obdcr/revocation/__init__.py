"""Revocation of transport certificates: OCSP first, CRLs as the fallback, verdicts cached.

The core API is :class:`RevocationChecker` (see :mod:`.checker`); :mod:`.ocsp` and
:mod:`.crl` are the two clients. The verdict caches are a storage contract
(:mod:`flask_obdcr.storage.revocation_cache`, backends in :mod:`flask_obdcr.storage.memory`
and :mod:`flask_obdcr.storage.redis`), re-exported here; :class:`RedisRevocationCache` is
imported only when asked for, so the ``redis`` extra need not be installed. Part of the
protocol core: no Flask imports.
"""

from typing import TYPE_CHECKING, Any

from ..storage.memory import MemoryRevocationCache
from ..storage.revocation_cache import RevocationCache, StatusRecord, status_key
from .base import Answer, Fetch, NoAnswer
from .checker import MODES, CertificateRevocation, RevocationChecker, RevocationStatus

if TYPE_CHECKING:
    from ..storage.redis import RedisRevocationCache

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


def __getattr__(name: str) -> Any:  # PEP 562: the redis extra is needed only when it is used
    if name != "RedisRevocationCache":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ..storage.redis import RedisRevocationCache

    return RedisRevocationCache
