"""The TPP side of the sandbox: a software's keys and certificates, and what it signs.

A :class:`Software` is what :meth:`SandboxDirectory.register_software
<flask_obdcr.testing.directory.SandboxDirectory.register_software>` returns: the signing key
and certificate, the transport certificate (and its key), the JWKS the Directory publishes for
it and the keys it revoked; it signs client assertions and gives the WSGI environ of its
mutual-TLS certificate.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from jwcrypto import jwk

from .jose import sign_jwt, with_overrides
from .pki import PrivateKey, pem

if TYPE_CHECKING:
    from .directory import SandboxDirectory

__all__ = ["Software", "base62_id", "scopes_for"]

_BASE62 = string.ascii_letters + string.digits


def base62_id(length: int = 22) -> str:
    """An identifier shaped like the Directory's (Base62, 18 or 22 characters)."""
    return "".join(secrets.choice(_BASE62) for _ in range(length))


@dataclass
class Software:
    """A TPP's software as the Directory knows it, with its keys and certificates."""

    directory: SandboxDirectory
    software_id: str
    org_id: str
    org_name: str
    client_name: str
    roles: list[str]
    redirect_uris: list[str]
    signing_key: jwk.JWK
    signing_certificate: x509.Certificate
    transport_private_key: PrivateKey
    transport_certificate: x509.Certificate
    transport_jwk: jwk.JWK
    authority_id: str = "OBGBR"
    registration_id: str = field(default_factory=lambda: "Unknown" + base62_id(18))
    extra_keys: list[jwk.JWK] = field(default_factory=list)
    #: keys the Directory has revoked: in the revoked JWKS, out of the JWKS
    revoked_keys: list[jwk.JWK] = field(default_factory=list)

    @property
    def jwks_url(self) -> str:
        return f"{self.directory.base_url}/{self.org_id}/{self.software_id}.jwks"

    @property
    def revoked_jwks_url(self) -> str:
        return f"{self.directory.base_url}/{self.org_id}/revoked/{self.software_id}.jwks"

    @property
    def org_revoked_jwks_url(self) -> str:
        return f"{self.directory.base_url}/{self.org_id}/revoked/{self.org_id}.jwks"

    def revoked_jwks(self) -> dict[str, Any]:
        """The public JWKS of this software's revoked keys."""
        return {"keys": [json.loads(k.export_public()) for k in self.revoked_keys]}

    @property
    def signing_alg(self) -> str:
        return "ES256" if self.signing_key["kty"] == "EC" else "PS256"

    def jwks(self) -> dict[str, Any]:
        """The public JWKS the Directory publishes for this software (sig and tls keys)."""
        revoked = {key.thumbprint() for key in self.revoked_keys}
        keys = [self.signing_key, self.transport_jwk, *self.extra_keys]
        keys = [key for key in keys if key.thumbprint() not in revoked]
        return {"keys": [json.loads(k.export_public()) for k in keys]}

    def transport_pem(self) -> str:
        return pem(self.transport_certificate)

    def environ(self) -> dict[str, str]:
        """The WSGI environ entry Werkzeug's TLS server sets for this client certificate."""
        return {"SSL_CLIENT_CERT": self.transport_pem()}

    def client_assertion(
        self,
        client_id: str,
        *,
        aud: str,
        key: jwk.JWK | None = None,
        alg: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A private_key_jwt client assertion (RFC 7523) for the token endpoint."""
        now = int(self.directory.clock())
        claims = with_overrides(
            {
                "iss": client_id,
                "sub": client_id,
                "aud": aud,
                "jti": str(uuid.uuid4()),
                "iat": now,
                "exp": now + 300,
            },
            overrides,
        )
        return sign_jwt(
            claims, key or self.signing_key, alg=alg or self.signing_alg, headers=headers
        )

    @property
    def subject_dn(self) -> str:
        return self.transport_certificate.subject.rfc4514_string(
            {x509.ObjectIdentifier("2.5.4.97"): "organizationIdentifier"}
        )

    @property
    def psd_identifier(self) -> str:
        return f"PSDGB-{self.authority_id[:-3]}-{self.registration_id}"


def scopes_for(roles: Iterable[str]) -> list[str]:
    from ..policies import ROLE_SCOPES

    roles = set(roles)
    return [scope for scope, role in ROLE_SCOPES.items() if role in roles]
