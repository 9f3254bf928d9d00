"""The URLs the extension publishes, built from configuration only.

Discovery, ``registration_endpoint``, ``token_endpoint`` and ``registration_client_uri`` are
read by TPPs and kept by shared caches, so they never follow the request's ``Host``,
``X-Forwarded-Host`` or scheme (a forged Host would otherwise poison a cached discovery
document). As docs/architecture.md, "Contract: tokens, published URLs and keys", says: the
mTLS endpoints live under ``OBDCR_MTLS_BASE_URL`` when it is set, else under ``OBDCR_ISSUER``,
plus the extension's ``url_prefix``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .config import Settings

__all__ = ["PublishedURLs"]


@dataclass(frozen=True)
class PublishedURLs:
    issuer: str
    #: where the mTLS endpoints live (OBDCR_MTLS_BASE_URL, else the issuer)
    mtls_base: str
    token_endpoint: str
    registration_endpoint: str
    #: True when the mTLS endpoints have a base of their own (RFC 8705 section 5 aliases)
    separate_mtls_host: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, url_prefix: str = "") -> PublishedURLs:
        prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
        return cls(
            issuer=settings.issuer.rstrip("/"),
            mtls_base=settings.mtls_base,
            token_endpoint=settings.token_endpoint_url,
            registration_endpoint=f"{settings.mtls_base}{prefix}/register",
            separate_mtls_host=settings.mtls_base_url is not None,
        )

    def registration_client_uri(self, client_id: str) -> str:
        """RFC 7592: where a client reads, updates and deletes its registration."""
        return f"{self.registration_endpoint}/{quote(client_id, safe='')}"

    def under_mtls_base(self, path: str) -> str:
        """An mTLS resource of the host app (e.g. the accounts API) as published."""
        return f"{self.mtls_base}/{path.lstrip('/')}"

    def mtls_endpoint_aliases(self) -> dict[str, Any]:
        """RFC 8705 ``mtls_endpoint_aliases``, or ``{}`` when nothing is on a separate host."""
        if not self.separate_mtls_host:
            return {}
        return {
            "mtls_endpoint_aliases": {
                "token_endpoint": self.token_endpoint,
                "registration_endpoint": self.registration_endpoint,
            }
        }
