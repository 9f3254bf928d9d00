"""What the console's "Settings" page shows: the validator's configuration, read-only.

Built from ``dcr.settings`` (and ``settings.rules``, what the core judges by), the published
URLs and the store's kind; never from the store's contents, so the page shows while the store
is down. Nothing secret: a URL's user name and password (a database or Redis URL) are replaced
by ``***``, as are query parameters that may hold one (``password=``, ``sslkey=``...); no key
material is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..policies import ROLE_SCOPES
from ..state import DCRState

__all__ = ["redact_url", "settings_sections"]

REDACTED = "***"
#: query parameters whose value may be a secret (or the path of a private key)
SECRET_PARAMETERS = ("pass", "secret", "token", "key", "auth", "credential")
#: a user name and password as SQLAlchemy's URL grammar reads them: the password runs to the
#: first "@", "/", "?" and "#" included, where urlsplit ends the authority at the first of those
_LOOSE_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://)[^:/@]*:[^@]*@")


def redact_url(url: Any) -> str:
    """``url`` without its user name, password and secret-looking query values:
    ``postgresql://app:hunter2@db:5432/obdcr`` -> ``postgresql://***@db:5432/obdcr``."""
    text = str(url)
    loose = _LOOSE_USERINFO.match(text)
    if loose is not None:
        text = f"{loose[1]}{REDACTED}@{text[loose.end() :]}"
    try:
        parts = urlsplit(text)
    except ValueError:
        return REDACTED  # not a URL we can take apart: show nothing of it
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [
                (name, REDACTED if any(word in name.lower() for word in SECRET_PARAMETERS) else v)
                for name, v in pairs
            ],
            safe="*/",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _yes(value: bool) -> str:
    return "on" if value else "off"


def _seconds(value: float | int | None, none: str = "no limit") -> str:
    if value is None:
        return none
    number = int(value) if float(value).is_integer() else value
    return f"{number} s"


def _list(values: Iterable[Any], empty: str = "none") -> str:
    items = [str(value) for value in values]
    return ", ".join(items) if items else empty


def _role_scopes(state: DCRState) -> Mapping[str, str]:
    # the pipeline's own scope policy when it has one (a bank may give it another table)
    for item in state.registrar.pipeline:
        table = getattr(item, "role_scopes", None)
        if item.name == "scope" and isinstance(table, Mapping):
            return table
    return ROLE_SCOPES


def store_kind(store: Any) -> list[dict[str, Any]]:
    """The store's class, and where it keeps clients (a URL or path) when it says so;
    attributes only: the store is not asked anything, so a store that is down still shows."""
    kind = type(store)
    rows: list[dict[str, Any]] = [{"key": "Client store", "text": kind.__name__}]
    engine = getattr(store, "engine", None)
    url = getattr(engine, "url", None)
    if url is not None:
        rows.append({"key": "Client store database", "text": redact_url(url)})
    path = getattr(store, "path", None)
    if isinstance(path, str):
        rows.append({"key": "Client store file", "text": path})
    return rows


def settings_sections(state: DCRState) -> list[dict[str, Any]]:
    """The page's sections, each ``{"title", "rows": [{"key", "text", "list"?}]}``."""
    settings, rules, urls = state.settings, state.settings.rules, state.urls
    published = [
        {"key": "Issuer", "text": settings.issuer},
        {"key": "Registration endpoint", "text": urls.registration_endpoint},
        {"key": "Token endpoint", "text": urls.token_endpoint},
    ]
    aliases = urls.mtls_endpoint_aliases().get("mtls_endpoint_aliases")
    if aliases:
        published += [
            {"key": f"mTLS alias: {name}", "text": value} for name, value in aliases.items()
        ]
    else:
        published.append({"key": "mTLS endpoint aliases", "text": "none (no OBDCR_MTLS_BASE_URL)"})
    published.append(
        {"key": "Explain endpoint (/register/explain)", "text": _yes(settings.explain_endpoint)}
    )

    directories = [
        {"key": issuer, "text": redact_url(jwks_url)}
        for issuer, jwks_url in sorted(settings.trusted_directories.items())
    ]
    keys = [
        {
            "key": "Hosts a software JWKS may be fetched from (OBDCR_JWKS_ALLOWED_HOSTS)",
            "text": _list(sorted(settings.jwks_allowed_hosts)),
        },
        {
            "key": "Every host fetched from (with the trusted directories')",
            "text": _list(sorted(rules.fetch_allowed_hosts)),
        },
        {"key": "Fetch timeout, whole fetch", "text": _seconds(settings.http_timeout)},
        {
            "key": "TLS verification of fetches",
            "text": "system CA store" if settings.http_verify is True else "CA bundle file",
        },
    ]
    judging = [
        {
            "key": "Signing algorithms (SSA, request, client assertions)",
            "text": _list(rules.signing_algs),
        },
        {
            "key": "Accepted audiences (request aud)",
            "text": _list(sorted(rules.accepted_audiences)),
        },
        {
            "key": "Accepted audiences (client assertion aud)",
            "text": _list(sorted(rules.assertion_audiences)),
        },
        {"key": "Token endpoint auth methods", "text": _list(rules.token_endpoint_auth_methods)},
        {
            "key": "Scopes by SSA role",
            "text": _list(
                ["openid: any role"]
                + [f"{scope}: {role}" for scope, role in _role_scopes(state).items()]
            ),
        },
        {"key": "Clock skew", "text": _seconds(rules.clock_skew)},
        {"key": "SSA maximum age", "text": _seconds(rules.ssa_max_age)},
        {"key": "Request JWT maximum lifetime", "text": _seconds(rules.max_request_lifetime)},
        {"key": "Largest request body", "text": f"{rules.max_request_bytes} bytes"},
        {
            "key": "Replay quota (live jtis per software)",
            "text": str(settings.replay_quota_per_software),
        },
    ]
    tokens = [
        {"key": "Certificate-bound tokens", "text": _yes(rules.certificate_bound_tokens)},
        {"key": "Access token lifetime", "text": _seconds(rules.access_token_lifetime)},
        {"key": "Client assertion max. lifetime", "text": _seconds(rules.max_assertion_lifetime)},
    ]
    certificates = [
        {"key": "Revocation mode", "text": rules.revocation},
        {"key": "Revocation cache", "text": _seconds(rules.revocation_cache_seconds)},
        {
            "key": "Client certificate from",
            "text": (
                f"the {settings.client_cert_header} header of a trusted proxy"
                if settings.client_cert_header
                else "the TLS connection (WSGI environ)"
            ),
        },
        {"key": "Trusted proxies", "text": _list(settings.trusted_proxies)},
    ]
    storage = store_kind(state.store)
    if settings.database_url:
        storage.append({"key": "OBDCR_DATABASE_URL", "text": redact_url(settings.database_url)})
    storage.append(
        {
            "key": "Shared caches (OBDCR_REDIS_URL)",
            "text": redact_url(settings.redis_url) if settings.redis_url else "none: this process",
        }
    )
    return [
        {"title": "Published URLs", "rows": published},
        {"title": "Trusted directories and their JWKS URLs", "rows": directories},
        {"title": "Key fetching", "rows": keys},
        {"title": "What a registration is judged by", "rows": judging},
        {"title": "Tokens", "rows": tokens},
        {"title": "Transport certificates and revocation", "rows": certificates},
        {"title": "Storage", "rows": storage},
    ]
