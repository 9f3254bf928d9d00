"""The protocol core: register, read, update and delete clients. No Flask in here.

Every input arrives as an argument (body bytes, content type, a loader for the client
certificate) and every dependency is injected (clock, JWKS client, replay cache, store),
so the same core serves the Flask blueprint, the tests and any other framework.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from .certificates import ClientCertificates, pem_text, thumbprint_sha256
from .config import RuleSettings
from .errors import InvalidClientMetadata, InvalidToken, TemporarilyUnavailable, TooManyRequests
from .jwks import JWKSClient
from .policies import Pipeline, RegistrationContext, default_pipeline
from .revoked_keys import RevokedKeys, key_thumbprint
from .storage import (
    ClientExists,
    ClientNotFound,
    ClientStore,
    ReplayCache,
    ReplayQuotaExceeded,
    ReplayRefused,
    StoredClient,
    TokenStore,
    hash_secret,
)

SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
#: the name the replay check goes by in the log, the ``registration_rejected`` signal and
#: ``dcr.explain``: the registrar's atomic check-and-set after the pipeline, not a policy
REPLAY_CHECK = "jti_replay"
#: the rule the replay check enforces, as ``dcr.explain`` reports it
REPLAY_CLAUSE = (
    'OB DCR v3.3 "OBClientRegistrationRequest1" data dictionary, jti (a unique identifier for'
    " the JWT); RFC 7519 §4.1.7 (jti: to prevent the JWT from being replayed);"
    ' docs/architecture.md "Contract: errors" (jti replayed)'
)
#: the name of refusals by the client store (a backend that fails) and of the management
#: checks (who may GET/PUT/DELETE /register/<id>), for the log
STORE_CHECK = "client_store"
#: ``StoredClient.extra`` key of what registration established and re-validation re-checks
TRUST = "trust"
#: ``StoredClient.extra`` key of a suspension: ``{"reason": ..., "since": ...}``
SUSPENDED = "suspended"


def suspension(client: StoredClient) -> dict[str, Any] | None:
    """Why and since when re-validation suspended ``client``; None for an active client."""
    record = client.extra.get(SUSPENDED)
    return record if isinstance(record, dict) else None


CertificateLoader = Callable[[], "x509.Certificate | None"]


def new_client_id() -> str:
    return str(uuid.uuid4())


def new_secret() -> str:
    # 27 random bytes = 216 bits, 36 URL-safe characters: the OB cap for client_secret
    return secrets.token_urlsafe(27)


@dataclass(frozen=True)
class Registration:
    """The outcome of a successful POST or PUT."""

    client: StoredClient
    #: the JSON body to return; holds a new client secret in clear, this once
    response: dict[str, Any]
    #: what the pipeline established, for signals and audit logs
    context: RegistrationContext


def trust_record(context: RegistrationContext) -> dict[str, Any]:
    """What a registration was judged on that can change later (keys revoked, certificates
    revoked or expired): kept with the client for re-validation."""
    kid = context.request_header.get("kid")
    certificate = context.certificate
    record: dict[str, Any] = {
        "request_kid": kid if isinstance(kid, str) else None,
        "request_jkt": key_thumbprint(context.request_key) if context.request_key else None,
        "certificate_binding": context.certificate_binding,
    }
    if certificate is not None:
        record["certificate"] = pem_text(certificate)
        record["x5t#S256"] = thumbprint_sha256(certificate)
    return record


def replayed(context: RegistrationContext) -> InvalidClientMetadata:
    """The refusal of a request whose jti the replay cache already holds."""
    return InvalidClientMetadata(
        "The request JWT has been used before (jti replayed).",
        detail=f"jti {str(context.request_claims.get('jti'))[:64]!r} of software"
        f" {str(context.request_claims.get('iss'))[:64]!r} is in the replay cache",
        policy=REPLAY_CHECK,
    )


#: how long the token endpoint and ``require_token`` answer a client from this process: the
#: most a change made by another process (suspension, deletion, update) takes to be seen here
CLIENT_CACHE_SECONDS = 1.0


class ClientCache:
    """Clients as the token endpoint (``query_client``) and ``require_token`` read them: a
    stored client read once is answered from this process for ``seconds`` (by ``monotonic``;
    at most ``size`` clients), so a token request or an API call does not read and decode the
    whole record each time.

    Its validity, for what can take a client's tokens away (docs/architecture.md, "Contract:
    tokens, published URLs and keys"):

    * **in this process**, at once: :meth:`forget` is called by :class:`Registrar`'s update
      and delete, by every ``TokenStore.revoke_client`` (deletion, suspension by re-validation
      or by the console) and on the ``client_*`` signals (:func:`connect_signals`);
    * **in another process** sharing the store: a client suspended, deleted or updated there
      is seen here within ``seconds``. A token issued here meanwhile to a client since
      suspended or deleted stops working within the same bound: ``require_token`` refuses the
      tokens of a client that is suspended or gone, read through this cache.

    Only clients found are kept (an unknown client_id is read from the store each time: a
    client just registered elsewhere is found at once), and a client read before a
    :meth:`forget` of this process is not kept after it. ``seconds=0`` reads the store every
    time. A cached client is shared: callers read it and never change it.
    """

    def __init__(
        self,
        store: ClientStore,
        *,
        seconds: float = CLIENT_CACHE_SECONDS,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if seconds < 0 or size < 1:
            raise ValueError("seconds must be >= 0 and size >= 1")
        self.store = store
        self.seconds = float(seconds)
        self.size = size
        self.clock = clock
        self._entries: dict[str, tuple[StoredClient, float]] = {}
        self._generation = 0  # bumped by every forget, under the lock
        self._lock = threading.Lock()

    def get(self, client_id: str) -> StoredClient | None:
        """The stored client, or None; errors of the store propagate (fail closed)."""
        if self.seconds:
            entry = self._entries.get(client_id)
            if entry is not None:
                if 0 <= self.clock() - entry[1] < self.seconds:
                    return entry[0]
                self._entries.pop(client_id, None)
        generation = self._generation
        client = self.store.get(client_id)
        if client is not None and self.seconds:
            with self._lock:
                if generation == self._generation:  # no forget since the read began
                    if len(self._entries) >= self.size:
                        self._entries.clear()  # bounded; refilled by the clients in use
                    self._entries[client_id] = (client, self.clock())
        return client

    def forget(self, client_id: str | None = None) -> None:
        """Read ``client_id`` (None: every client) from the store next time."""
        with self._lock:
            self._generation += 1
            if client_id is None:
                self._entries.clear()
            else:
                self._entries.pop(client_id, None)


class Registrar:
    """Runs the validation pipeline and keeps the store consistent with its verdicts."""

    def __init__(
        self,
        *,
        rules: RuleSettings,
        store: ClientStore,
        jwks: JWKSClient,
        replay_cache: ReplayCache,
        certificates: ClientCertificates,
        tokens: TokenStore | None = None,
        revoked_keys: RevokedKeys | None = None,
        pipeline: Pipeline | None = None,
        clock: Callable[[], float] = time.time,
        client_id_factory: Callable[[], str] = new_client_id,
        secret_factory: Callable[[], str] = new_secret,
    ) -> None:
        self.rules = rules
        self.store = store
        self.jwks = jwks
        self.replay_cache = replay_cache
        self.certificates = certificates
        #: the access tokens issued to clients: revoked with the client they belong to
        self.tokens = tokens
        #: the SSA's revoked key sets (None: not consulted)
        self.revoked_keys = revoked_keys
        self.pipeline = pipeline if pipeline is not None else default_pipeline()
        self.clock = clock
        self.client_id_factory = client_id_factory
        self.secret_factory = secret_factory
        #: the clients as the token endpoint and require_token read them
        self.clients = ClientCache(store)
        listeners = getattr(tokens, "client_revoked", None)  # None: a store of the 0.2 protocol
        if listeners is not None:
            listeners.append(self.clients.forget)

    def validate(
        self,
        body: bytes,
        content_type: str | None,
        certificate_loader: CertificateLoader,
        *,
        existing: StoredClient | None = None,
    ) -> RegistrationContext:
        """Run the pipeline; raises a RegistrationError, or returns the judged context."""
        context = self.new_context(body, content_type, certificate_loader, existing=existing)
        self.pipeline.run(context)
        return context

    def new_context(
        self,
        body: bytes,
        content_type: str | None,
        certificate_loader: CertificateLoader,
        *,
        existing: StoredClient | None = None,
    ) -> RegistrationContext:
        """The context the pipeline judges a request on, before any policy has run (what
        :meth:`validate` and :func:`flask_obdcr.explain.explain` start from)."""
        return RegistrationContext(
            rules=self.rules,
            now=self.clock(),
            jwks=self.jwks,
            replay_cache=self.replay_cache,
            certificates=self.certificates,
            body=body,
            content_type=content_type,
            certificate_loader=certificate_loader,
            existing=existing,
            revoked_keys=self.revoked_keys,
        )

    def register(
        self, body: bytes, content_type: str | None, certificate_loader: CertificateLoader
    ) -> Registration:
        """POST /register: validate, then store a new client."""
        context = self.validate(body, content_type, certificate_loader)
        self._consume_jti(context)
        now = int(context.now)
        secret = self._secret_for(context.metadata)
        # RFC 7592: a token for GET/PUT/DELETE /register/<id>, returned this once
        registration_token = self.secret_factory()
        for _ in range(3):
            client = StoredClient(
                client_id=self.client_id_factory(),
                client_id_issued_at=now,
                metadata=dict(context.metadata),
                ssa_claims=dict(context.ssa_claims),
                client_secret_hash=hash_secret(secret) if secret else None,
                registration_access_token_hash=hash_secret(registration_token),
                updated_at=now,
                extra={TRUST: trust_record(context)},
            )
            try:
                self._write(self.store.add, client)
                break
            except ClientExists:
                continue  # a uuid4 collision: draw again
        else:  # pragma: no cover - three uuid4 collisions in a row
            raise TemporarilyUnavailable(detail="could not allocate a client_id")
        response = self._response(client, secret)
        response["registration_access_token"] = registration_token
        return Registration(client, response, context)

    def update(
        self,
        client: StoredClient,
        body: bytes,
        content_type: str | None,
        certificate_loader: CertificateLoader,
    ) -> Registration:
        """PUT /register/<id>: the same pipeline as POST; software and org may not change."""
        context = self.validate(body, content_type, certificate_loader, existing=client)
        self._consume_jti(context)
        method = context.metadata["token_endpoint_auth_method"]
        secret = None
        secret_hash = client.client_secret_hash
        if method not in SECRET_METHODS:
            secret_hash = None
        elif secret_hash is None:
            secret = self.secret_factory()  # newly moved to a secret method
            secret_hash = hash_secret(secret)
        updated = client.with_changes(
            metadata=dict(context.metadata),
            ssa_claims=dict(context.ssa_claims),
            client_secret_hash=secret_hash,
            updated_at=int(context.now),
            extra={**client.extra, TRUST: trust_record(context)},
        )
        try:
            self._write(self.store.replace, updated)
        except ClientNotFound:
            raise InvalidToken("The client has been deleted.", policy=STORE_CHECK) from None
        finally:
            self.clients.forget(client.client_id)
        return Registration(updated, self._response(updated, secret), context)

    def delete(self, client: StoredClient) -> bool:
        """DELETE /register/<id>: the client's tokens are revoked, then the client goes.

        Tokens first: if revoking fails, nothing is deleted and the client may retry; the
        other way round, a failure would leave live tokens of a deleted client."""
        try:
            if self.tokens is not None:
                self.tokens.revoke_client(client.client_id)
            return self.store.delete(client.client_id)
        except Exception as exc:
            raise TemporarilyUnavailable(
                "The client could not be deleted; retry later.",
                detail=repr(exc),
                policy=STORE_CHECK,
            ) from exc
        finally:
            self.clients.forget(client.client_id)

    def _consume_jti(self, context: RegistrationContext) -> None:
        # atomic check-and-set: of two racing copies of one request, exactly one passes.
        # Every refusal here is named REPLAY_CHECK, as a policy's is named after it.
        expires_at = float(context.request_claims["exp"]) + self.rules.clock_skew
        cache: Any = self.replay_cache
        try:
            if isinstance(cache, ReplayCache):
                # counted against the software's quota: the request's iss is its software_id
                owner = str(context.request_claims.get("iss"))
                fresh = cache.remember(context.jti_key, expires_at, owner=owner)
            else:  # a cache written to the 0.2 protocol: remember(key, expires_at)
                fresh = cache.remember(context.jti_key, expires_at)
        except ReplayQuotaExceeded as exc:  # this software's share is used up: not a replay
            raise TooManyRequests(
                "This software has sent too many registration requests; retry later.",
                retry_after=exc.retry_after,
                detail=str(exc),
                policy=REPLAY_CHECK,
            ) from exc
        except ReplayRefused as exc:  # the whole cache is full: not this software's doing
            raise TemporarilyUnavailable(
                "The replay check cannot be made right now; retry later.",
                retry_after=exc.retry_after,
                detail=repr(exc),
                policy=REPLAY_CHECK,
            ) from exc
        except Exception as exc:  # a shared cache that is down: refuse, and say so
            raise TemporarilyUnavailable(
                "The replay check cannot be made right now; retry later.",
                detail=repr(exc),
                policy=REPLAY_CHECK,
            ) from exc
        if not fresh:
            raise replayed(context)

    def _secret_for(self, metadata: dict[str, Any]) -> str | None:
        if metadata.get("token_endpoint_auth_method") in SECRET_METHODS:
            return self.secret_factory()
        return None

    @staticmethod
    def _write(operation: Callable[[StoredClient], Any], client: StoredClient) -> None:
        try:
            operation(client)
        except (ClientExists, ClientNotFound):
            raise
        except Exception as exc:  # the backend is down or broken: no 500, no partial record
            raise TemporarilyUnavailable(
                "The client could not be stored; retry later.",
                detail=repr(exc),
                policy=STORE_CHECK,
            ) from exc

    @staticmethod
    def _response(client: StoredClient, secret: str | None) -> dict[str, Any]:
        body = client.to_response()
        if secret is not None:
            body["client_secret"] = secret
            body["client_secret_expires_at"] = 0  # OB: zero when the secret does not expire
        return body
