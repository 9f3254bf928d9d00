"""Persistence, one contract per concern and one file per backend.

Contracts: :class:`ClientStore` (``base``), :class:`TokenStore` (``tokens``),
:class:`ReplayCache` (``replay``), :class:`JWKSCache` (``jwks_cache``) and
:class:`RevocationCache` (``revocation_cache``). Backends:
``memory``, ``sqlite``, ``sqlalchemy`` (extra ``postgres``), ``ldap`` (extra ``ldap``) and
``redis`` (extra ``redis``); the last three are imported only when one of their names is
asked for, so their extras need not be installed.
"""

from .base import (
    ClientExists,
    ClientNotFound,
    ClientStore,
    StoredClient,
    StoreError,
    hash_secret,
    secret_matches,
)
from .jwks_cache import CacheEntry, JWKSCache
from .memory import (
    MemoryJWKSCache,
    MemoryReplayCache,
    MemoryRevocationCache,
    MemoryStore,
    MemoryTokenStore,
)
from .replay import (
    DEFAULT_QUOTA_PER_OWNER,
    ReplayCache,
    ReplayCacheFull,
    ReplayQuotaExceeded,
    ReplayRefused,
)
from .revocation_cache import RevocationCache, StatusRecord, status_key
from .sqlite import SQLiteStore, SQLiteTokenStore
from .tokens import AccessToken, TokenStore

__all__ = [
    "DEFAULT_QUOTA_PER_OWNER",
    "AccessToken",
    "CacheEntry",
    "ClientExists",
    "ClientNotFound",
    "ClientStore",
    "JWKSCache",
    "MemoryJWKSCache",
    "MemoryReplayCache",
    "MemoryRevocationCache",
    "MemoryStore",
    "MemoryTokenStore",
    "ReplayCache",
    "ReplayCacheFull",
    "ReplayQuotaExceeded",
    "ReplayRefused",
    "RevocationCache",
    "SQLiteStore",
    "SQLiteTokenStore",
    "StatusRecord",
    "StoreError",
    "StoredClient",
    "TokenStore",
    "hash_secret",
    "secret_matches",
    "status_key",
]

# name -> the backend module that needs an extra
_LAZY = {
    "SQLAlchemyStore": "sqlalchemy",
    "SQLAlchemyTokenStore": "sqlalchemy",
    "LDAPStore": "ldap",
    "RedisJWKSCache": "redis",
    "RedisReplayCache": "redis",
    "RedisRevocationCache": "redis",
    "RedisTokenStore": "redis",
}


def __getattr__(name: str):  # PEP 562: a backend's extra is needed only when it is used
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
