"""JOSE helpers of the sandbox: JWKs from keys and certificates, compact JWS signing.

``sign_jwt(claims, key, alg=...)`` signs exactly what it is given (headers included), so tests
can forge what a real signer would never produce; a claim or header given as :data:`REMOVE`
is left out.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jws

from .pki import PrivateKey

__all__ = ["REMOVE", "jwk_from_certificate", "jwk_from_key", "sign_jwt", "with_overrides"]

#: pass as a claim override to remove the claim
REMOVE: Any = object()


def jwk_from_key(key: PrivateKey, *, kid: str, use: str, certificate: x509.Certificate) -> jwk.JWK:
    """A private JWK with the certificate chain in ``x5c`` (public exports keep it)."""
    pem_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    private_jwk = jwk.JWK.from_pem(pem_bytes)
    params = json.loads(private_jwk.export(private_key=True))
    params.update(
        kid=kid,
        use=use,
        x5c=[base64.b64encode(der).decode()],
        **{"x5t#S256": base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")},
    )
    return jwk.JWK(**params)


def jwk_from_certificate(
    certificate: x509.Certificate,
    *,
    kid: str,
    use: str,
    chain: Iterable[x509.Certificate] = (),
) -> jwk.JWK:
    """The public JWK of a certificate's key, as the Directory publishes it: ``kid``, ``use``,
    ``x5c`` (the certificate, then ``chain``) and ``x5t#S256``."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    public_pem = certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    params = json.loads(jwk.JWK.from_pem(public_pem).export_public())
    params.update(
        kid=kid,
        use=use,
        x5c=[
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in (certificate, *chain)
        ],
        **{"x5t#S256": base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")},
    )
    return jwk.JWK(**params)


def sign_jwt(
    claims: Mapping[str, Any], key: jwk.JWK, *, alg: str, headers: Mapping | None = None
) -> str:
    header = {"alg": alg, "typ": "JWT"}
    if key.get("kid"):
        header["kid"] = key["kid"]
    header.update(headers or {})
    header = {k: v for k, v in header.items() if v is not REMOVE}
    token = jws.JWS(json.dumps(dict(claims), separators=(",", ":")).encode())
    token.allowed_algs = [alg]
    token.add_signature(key, alg=alg, protected=json.dumps(header))
    return token.serialize(compact=True)


def with_overrides(claims: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``claims`` updated with ``overrides``, without those given as :data:`REMOVE`."""
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not REMOVE}
