"""The Flask extension: configuration, wiring, and the blueprint."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from flask import Blueprint, Flask, current_app, g, has_app_context, request

from .certificates import ClientCertificates, TransportCertificateVerifier, VerifiedCertificate
from .config import Settings
from .errors import ConfigurationError, InvalidClient, RegistrationError, TemporarilyUnavailable
from .explain import certificate_loader, explain
from .fetch import BoundedFetch
from .jobs import revalidate_app
from .jwks import Fetcher, HTTPFetcher, JWKSCache, JWKSClient
from .log import get_logger
from .management import check_access_token
from .policies import Pipeline, default_pipeline
from .registration import CLIENT_CACHE_SECONDS, Registrar
from .revalidation import DirectoryStatus, Finding, RevalidationReport
from .revocation import Fetch, MemoryRevocationCache, RevocationCache, RevocationChecker
from .revoked_keys import RevokedKeys
from .signals import client_deleted, client_reinstated, client_suspended, client_updated
from .state import EXTENSION_KEY, DCRState
from .storage import (
    ClientStore,
    MemoryReplayCache,
    MemoryTokenStore,
    ReplayCache,
    SQLiteStore,
    StoredClient,
    TokenStore,
)
from .urls import PublishedURLs

log = get_logger()

#: the name refusals of :meth:`OpenBankingDCR.client_certificate` go by in the log: the
#: pipeline's own certificate check
CERTIFICATE_CHECK = "transport_certificate"

#: the most a CRL download may be (a JWKS gets the fetcher's smaller default)
CRL_MAX_BYTES = 8 * 1024 * 1024

__all__ = ["EXTENSION_KEY", "DCRState", "OpenBankingDCR"]

#: what can change whether a client may have tokens, sent in this process
CLIENT_CHANGED = (client_updated, client_deleted, client_suspended, client_reinstated)


def _forget_cached_client(app: Flask, client: StoredClient | None = None, **extra: Any) -> None:
    state = app.extensions.get(EXTENSION_KEY) if isinstance(app, Flask) else None
    if state is not None and client is not None:
        state.registrar.clients.forget(client.client_id)


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
        token_store: TokenStore | None = None,
        clock: Callable[[], float] = time.time,
        url_prefix: str = "",
        directory_status: DirectoryStatus | None = None,
        revocation_fetch: Fetch | None = None,
        client_cache_seconds: float = CLIENT_CACHE_SECONDS,
        token_cache_seconds: float | None = None,
    ) -> None:
        self._store = store
        self._token_store = token_store
        self.pipeline = pipeline if pipeline is not None else default_pipeline()
        self.jwks_fetcher = jwks_fetcher
        self.jwks_cache = jwks_cache
        self.replay_cache = replay_cache
        self.clock = clock
        self.url_prefix = url_prefix
        #: where re-validation learns organisations' status (None: not checked)
        self.directory_status = directory_status
        #: fetches CRLs and OCSP responses (None: a bounded HTTP fetch built from the config)
        self.revocation_fetch = revocation_fetch
        #: how long the token endpoint and require_token answer a client from the process
        #: (:class:`~flask_obdcr.registration.ClientCache`: the bound on seeing another
        #: process's suspension, deletion or update); 0: read the store every time
        self.client_cache_seconds = client_cache_seconds
        #: how long require_token answers a found token from the process (TokenStore, "The
        #: lookup cache": the bound on seeing another process's revocation); None: the token
        #: store's own default (1 s for the shared backends, none in memory)
        self.token_cache_seconds = token_cache_seconds
        self._last_state: DCRState | None = None
        self._app_count = 0
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and validate the app's ``OBDCR_*`` configuration, build the per-app state and
        register the blueprint (``POST /register``, ``GET|PUT|DELETE /register/<id>``) and the
        ``flask obdcr`` commands.

        Keys read (README, "Configuration", has the full table): ``OBDCR_ISSUER``,
        ``OBDCR_AUDIENCES``, ``OBDCR_TRUSTED_DIRECTORIES``, ``OBDCR_JWKS_ALLOWED_HOSTS``,
        ``OBDCR_HTTP_VERIFY``, ``OBDCR_HTTP_TIMEOUT``, ``OBDCR_TRANSPORT_CA_FILE``,
        ``OBDCR_CLIENT_CERT_HEADER``, ``OBDCR_TRUSTED_PROXIES``, ``OBDCR_SIGNING_ALGS``,
        ``OBDCR_TOKEN_ENDPOINT_AUTH_METHODS``, ``OBDCR_CLOCK_SKEW``, ``OBDCR_SSA_MAX_AGE``,
        ``OBDCR_MAX_REQUEST_BYTES``, ``OBDCR_TOKEN_ENDPOINT``, ``OBDCR_MTLS_BASE_URL``,
        ``OBDCR_CERTIFICATE_BOUND_TOKENS``, ``OBDCR_ACCESS_TOKEN_LIFETIME``,
        ``OBDCR_MAX_ASSERTION_LIFETIME``, ``OBDCR_REVOCATION``,
        ``OBDCR_REVOCATION_CACHE_SECONDS``, ``OBDCR_REPLAY_QUOTA_PER_SOFTWARE``,
        ``OBDCR_REDIS_URL``, ``OBDCR_REDIS_PREFIX``, ``OBDCR_DATABASE_URL`` and
        ``OBDCR_EXPLAIN_ENDPOINT`` (sandboxes only: ``POST /register/explain``). A wrong or
        missing key raises :class:`ConfigurationError` naming it, here, not at the first
        request.
        """
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
        if store is None and settings.database_url:
            from .storage.sqlalchemy import SQLAlchemyStore

            store = SQLAlchemyStore(settings.database_url)
        if store is None:
            store = SQLiteStore(os.path.join(app.instance_path, "obdcr.db"))
        replay_cache, jwks_cache = self.replay_cache, self.jwks_cache
        shared_redis = None
        if settings.redis_url:
            from .storage.redis import redis_client

            shared_redis = redis_client(settings.redis_url)  # one pool for all Redis state
        if shared_redis is not None and (replay_cache is None or jwks_cache is None):
            # every process of the server sees every jti and shares fetched key sets
            from .storage.redis import shared_caches

            shared_replay, shared_jwks = shared_caches(
                shared_redis,
                prefix=settings.redis_prefix,
                clock=self.clock,
                quota_per_owner=settings.replay_quota_per_software,
            )
            replay_cache = shared_replay if replay_cache is None else replay_cache
            jwks_cache = shared_jwks if jwks_cache is None else jwks_cache
        fetcher = self.jwks_fetcher
        if fetcher is None:
            # OBDCR_HTTP_TIMEOUT bounds a whole fetch: connect and read share it
            connect = min(3.05, settings.http_timeout / 2)
            fetcher = HTTPFetcher(
                allowed_hosts=settings.fetch_allowed_hosts,
                verify=settings.http_verify,
                timeout=(connect, settings.http_timeout - connect),
            )
        jwks = JWKSClient(fetcher, cache=jwks_cache, clock=self.clock)
        if replay_cache is None:
            replay_cache = MemoryReplayCache(
                clock=self.clock, quota_per_owner=settings.replay_quota_per_software
            )
        certificates = ClientCertificates(
            verifier,
            header=settings.client_cert_header,
            trusted_proxies=settings.trusted_proxies,
            clock=self.clock,
            revocation=self._revocation_checker(settings, shared_redis),
        )
        tokens = self._token_store
        if tokens is None:
            # beside the clients when their store keeps them (SQLite, SQLAlchemy: the same
            # database, shared by every process)
            tokens = store.token_store(clock=self.clock)
        if tokens is None and shared_redis is not None:  # e.g. LDAPStore: where the jtis are
            from .storage.redis import RedisTokenStore

            tokens = RedisTokenStore(shared_redis, prefix=settings.redis_prefix, clock=self.clock)
        if tokens is None:
            if not store.process_local:
                log.warning(
                    "%s keeps no access tokens: they are kept in this process only, so"
                    " with several processes pass token_store= or set OBDCR_REDIS_URL",
                    type(store).__name__,
                )
            tokens = MemoryTokenStore(clock=self.clock)
        if self.token_cache_seconds is not None:
            tokens.cache_seconds = float(self.token_cache_seconds)
        revoked_keys = RevokedKeys(jwks, mode=settings.revocation)
        registrar = Registrar(
            rules=settings.rules,
            store=store,
            jwks=jwks,
            replay_cache=replay_cache,
            certificates=certificates,
            tokens=tokens,
            revoked_keys=revoked_keys,
            pipeline=self.pipeline,
            clock=self.clock,
        )
        registrar.clients.seconds = float(self.client_cache_seconds)
        state = DCRState(
            settings=settings,
            store=store,
            jwks=jwks,
            replay_cache=replay_cache,
            certificates=certificates,
            registrar=registrar,
            tokens=tokens,
            urls=PublishedURLs.from_settings(settings, self.url_prefix),
            clock=self.clock,
            revoked_keys=revoked_keys,
            redis=shared_redis,
            directory_status=self.directory_status,
        )
        app.extensions[EXTENSION_KEY] = state
        for signal in CLIENT_CHANGED:  # a change of this process is seen here at once
            signal.connect(_forget_cached_client)
        self._last_state = state
        self._app_count += 1

        from .cli import obdcr_cli
        from .views import blueprint, explain_blueprint

        app.register_blueprint(blueprint, url_prefix=self.url_prefix or None)
        sandbox_only = []
        if settings.explain_endpoint:
            # sandboxes only (docs/architecture.md, "Contract: explain"): it tells what the
            # wire withholds
            app.register_blueprint(explain_blueprint, url_prefix=self.url_prefix or None)
            sandbox_only.append(
                f"OBDCR_EXPLAIN_ENDPOINT is on: POST {self.url_prefix}/register/explain reports"
                " every registration check with the detail refusals withhold"
            )
        if settings.loopback_redirect_uris:
            sandbox_only.append(
                "OBDCR_LOOPBACK_REDIRECT_URIS is on: redirect URIs on loopback addresses are"
                " registered"
            )
        if sandbox_only:
            # one line, however many: a sandbox's every command prints it
            log.warning("%s; for sandboxes only", "; ".join(sandbox_only))
        app.cli.add_command(obdcr_cli)

    def _revocation_checker(self, settings: Settings, redis: Any) -> RevocationChecker:
        """OCSP and CRL checks of transport certificates (docs/architecture.md, "Contract:
        revocation"): verdicts shared through Redis when the app has it."""
        if self.revocation_fetch is not None:
            fetch = self.revocation_fetch
        else:
            # OBDCR_HTTP_TIMEOUT bounds each CRL or OCSP fetch as a whole; CRLs may be large
            fetch = BoundedFetch(
                timeout=settings.http_timeout, verify=settings.http_verify, max_bytes=CRL_MAX_BYTES
            )
        cache: RevocationCache
        if redis is not None:
            from .storage.redis import RedisRevocationCache

            cache = RedisRevocationCache(redis, prefix=settings.redis_prefix, clock=self.clock)
        else:
            cache = MemoryRevocationCache()
        return RevocationChecker(
            mode=settings.revocation,
            cache_seconds=settings.revocation_cache_seconds,
            fetch=fetch,
            cache=cache,
            clock=self.clock,
            skew=settings.clock_skew,
        )

    def _state(self) -> DCRState:
        if has_app_context() and EXTENSION_KEY in current_app.extensions:
            return current_app.extensions[EXTENSION_KEY]
        if self._last_state is None:
            raise RuntimeError("OpenBankingDCR.init_app(app) has not been called.")
        if self._app_count > 1:
            raise RuntimeError(
                "This OpenBankingDCR serves several apps: use it inside an app context."
            )
        return self._last_state

    @property
    def store(self) -> ClientStore:
        """The client store of the current app (or of the app this was initialised with)."""
        return self._store if self._store is not None else self._state().store

    @property
    def settings(self) -> Settings:
        """The validated configuration of the current app."""
        return self._state().settings

    @property
    def urls(self) -> PublishedURLs:
        """The URLs this app publishes, built from configuration (never from ``Host``)."""
        return self._state().urls

    @property
    def certificates(self) -> ClientCertificates:
        """The app's certificate service (source, trust anchors, binding rules)."""
        return self._state().certificates

    def client_certificate(
        self, *, revoked_error: type[RegistrationError] = InvalidClient
    ) -> VerifiedCertificate:
        """The current request's client certificate, verified with the app's clock (chain,
        validity, clientAuth, revocation); raises :class:`~flask_obdcr.InvalidClient` when
        there is none or it is not trusted, ``revoked_error`` when it is revoked (pass
        :class:`~flask_obdcr.InvalidToken` in front of token-protected resources, as
        ``require_token`` answers). For a host app's own mTLS checks (the example bank's
        before_request hook). A refusal is named ``transport_certificate`` (``error.policy``),
        the check it makes, in the log line of ``/register`` and ``/register/<id>``."""
        state = self._state()
        try:
            certificate = state.certificates.from_environ(request.environ)
            if certificate is None:
                raise InvalidClient("A client certificate is required (mutual TLS).")
            return state.certificates.verify(certificate, revoked_error=revoked_error)
        except RegistrationError as exc:
            exc.policy = exc.policy or CERTIFICATE_CHECK
            raise

    @property
    def registrar(self) -> Registrar:
        return self._state().registrar

    def explain(
        self,
        body: bytes | str,
        certificate: x509.Certificate | str | bytes | None = None,
        content_type: str | None = "application/jwt",
    ) -> list[dict[str, Any]]:
        """What ``POST /register`` would make of ``body`` presented with ``certificate`` (PEM,
        an ``x509.Certificate``, or None for no client certificate), one row per policy of
        :attr:`pipeline` in order, then the replay check (docs/architecture.md, "Contract:
        explain")::

            {"policy": "software_statement", "verdict": "passed" | "failed" | "not reached",
             "detail": "..." or None, "clause": "OB DCR v3.3 ... ; RFC ... ; ..."}

        Stores nothing, sends no signal and does not consume the request's ``jti``: the same
        body can be registered afterwards. The first failed row's ``detail`` is what the wire
        error says and what it withholds; the rows after it are "not reached"."""
        loader = certificate_loader(certificate)
        return explain(self._state().registrar, body, content_type, loader)

    @property
    def tokens(self) -> TokenStore:
        """Access tokens issued through :meth:`save_token` (hashed, certificate-bound)."""
        return self._state().tokens

    # -- Authlib integration -------------------------------------------------------------

    def query_client(self, client_id: str):
        """Authlib's ``query_client``: the stored client as an Authlib client, or None."""
        from .authlib_server import OBClient

        if not isinstance(client_id, str):
            return None
        # through the client cache: within its bound, no store read per token request
        try:
            stored = self._state().registrar.clients.get(client_id)
        except Exception as exc:  # the store is down: a 503 at the token endpoint, never a 500
            raise TemporarilyUnavailable(
                "The client cannot be read right now; retry later.", detail=repr(exc)
            ) from exc
        return None if stored is None else OBClient(stored)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Authlib's ``save_token``: kept hashed and bound to the mTLS certificate (RFC 8705)."""
        from .authlib_server import save_token

        save_token(self._state(), token, request)

    def configure_authorization_server(
        self, server: Any, *, token_endpoint: str | None = None, register_grant: bool = True
    ) -> Any:
        """Give an Authlib ``AuthorizationServer`` the OB client authentication methods
        (tls_client_auth, private_key_jwt; hashed client secrets work through
        :meth:`query_client`) and, unless ``register_grant=False``, a client_credentials
        grant that accepts all of them."""
        from .authlib_server import configure_authorization_server

        return configure_authorization_server(
            server, self._state, token_endpoint=token_endpoint, register_grant=register_grant
        )

    def discovery_metadata(self) -> dict[str, Any]:
        """What DCR contributes to ``/.well-known/openid-configuration``; every URL comes from
        configuration (docs/architecture.md, "Contract: tokens, published URLs and keys"), so
        a forged ``Host`` cannot poison a cached copy."""
        from .authlib_server import AUTH_METHODS
        from .policies.client_metadata import RESPONSE_TYPES

        state = self._state()
        settings = state.settings
        algs = sorted(settings.signing_algs, key=lambda alg: (alg != "PS256", alg))
        return {
            "registration_endpoint": state.urls.registration_endpoint,
            "token_endpoint": state.urls.token_endpoint,
            "token_endpoint_auth_methods_supported": [
                m for m in AUTH_METHODS if m in settings.token_endpoint_auth_methods
            ],
            "token_endpoint_auth_signing_alg_values_supported": algs,
            "request_object_signing_alg_values_supported": algs,
            "id_token_signing_alg_values_supported": algs,
            "response_types_supported": list(RESPONSE_TYPES),
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            "tls_client_certificate_bound_access_tokens": settings.certificate_bound_tokens,
            **state.urls.mtls_endpoint_aliases(),
        }

    def revalidate(
        self,
        *,
        directory_status: DirectoryStatus | None = None,
        max_workers: int = 8,
        on_finding: Callable[[Finding, StoredClient], None] | None = None,
    ) -> RevalidationReport | None:
        """Re-check every stored client (docs/architecture.md, "Contract: revocation"):
        suspend those that fail, reinstate suspended ones that pass. Sends ``client_suspended``
        and ``client_reinstated``. One pass at a time per store (a lock in Redis or the store):
        returns None, having done nothing, when another pass holds it."""
        return revalidate_app(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            directory_status=directory_status,
            max_workers=max_workers,
            on_finding=on_finding,
        )

    def console_blueprint(
        self, *, authorize: Callable[[], bool], keep_refused: int = 50
    ) -> Blueprint:
        """The operator console (docs/architecture.md, "Contract: console and consent
        discovery")::

            bp = dcr.console_blueprint(authorize=can_see_console)  # before every page -> bool
            app.register_blueprint(bp, url_prefix="/console")

        ``authorize`` is required and called before every request of the blueprint, pages and
        actions alike; a false answer is a 403. The actions (suspend, reinstate, delete) are
        POST forms with a CSRF token kept in the session: set the app's ``SECRET_KEY``, or
        they answer 400 (the pages still show). The refused registrations page keeps the last
        ``keep_refused`` refusals, in this process's memory."""
        from .console import console_blueprint

        return console_blueprint(authorize, keep_refused=keep_refused)

    def require_token(self, scope: str | None = None) -> Callable:
        """Protect a resource view: a valid access token, bound to the certificate presented
        with it (docs/architecture.md, "Contract: tokens, published URLs and keys"), carrying
        ``scope``. The token record is put in
        ``g.obdcr_token``; a refusal is a JSON 401 ``invalid_token`` or 403
        ``insufficient_scope`` with ``WWW-Authenticate``."""

        def decorator(view: Callable) -> Callable:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                environ = request.environ
                try:
                    g.obdcr_token = check_access_token(
                        self._state(), environ.get("HTTP_AUTHORIZATION"), environ, scope
                    )
                except RegistrationError as exc:
                    from .views import json_response  # refusals only: no import per call

                    return json_response(exc.to_dict(), exc.status, exc.headers)
                return view(*args, **kwargs)

            return wrapper

        return decorator
