"""Every ``OBDCR_*`` configuration key, its default and its meaning.

The keys are read once, in ``init_app``, into a frozen :class:`Settings`. A wrong or
missing key fails at start-up with a message that names the key and says how to fix it,
never at the first request.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError

#: algorithms a deployment may enable; HS* and "none" are never acceptable for DCR, and ES384
#: and ES512 never verify (EC keys must be P-256, docs/architecture.md)
KNOWN_SIGNING_ALGS = frozenset({"PS256", "PS384", "PS512", "ES256", "RS256", "RS384", "RS512"})
KNOWN_AUTH_METHODS = (
    "tls_client_auth",
    "private_key_jwt",
    "client_secret_basic",
    "client_secret_post",
)
CERT_HEADERS = ("Client-Cert", "X-SSL-Client-Cert")
REDIS_SCHEMES = ("redis", "rediss", "unix")
REVOCATION_MODES = ("require", "prefer", "off")

#: (config key, default); a default of REQUIRED means the key must be set
REQUIRED = object()
DEFAULTS: dict[str, Any] = {
    "OBDCR_ISSUER": REQUIRED,
    "OBDCR_AUDIENCES": [],
    "OBDCR_TRUSTED_DIRECTORIES": REQUIRED,
    "OBDCR_JWKS_ALLOWED_HOSTS": [],
    "OBDCR_HTTP_VERIFY": True,
    "OBDCR_TRANSPORT_CA_FILE": REQUIRED,
    "OBDCR_CLIENT_CERT_HEADER": None,
    "OBDCR_TRUSTED_PROXIES": [],
    "OBDCR_SIGNING_ALGS": ["PS256", "ES256"],
    "OBDCR_TOKEN_ENDPOINT_AUTH_METHODS": list(KNOWN_AUTH_METHODS),
    "OBDCR_CLOCK_SKEW": 30,
    "OBDCR_SSA_MAX_AGE": None,
    "OBDCR_MAX_REQUEST_BYTES": 65536,
    # tokens, published URLs and fetches (docs/architecture.md, "Contract: tokens, published
    # URLs and keys")
    "OBDCR_TOKEN_ENDPOINT": None,
    "OBDCR_MTLS_BASE_URL": None,
    "OBDCR_CERTIFICATE_BOUND_TOKENS": True,
    "OBDCR_ACCESS_TOKEN_LIFETIME": 3600,
    "OBDCR_MAX_ASSERTION_LIFETIME": 3600,
    "OBDCR_HTTP_TIMEOUT": 10,
    # revocation (docs/architecture.md, "Contract: revocation")
    "OBDCR_REVOCATION": "require",
    "OBDCR_REVOCATION_CACHE_SECONDS": 300,
    # ours, beyond the contract: bounded state
    "OBDCR_REPLAY_QUOTA_PER_SOFTWARE": 10000,
    # beyond one process (optional extras `redis`, `postgres`)
    "OBDCR_REDIS_URL": None,
    "OBDCR_REDIS_PREFIX": "obdcr:",
    "OBDCR_DATABASE_URL": None,
    # ours, beyond the contract: sandboxes only (docs/architecture.md, "Contract: explain")
    "OBDCR_EXPLAIN_ENDPOINT": False,
    # sandboxes only: a TPP's redirect URI may be https on a loopback address (its own page on
    # the presenter's machine); off, such a URI is refused as DESIGN section 2 says
    "OBDCR_LOOPBACK_REDIRECT_URIS": False,
}


@dataclass(frozen=True)
class RuleSettings:
    """What the protocol core judges requests by: the rules, without the deployment (no
    database or Redis URLs, no file paths). Built from :class:`Settings` as ``settings.rules``."""

    issuer: str
    trusted_directories: Mapping[str, str]
    audiences: tuple[str, ...] = ()
    signing_algs: tuple[str, ...] = ("PS256", "ES256")
    token_endpoint_auth_methods: tuple[str, ...] = KNOWN_AUTH_METHODS
    clock_skew: int = 30
    ssa_max_age: int | None = None
    max_request_bytes: int = 65536
    max_request_lifetime: int = 86400
    #: hosts a JWKS may be fetched from: the trusted directories' and the configured ones
    fetch_allowed_hosts: frozenset[str] = frozenset()
    #: the token endpoint's own URL: a client assertion may name it as its aud
    token_endpoint: str = ""
    max_assertion_lifetime: int = 3600
    access_token_lifetime: int = 3600
    certificate_bound_tokens: bool = True
    #: "require": status unknown refuses (503); "prefer": go on and log; "off": never fetch
    revocation: str = "require"
    revocation_cache_seconds: int = 300
    #: sandboxes only: https redirect URIs on loopback addresses are accepted
    loopback_redirect_uris: bool = False

    @functools.cached_property
    def accepted_audiences(self) -> frozenset[str]:
        """What a registration request's ``aud`` may be: the issuer and OBDCR_AUDIENCES."""
        return frozenset((self.issuer, *self.audiences))

    @functools.cached_property
    def assertion_audiences(self) -> frozenset[str]:
        """What a client assertion's ``aud`` may be (docs/architecture.md, "Contract: tokens,
        published URLs and keys"): the issuer, the token endpoint and OBDCR_AUDIENCES; never
        anything taken from the request."""
        return frozenset((self.issuer, self.token_endpoint, *self.audiences))


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one application."""

    issuer: str
    trusted_directories: Mapping[str, str]
    transport_ca_file: str
    audiences: tuple[str, ...] = ()
    jwks_allowed_hosts: frozenset[str] = frozenset()
    http_verify: bool | str = True
    client_cert_header: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    signing_algs: tuple[str, ...] = ("PS256", "ES256")
    token_endpoint_auth_methods: tuple[str, ...] = KNOWN_AUTH_METHODS
    clock_skew: int = 30
    ssa_max_age: int | None = None
    max_request_bytes: int = 65536
    #: request JWTs whose exp lies further ahead are refused: the jti replay cache must be
    #: able to hold every jti until its exp, so exp cannot be unbounded
    max_request_lifetime: int = 86400
    #: when set, the jti replay cache and the JWKS cache are shared through Redis
    redis_url: str | None = None
    redis_prefix: str = "obdcr:"
    #: when set (and no store is passed), clients live in this SQLAlchemy database
    database_url: str | None = None
    #: hosts a JWKS may be fetched from: the trusted directories' and the configured ones
    fetch_allowed_hosts: frozenset[str] = field(default=frozenset())
    #: OBDCR_TOKEN_ENDPOINT as configured (None: the default, see :attr:`token_endpoint_url`)
    token_endpoint: str | None = None
    mtls_base_url: str | None = None
    certificate_bound_tokens: bool = True
    access_token_lifetime: int = 3600
    max_assertion_lifetime: int = 3600
    http_timeout: float = 10.0
    revocation: str = "require"
    revocation_cache_seconds: int = 300
    #: live jtis one software (or client, for assertions) may hold in the replay cache
    replay_quota_per_software: int = 10000
    #: serve POST /register/explain (sandboxes only: it tells what the wire withholds)
    explain_endpoint: bool = False
    loopback_redirect_uris: bool = False

    @property
    def accepted_audiences(self) -> frozenset[str]:
        return self.rules.accepted_audiences

    @property
    def mtls_base(self) -> str:
        """Where the mTLS endpoints (registration, token) are published: OBDCR_MTLS_BASE_URL,
        else OBDCR_ISSUER; never the request's Host."""
        return (self.mtls_base_url or self.issuer).rstrip("/")

    @property
    def token_endpoint_url(self) -> str:
        return self.token_endpoint or f"{self.mtls_base}/token"

    @functools.cached_property
    def rules(self) -> RuleSettings:
        """The part of the configuration the protocol core needs."""
        return RuleSettings(
            issuer=self.issuer,
            trusted_directories=self.trusted_directories,
            audiences=self.audiences,
            signing_algs=self.signing_algs,
            token_endpoint_auth_methods=self.token_endpoint_auth_methods,
            clock_skew=self.clock_skew,
            ssa_max_age=self.ssa_max_age,
            max_request_bytes=self.max_request_bytes,
            max_request_lifetime=self.max_request_lifetime,
            fetch_allowed_hosts=self.fetch_allowed_hosts,
            token_endpoint=self.token_endpoint_url,
            max_assertion_lifetime=self.max_assertion_lifetime,
            access_token_lifetime=self.access_token_lifetime,
            certificate_bound_tokens=self.certificate_bound_tokens,
            revocation=self.revocation,
            revocation_cache_seconds=self.revocation_cache_seconds,
            loopback_redirect_uris=self.loopback_redirect_uris,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Read and validate the ``OBDCR_*`` keys of a Flask config (or any mapping)."""
        raw = {key: config.get(key, default) for key, default in DEFAULTS.items()}
        missing = [key for key, value in raw.items() if value is REQUIRED]
        if missing:
            raise ConfigurationError(
                f"{', '.join(missing)} must be set in the app config before init_app()"
                " (see the configuration table in the README)."
            )

        issuer = _string(raw, "OBDCR_ISSUER")
        directories = raw["OBDCR_TRUSTED_DIRECTORIES"]
        if not isinstance(directories, Mapping) or not directories:
            _fail("OBDCR_TRUSTED_DIRECTORIES", "must be a non-empty dict of SSA issuer -> JWKS URL")
        for name, url in directories.items():
            if not isinstance(name, str) or not name:
                _fail(
                    "OBDCR_TRUSTED_DIRECTORIES", "keys must be the SSA issuers (non-empty strings)"
                )
            _https_url(url, f"OBDCR_TRUSTED_DIRECTORIES[{name!r}]")

        allowed_hosts = frozenset(
            _host(host, "OBDCR_JWKS_ALLOWED_HOSTS")
            for host in _string_list(raw, "OBDCR_JWKS_ALLOWED_HOSTS")
        )
        directory_hosts = frozenset(
            (urlsplit(url).hostname or "").lower() for url in directories.values()
        )

        verify = raw["OBDCR_HTTP_VERIFY"]
        if verify is not True and not (isinstance(verify, str) and os.path.exists(verify)):
            _fail(
                "OBDCR_HTTP_VERIFY",
                "must be True or the path of an existing CA bundle; TLS verification of JWKS"
                " fetches cannot be switched off",
            )

        ca_file = raw["OBDCR_TRANSPORT_CA_FILE"]
        if not isinstance(ca_file, str | os.PathLike) or not os.path.isfile(ca_file):
            _fail("OBDCR_TRANSPORT_CA_FILE", f"must be the path of a PEM file; got {ca_file!r}")

        header = raw["OBDCR_CLIENT_CERT_HEADER"]
        if header is not None and not (isinstance(header, str) and header.strip()):
            _fail(
                "OBDCR_CLIENT_CERT_HEADER", f"must be None or a header name such as {CERT_HEADERS}"
            )

        proxies = _string_list(raw, "OBDCR_TRUSTED_PROXIES")
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                _fail("OBDCR_TRUSTED_PROXIES", f"{proxy!r} is not an IP address or network")

        algs = _string_list(raw, "OBDCR_SIGNING_ALGS")
        bad = [alg for alg in algs if alg not in KNOWN_SIGNING_ALGS]
        if bad or not algs:
            _fail(
                "OBDCR_SIGNING_ALGS",
                f"must be a non-empty list drawn from {sorted(KNOWN_SIGNING_ALGS)};"
                f" {bad or 'empty'} refused ('none' and HS* are never allowed)",
            )

        methods = _string_list(raw, "OBDCR_TOKEN_ENDPOINT_AUTH_METHODS")
        bad = [method for method in methods if method not in KNOWN_AUTH_METHODS]
        if bad or not methods:
            _fail(
                "OBDCR_TOKEN_ENDPOINT_AUTH_METHODS",
                f"must be a non-empty list drawn from {list(KNOWN_AUTH_METHODS)}; got {methods}",
            )

        skew = _int(raw, "OBDCR_CLOCK_SKEW", minimum=0, maximum=600)
        max_age = raw["OBDCR_SSA_MAX_AGE"]
        if max_age is not None:
            max_age = _int(raw, "OBDCR_SSA_MAX_AGE", minimum=1)
        max_bytes = _int(raw, "OBDCR_MAX_REQUEST_BYTES", minimum=1024, maximum=10 * 1024 * 1024)

        redis_url = raw["OBDCR_REDIS_URL"]
        if redis_url is not None and not (
            isinstance(redis_url, str) and urlsplit(redis_url).scheme in REDIS_SCHEMES
        ):
            _fail("OBDCR_REDIS_URL", f"must be None or a {'/'.join(REDIS_SCHEMES)} URL")
        redis_prefix = _string(raw, "OBDCR_REDIS_PREFIX")
        if len(redis_prefix) > 100:
            _fail("OBDCR_REDIS_PREFIX", "must be at most 100 characters")
        database_url = raw["OBDCR_DATABASE_URL"]
        if database_url is not None and not (
            isinstance(database_url, str) and "://" in database_url
        ):
            _fail("OBDCR_DATABASE_URL", "must be None or an SQLAlchemy URL")

        token_endpoint = raw["OBDCR_TOKEN_ENDPOINT"]
        if token_endpoint is not None:
            _https_url(token_endpoint, "OBDCR_TOKEN_ENDPOINT")
        mtls_base_url = raw["OBDCR_MTLS_BASE_URL"]
        if mtls_base_url is not None:
            _https_url(mtls_base_url, "OBDCR_MTLS_BASE_URL")
            mtls_base_url = mtls_base_url.rstrip("/")
        bound = raw["OBDCR_CERTIFICATE_BOUND_TOKENS"]
        if not isinstance(bound, bool):
            _fail("OBDCR_CERTIFICATE_BOUND_TOKENS", f"must be True or False; got {bound!r}")
        token_lifetime = _int(raw, "OBDCR_ACCESS_TOKEN_LIFETIME", minimum=1, maximum=86400)
        assertion_lifetime = _int(raw, "OBDCR_MAX_ASSERTION_LIFETIME", minimum=60, maximum=86400)
        http_timeout = raw["OBDCR_HTTP_TIMEOUT"]
        if (
            isinstance(http_timeout, bool)
            or not isinstance(http_timeout, int | float)
            or not 0 < http_timeout <= 120
        ):
            _fail(
                "OBDCR_HTTP_TIMEOUT",
                f"must be seconds, more than 0, at most 120; got {http_timeout!r}",
            )

        revocation = raw["OBDCR_REVOCATION"]
        if revocation not in REVOCATION_MODES:
            _fail(
                "OBDCR_REVOCATION", f"must be one of {list(REVOCATION_MODES)}; got {revocation!r}"
            )
        revocation_cache = _int(raw, "OBDCR_REVOCATION_CACHE_SECONDS", minimum=1, maximum=86400)

        replay_quota = _int(raw, "OBDCR_REPLAY_QUOTA_PER_SOFTWARE", minimum=10, maximum=10**7)

        explain_endpoint = raw["OBDCR_EXPLAIN_ENDPOINT"]
        if not isinstance(explain_endpoint, bool):
            _fail(
                "OBDCR_EXPLAIN_ENDPOINT",
                f"must be True or False (True only in a sandbox); got {explain_endpoint!r}",
            )

        loopback_redirect_uris = raw["OBDCR_LOOPBACK_REDIRECT_URIS"]
        if not isinstance(loopback_redirect_uris, bool):
            _fail(
                "OBDCR_LOOPBACK_REDIRECT_URIS",
                f"must be True or False (True only in a sandbox); got {loopback_redirect_uris!r}",
            )

        return cls(
            explain_endpoint=explain_endpoint,
            loopback_redirect_uris=loopback_redirect_uris,
            replay_quota_per_software=replay_quota,
            revocation=revocation,
            revocation_cache_seconds=revocation_cache,
            token_endpoint=token_endpoint,
            mtls_base_url=mtls_base_url,
            certificate_bound_tokens=bound,
            access_token_lifetime=token_lifetime,
            max_assertion_lifetime=assertion_lifetime,
            http_timeout=float(http_timeout),
            issuer=issuer,
            trusted_directories=dict(directories),
            transport_ca_file=os.fspath(ca_file),
            audiences=tuple(_string_list(raw, "OBDCR_AUDIENCES")),
            jwks_allowed_hosts=allowed_hosts,
            http_verify=verify,
            client_cert_header=header,
            trusted_proxies=tuple(proxies),
            signing_algs=tuple(algs),
            token_endpoint_auth_methods=tuple(methods),
            clock_skew=skew,
            ssa_max_age=max_age,
            max_request_bytes=max_bytes,
            fetch_allowed_hosts=allowed_hosts | directory_hosts,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            database_url=database_url,
        )


def _fail(key: str, message: str) -> None:
    raise ConfigurationError(f"{key} {message}.")


def _string(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        _fail(key, f"must be a non-empty string; got {value!r}")
    return value


def _string_list(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw[key]
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        _fail(key, f"must be a list of strings; got {value!r}")
    if not all(isinstance(item, str) and item for item in value):
        _fail(key, f"must be a list of non-empty strings; got {value!r}")
    return list(value)


def _int(raw: Mapping[str, Any], key: str, *, minimum: int, maximum: int | None = None) -> int:
    value = raw[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        _fail(key, f"must be an integer {bounds}; got {value!r}")
    return value


def _host(host: str, key: str) -> str:
    # compared with urlsplit(url).hostname: lowercase, no brackets, no scheme, port or path
    # (an entry like "https://keystore.example/" would silently never match)
    if any(char in host for char in "/@\\") or any(char.isspace() for char in host):
        _fail(key, f"must hold bare host names such as 'keystore.example.com'; got {host!r}")
    return host.lower().removeprefix("[").removesuffix("]")


def _https_url(url: Any, key: str) -> None:
    if not isinstance(url, str):
        _fail(key, f"must be an https URL; got {url!r}")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        _fail(key, f"must be an https URL; got {url!r}")
    if parts.username is not None or parts.password is not None:
        _fail(key, f"must not carry credentials; got {url!r}")
