"""Storage backends for registered clients (see :class:`ClientStore`)."""

from .base import (
    ClientExists,
    ClientNotFound,
    ClientStore,
    StoredClient,
    StoreError,
    hash_secret,
    secret_matches,
)
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "ClientExists",
    "ClientNotFound",
    "ClientStore",
    "MemoryStore",
    "SQLiteStore",
    "StoreError",
    "StoredClient",
    "hash_secret",
    "secret_matches",
]


def __getattr__(name: str):  # PEP 562: the SQLAlchemy backend needs the `postgres` extra
    if name in ("SQLAlchemyStore", "SQLAlchemyTokenStore"):
        from . import sqlalchemy

        return getattr(sqlalchemy, name)
    if name == "LDAPStore":  # PEP 562: the LDAP backend needs the `ldap` extra (ldap3)
        from . import ldap

        return ldap.LDAPStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
