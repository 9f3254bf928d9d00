"""UK Open Banking Dynamic Client Registration for Flask authorization servers."""

from .config import Settings
from .errors import (
    ConfigurationError,
    InvalidClient,
    InvalidClientMetadata,
    InvalidRedirectURI,
    InvalidSoftwareStatement,
    InvalidToken,
    RegistrationError,
    TemporarilyUnavailable,
    UnapprovedSoftwareStatement,
)
from .extension import OpenBankingDCR
from .policies import Pipeline, RegistrationContext, default_pipeline, policy
from .storage import ClientStore, MemoryStore, SQLiteStore, StoredClient

__version__ = "0.1.0"

__all__ = [
    "ClientStore",
    "ConfigurationError",
    "InvalidClient",
    "InvalidClientMetadata",
    "InvalidRedirectURI",
    "InvalidSoftwareStatement",
    "InvalidToken",
    "MemoryStore",
    "OpenBankingDCR",
    "Pipeline",
    "RegistrationContext",
    "RegistrationError",
    "SQLiteStore",
    "Settings",
    "StoredClient",
    "TemporarilyUnavailable",
    "UnapprovedSoftwareStatement",
    "default_pipeline",
    "policy",
]
