"""The Directory side of the sandbox: PKI, software statements, JWKS, signed requests.

Everything a bank's tests need to exercise their registration endpoint the way a TPP and
the real Directory would, offline::

    directory = SandboxDirectory()
    software = directory.register_software(roles=["AISP"])
    body = directory.registration_request(software, aud="https://as.bank.example")
    environ = software.environ()        # the mutual-TLS certificate, as Werkzeug gives it

The TPP's side is :mod:`~flask_obdcr.testing.software`, the JOSE helpers
:mod:`~flask_obdcr.testing.jose`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk

from ..jwks import StaticFetcher
from .jose import REMOVE, jwk_from_certificate, jwk_from_key, sign_jwt, with_overrides
from .pki import (
    CertificateAuthority,
    KeyType,
    Usage,
    eidas_subject,
    generate_key,
    ob_subject,
    pem,
)
from .software import Software, base62_id, scopes_for

__all__ = ["DEFAULT_HOST", "REMOVE", "SandboxDirectory", "jwk_from_certificate"]

DEFAULT_HOST = "keystore.sandbox.openbanking.test"


class SandboxDirectory:
    """An Open Banking Directory for tests and demos (nothing leaves the process)."""

    def __init__(
        self,
        *,
        issuer: str = "OpenBanking Ltd",
        base_url: str = f"https://{DEFAULT_HOST}",
        clock: Callable[[], float] = time.time,
        ssa_alg: str = "PS256",
    ) -> None:
        self.issuer = issuer
        self.base_url = base_url
        self.clock = clock
        self.ssa_alg = ssa_alg
        self.root_ca = CertificateAuthority.root("OpenBanking Root CA")
        self.issuing_ca = self.root_ca.intermediate("OpenBanking Issuing CA")
        self.ssa_key = self._directory_key(ssa_alg)
        self.software: dict[str, Software] = {}
        self._fetcher: StaticFetcher | None = None

    # -- persistence: the PKI and the SSA signing key (not the registered software) ---------

    #: file names :meth:`save` writes in its folder
    SAVED_FILES = (
        "root-ca.pem",
        "root-ca.key",
        "issuing-ca.pem",
        "issuing-ca.key",
        "ssa-signing.jwk",
        "directory.json",
    )

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the PKI (root and issuing CA), the SSA signing key and the settings to
        ``folder`` so that :meth:`load` makes the same Directory in another process. Private
        keys are written unencrypted, readable by the owner only. Registered software (and
        its private keys) is not saved."""
        os.makedirs(folder, exist_ok=True)
        files = {
            "root-ca.pem": pem(self.root_ca.certificate),
            "root-ca.key": self.root_ca.to_pem()[1],
            "issuing-ca.pem": pem(self.issuing_ca.certificate),
            "issuing-ca.key": self.issuing_ca.to_pem()[1],
            "ssa-signing.jwk": self.ssa_key.export_private(),
            "directory.json": json.dumps(
                {"issuer": self.issuer, "ssa_alg": self.ssa_alg, "base_url": self.base_url},
                indent=2,
            ),
        }
        for name, text in files.items():
            path = os.path.join(folder, name)
            secret = name.endswith((".key", ".jwk"))
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            fd = os.open(path, flags, 0o600 if secret else 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        *,
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SandboxDirectory:
        """The Directory :meth:`save` wrote to ``folder`` (no key is generated)."""

        def read(name: str) -> str:
            with open(os.path.join(folder, name)) as handle:
                return handle.read()

        settings = json.loads(read("directory.json"))
        directory = cls.__new__(cls)
        directory.issuer = settings["issuer"]
        directory.base_url = base_url or settings["base_url"]
        directory.clock = clock
        directory.ssa_alg = settings["ssa_alg"]
        directory.root_ca = CertificateAuthority.from_pem(read("root-ca.pem"), read("root-ca.key"))
        directory.issuing_ca = CertificateAuthority.from_pem(
            read("issuing-ca.pem"), read("issuing-ca.key")
        )
        directory.ssa_key = jwk.JWK.from_json(read("ssa-signing.jwk"))
        directory.software = {}
        directory._fetcher = None
        return directory

    def _directory_key(self, alg: str) -> jwk.JWK:
        key = generate_key("EC" if alg.startswith("ES") else "RSA")
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "OB SSA Signing")])
        certificate = self.issuing_ca.issue(subject, key.public_key(), usage="signing")
        # the Directory's kid is the x5t of its signing certificate
        der = certificate.public_bytes(serialization.Encoding.DER)
        kid = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")  # noqa: S324
        return jwk_from_key(key, kid=kid, use="sig", certificate=certificate)

    # -- the Directory's published documents ---------------------------------------------

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.base_url).hostname or ""

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/openbanking.jwks"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [json.loads(self.ssa_key.export_public())]}

    def documents(self) -> dict[str, Any]:
        """Every JWKS the Directory publishes, by URL."""
        docs: dict[str, Any] = {self.jwks_url: self.jwks()}
        for software in self.software.values():
            docs[software.jwks_url] = software.jwks()
            docs[software.revoked_jwks_url] = software.revoked_jwks()
            docs[software.org_revoked_jwks_url] = {"keys": []}
        return docs

    @property
    def fetcher(self) -> StaticFetcher:
        """An in-process JWKS fetcher serving :meth:`documents` (records what it is asked)."""
        if self._fetcher is None:
            self._fetcher = StaticFetcher(self.documents())
        else:
            self._fetcher.documents.update(self.documents())
        return self._fetcher

    def transport_ca_pem(self) -> str:
        """The trust anchors a bank configures for transport certificates."""
        return pem(self.issuing_ca.certificate) + pem(self.root_ca.certificate)

    def write_transport_ca(self, path: str | os.PathLike[str]) -> str:
        with open(path, "w") as handle:
            handle.write(self.transport_ca_pem())
        return os.fspath(path)

    def app_config(self, ca_path: str | os.PathLike[str], *, issuer: str, **extra: Any) -> dict:
        """``OBDCR_*`` settings for a bank that trusts this Directory."""
        config = {
            "OBDCR_ISSUER": issuer,
            "OBDCR_TRUSTED_DIRECTORIES": {self.issuer: self.jwks_url},
            "OBDCR_JWKS_ALLOWED_HOSTS": [self.host],
            "OBDCR_TRANSPORT_CA_FILE": self.write_transport_ca(ca_path),
        }
        config.update(extra)
        return config

    # -- onboarding ---------------------------------------------------------------------

    def register_software(
        self,
        *,
        org_id: str | None = None,
        software_id: str | None = None,
        org_name: str = "Sandbox TPP Ltd",
        client_name: str = "Sandbox TPP App",
        roles: Iterable[str] = ("AISP", "PISP"),
        redirect_uris: Iterable[str] = ("https://tpp.example.com/cb",),
        key_type: KeyType = "RSA",
        transport_key_type: KeyType | None = None,
        subject: str = "ob",
    ) -> Software:
        """Onboard a piece of software: signing and transport keys and certificates.

        ``subject`` is ``"ob"`` (``CN=<software_id>, OU=<org_id>, O=OpenBanking, C=GB``) or
        ``"eidas"`` (an organizationIdentifier derived from the competent authority claims).
        """
        org_id = org_id or base62_id(18)
        software_id = software_id or base62_id(22)
        name = ob_subject(software_id, org_id)
        signing_private = generate_key(key_type)
        signing_certificate = self.issuing_ca.issue(
            name, signing_private.public_key(), usage="signing"
        )
        software = Software(
            directory=self,
            software_id=software_id,
            org_id=org_id,
            org_name=org_name,
            client_name=client_name,
            roles=list(roles),
            redirect_uris=list(redirect_uris),
            signing_key=jwk_from_key(
                signing_private, kid=base62_id(27), use="sig", certificate=signing_certificate
            ),
            signing_certificate=signing_certificate,
            transport_private_key=None,  # type: ignore[arg-type]
            transport_certificate=None,  # type: ignore[arg-type]
            transport_jwk=None,  # type: ignore[arg-type]
        )
        self.issue_transport_certificate(
            software, key_type=transport_key_type or key_type, subject=subject
        )
        self.software[software_id] = software
        if self._fetcher is not None:
            self._fetcher.documents.update(self.documents())
        return software

    def issue_transport_certificate(
        self, software: Software, *, key_type: KeyType = "RSA", subject: str = "ob", **kw: Any
    ) -> x509.Certificate:
        """(Re)issue the software's transport certificate and publish it in its JWKS."""
        key = generate_key(key_type)
        if subject == "eidas":
            name = eidas_subject(software.org_id, software.org_name, software.psd_identifier)
        else:
            name = ob_subject(software.software_id, software.org_id)
        certificate = self.issuing_ca.issue(name, key.public_key(), usage="transport", **kw)
        software.transport_private_key = key
        software.transport_certificate = certificate
        software.transport_jwk = jwk_from_key(
            key, kid=base62_id(27), use="tls", certificate=certificate
        )
        if self._fetcher is not None:
            self._fetcher.documents.update(self.documents())
        return certificate

    def revoke_key(self, software: Software, key: jwk.JWK) -> None:
        """Move one of the software's keys (signing or transport) to its revoked JWKS, as the
        Directory does when a TPP revokes a certificate."""
        software.revoked_keys.append(key)
        if self._fetcher is not None:
            self._fetcher.documents.update(self.documents())

    def sign_csr(self, csr: x509.CertificateSigningRequest, *, usage: Usage) -> x509.Certificate:
        """Issue a certificate for an uploaded CSR (as the Directory UI does)."""
        if not csr.is_signature_valid:
            raise ValueError("the CSR signature is invalid")
        return self.issuing_ca.issue(csr.subject, csr.public_key(), usage=usage)

    # -- software statements and registration requests ----------------------------------

    def ssa_claims(self, software: Software, **overrides: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "iat": int(self.clock()),
            "jti": str(uuid.uuid4()),
            "software_environment": "sandbox",
            "software_mode": "Test",
            "software_id": software.software_id,
            "software_client_id": software.software_id,
            "software_client_name": software.client_name,
            "software_client_description": f"{software.client_name} (sandbox)",
            "software_version": "1.0",
            "software_client_uri": "https://tpp.example.com",
            "software_redirect_uris": list(software.redirect_uris),
            "software_roles": list(software.roles),
            "organisation_competent_authority_claims": {
                "authority_id": software.authority_id,
                "registration_id": software.registration_id,
                "status": "Active",
                "authorisations": [{"member_state": "GB", "roles": list(software.roles)}],
            },
            "software_logo_uri": "https://tpp.example.com/logo.png",
            "org_status": "Active",
            "org_id": software.org_id,
            "org_name": software.org_name,
            "org_contacts": [
                {
                    "name": "Technical",
                    "email": "tech@tpp.example.com",
                    "phone": "+441234567890",
                    "type": "Technical",
                }
            ],
            "org_jwks_endpoint": f"{self.base_url}/{software.org_id}/{software.org_id}.jwks",
            "org_jwks_revoked_endpoint": (
                f"{self.base_url}/{software.org_id}/revoked/{software.org_id}.jwks"
            ),
            "software_jwks_endpoint": software.jwks_url,
            "software_jwks_revoked_endpoint": software.revoked_jwks_url,
            "software_policy_uri": "https://tpp.example.com/policy",
            "software_tos_uri": "https://tpp.example.com/tos",
        }
        return with_overrides(claims, overrides)

    def ssa(
        self,
        software: Software,
        *,
        key: jwk.JWK | None = None,
        alg: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A software statement signed by the Directory (claims may be overridden)."""
        return sign_jwt(
            self.ssa_claims(software, **overrides),
            key or self.ssa_key,
            alg=alg or self.ssa_alg,
            headers=headers,
        )

    def registration_claims(
        self,
        software: Software,
        *,
        aud: str,
        ssa: str | None = None,
        token_endpoint_auth_method: str = "private_key_jwt",
        **overrides: Any,
    ) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": software.software_id,
            "iat": now,
            "exp": now + 300,
            "aud": aud,
            "jti": str(uuid.uuid4()),
            "redirect_uris": list(software.redirect_uris),
            "token_endpoint_auth_method": token_endpoint_auth_method,
            "grant_types": ["authorization_code", "client_credentials", "refresh_token"],
            "response_types": ["code id_token"],
            "software_id": software.software_id,
            "scope": " ".join(["openid", *scopes_for(software.roles)]),
            "software_statement": ssa if ssa is not None else self.ssa(software),
            "application_type": "web",
            "id_token_signed_response_alg": software.signing_alg,
            "request_object_signing_alg": software.signing_alg,
        }
        if token_endpoint_auth_method == "private_key_jwt":
            claims["token_endpoint_auth_signing_alg"] = software.signing_alg
        if token_endpoint_auth_method == "tls_client_auth":
            claims["tls_client_auth_subject_dn"] = software.subject_dn
        return with_overrides(claims, overrides)

    def registration_request(
        self,
        software: Software,
        *,
        aud: str,
        key: jwk.JWK | None = None,
        alg: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A registration request JWT signed with the software's signing key."""
        return sign_jwt(
            self.registration_claims(software, aud=aud, **claims),
            key or software.signing_key,
            alg=alg or software.signing_alg,
            headers=headers,
        )
