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
