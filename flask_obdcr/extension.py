"""The Flask extension: configuration, wiring, and the blueprint."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, current_app, has_app_context

from .certificates import TransportCertificateVerifier
from .config import Settings
from .errors import ConfigurationError
from .jwks import Fetcher, HTTPFetcher, JWKSCache, JWKSClient
from .policies import Pipeline, default_pipeline
from .registration import Registrar
from .replay import MemoryReplayCache, ReplayCache
from .storage import ClientStore, SQLiteStore

EXTENSION_KEY = "obdcr"


@dataclass
class DCRState:
    """Per-application state, kept in ``app.extensions["obdcr"]``."""

    extension: OpenBankingDCR
    settings: Settings
    store: ClientStore
    jwks: JWKSClient
    replay_cache: ReplayCache
    transport_verifier: TransportCertificateVerifier
    registrar: Registrar


class OpenBankingDCR:
    """UK Open Banking Dynamic Client Registration for a Flask authorization server.

    ::

        dcr = OpenBankingDCR(store=SQLiteStore("instance/obdcr.db"))
        dcr.init_app(app)

    Everything but the configuration is optional: the store defaults to SQLite in the
    app's instance folder, JWKS are fetched over HTTPS from allowed hosts only, the replay
    cache lives in the process. ``pipeline`` is the ordered list of validation policies;
    change it in code (``dcr.pipeline.insert_after("scope", my_policy)``).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        store: ClientStore | None = None,
        pipeline: Pipeline | None = None,
        jwks_fetcher: Fetcher | None = None,
        jwks_cache: JWKSCache | None = None,
        replay_cache: ReplayCache | None = None,
        clock: Callable[[], float] = time.time,
        url_prefix: str = "",
    ) -> None:
        self._store = store
        self.pipeline = pipeline if pipeline is not None else default_pipeline()
        self.jwks_fetcher = jwks_fetcher
        self.jwks_cache = jwks_cache
        self.replay_cache = replay_cache
        self.clock = clock
        self.url_prefix = url_prefix
        self._last_state: DCRState | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "OpenBankingDCR is already registered on this app; call init_app once per app."
            )
        settings = Settings.from_config(app.config)
        try:
            verifier = TransportCertificateVerifier.from_pem_file(settings.transport_ca_file)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"OBDCR_TRANSPORT_CA_FILE {settings.transport_ca_file!r} holds no usable CA"
                f" certificate: {exc}"
            ) from exc
        store = self._store
        if store is None:
            store = SQLiteStore(os.path.join(app.instance_path, "obdcr.db"))
        fetcher = self.jwks_fetcher or HTTPFetcher(
            allowed_hosts=settings.fetch_allowed_hosts, verify=settings.http_verify
        )
        jwks = JWKSClient(fetcher, cache=self.jwks_cache, clock=self.clock)
        replay_cache = self.replay_cache or MemoryReplayCache(clock=self.clock)
        registrar = Registrar(
            settings=settings,
            store=store,
            jwks=jwks,
            replay_cache=replay_cache,
            transport_verifier=verifier,
            pipeline=self.pipeline,
            clock=self.clock,
        )
        state = DCRState(self, settings, store, jwks, replay_cache, verifier, registrar)
        app.extensions[EXTENSION_KEY] = state
        self._last_state = state

        from .cli import obdcr_cli
        from .views import blueprint

        app.register_blueprint(blueprint, url_prefix=self.url_prefix or None)
        app.cli.add_command(obdcr_cli)

    def _state(self) -> DCRState:
        if has_app_context() and EXTENSION_KEY in current_app.extensions:
            return current_app.extensions[EXTENSION_KEY]
        if self._last_state is None:
            raise RuntimeError("OpenBankingDCR.init_app(app) has not been called.")
        return self._last_state

    @property
    def store(self) -> ClientStore:
        """The client store of the current app (or of the app this was initialised with)."""
        return self._store if self._store is not None else self._state().store

    @property
    def settings(self) -> Settings:
        return self._state().settings

    @property
    def registrar(self) -> Registrar:
        return self._state().registrar
