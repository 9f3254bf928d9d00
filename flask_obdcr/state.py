"""The per-application state of the extension, kept in ``app.extensions["obdcr"]``.

Built once by :meth:`OpenBankingDCR.init_app`; everything that serves a request (the blueprint,
the token endpoint, ``require_token``, the CLI) reads it from here. It holds no reference back
to the extension object, so the modules that use it do not import the extension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .certificates import ClientCertificates
from .config import Settings
from .jwks import JWKSClient
from .registration import Registrar
from .revoked_keys import RevokedKeys
from .storage import ClientStore, ReplayCache, TokenStore
from .urls import PublishedURLs

EXTENSION_KEY = "obdcr"


@dataclass
class DCRState:
    settings: Settings
    store: ClientStore
    jwks: JWKSClient
    replay_cache: ReplayCache
    certificates: ClientCertificates
    registrar: Registrar
    tokens: TokenStore
    urls: PublishedURLs
    clock: Callable[[], float]
    revoked_keys: RevokedKeys
    #: the shared Redis client when OBDCR_REDIS_URL is set
    redis: Any = None
    #: where re-validation learns organisations' status
    directory_status: Any = None
