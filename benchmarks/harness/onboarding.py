"""The sandbox Directory service, a TPP's software onboarded through its API, and clients
registered at the servers under test."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ObjectIdentifier

from . import signing
from .common import CERT_HEADER, ISSUER, PYTHON, REDIRECT_URIS, ROLES, ROOT
from .processes import Processes, ready_text, wait_until

#: the token endpoint auth methods the token scenarios compare (RFC 8705, RFC 7523, RFC 6749)
AUTH_METHODS = ("private_key_jwt", "tls_client_auth", "client_secret_basic")


@dataclass
class Onboarded:
    """A TPP's software as the sandbox Directory service issued it."""

    directory_url: str
    ca_file: str
    org_id: str
    software_id: str
    signing_kid: str
    signing_key_pem: str
    transport_pem: str
    ssa: str
    signing_jwk_public: dict[str, Any]

    @property
    def subject_dn(self) -> str:
        """The transport certificate's subject as RFC 4514 writes it (what a
        ``tls_client_auth`` client registers as ``tls_client_auth_subject_dn``)."""
        certificate = x509.load_pem_x509_certificate(self.transport_pem.encode())
        return certificate.subject.rfc4514_string(
            {ObjectIdentifier("2.5.4.97"): "organizationIdentifier"}
        )

    @property
    def transport_thumbprint(self) -> str:
        """RFC 8705's ``x5t#S256`` of the transport certificate: what a bound token's ``cnf``
        holds."""
        certificate = x509.load_pem_x509_certificate(self.transport_pem.encode())
        digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    @property
    def escaped_transport_pem(self) -> str:
        # nginx's $ssl_client_escaped_cert: the PEM, URL-escaped
        return quote(self.transport_pem, safe="")

    def http(self) -> requests.Session:
        """A session trusting the Directory's CA (and nothing from the environment)."""
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise win over verify=
        session.verify = self.ca_file
        return session

    def directory_jwks(self) -> dict[str, Any]:
        """The Directory's published signing keys (what verifies its software statements)."""
        response = self.http().get(self.directory_url + "/openbanking.jwks", timeout=30)
        response.raise_for_status()
        return response.json()


def start_directory(procs: Processes, work: Path) -> tuple[str, str]:
    """The example sandbox Directory service (HTTPS, loopback); returns (url, CA bundle)."""
    url_file = work / "directory.url"
    log = work / "directory.log"
    process = procs.start(
        "directory",
        [
            PYTHON,
            "-m",
            "example_app.directory",
            "serve",
            "--state",
            str(work / "directory"),
            "--port",
            "0",
            "--url-file",
            str(url_file),
            "--exit-with-parent",
        ],
        log=log,
        cwd=ROOT,
    )
    url = wait_until(
        lambda: ready_text(url_file),
        process,
        "the Directory",
        log=log,
    )
    return url, str(work / "directory" / "ca-bundle.pem")


def _csr(key: rsa.RSAPrivateKey, software_id: str, org_id: str) -> bytes:
    from flask_obdcr.testing.pki import ob_subject

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(ob_subject(software_id, org_id))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def onboard(directory_url: str, ca_file: str) -> Onboarded:
    """Onboard an organisation and a piece of software through the Directory's API: transport
    and signing certificates from CSRs (RSA 2048), and a software statement."""
    from jwcrypto import jwk

    http = requests.Session()
    http.trust_env = False
    http.verify = ca_file

    def call(method: str, path: str, **kw: Any) -> requests.Response:
        response = http.request(method, directory_url + path, timeout=30, **kw)
        if response.status_code >= 300:
            raise SystemExit(f"Directory {method} {path}: {response.status_code} {response.text}")
        return response

    org = call("POST", "/api/organisations", json={"org_name": "Bench TPP Ltd"}).json()
    software = call(
        "POST",
        f"/api/organisations/{org['org_id']}/software",
        json={"client_name": "Bench TPP App", "roles": ROLES, "redirect_uris": REDIRECT_URIS},
    ).json()
    software_id = software["software_id"]
    transport_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    base = f"/api/software/{software_id}/certificates"
    transport = call(
        "POST", f"{base}/transport", data=_csr(transport_key, software_id, org["org_id"])
    ).json()
    signed = call("POST", f"{base}/signing", data=_csr(signing_key, software_id, org["org_id"]))
    kid = signed.json()["kid"]
    transport_pem = call("GET", f"{base}/{transport['kid']}.pem").text
    ssa = call("POST", f"/api/software/{software_id}/ssa").text.strip()
    signing_pem = signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = json.loads(jwk.JWK.from_pem(signing_pem.encode()).export_public())
    public.update(kid=kid, use="sig", alg="PS256")
    return Onboarded(
        directory_url=directory_url,
        ca_file=ca_file,
        org_id=org["org_id"],
        software_id=software_id,
        signing_kid=kid,
        signing_key_pem=signing_pem,
        transport_pem=transport_pem,
        ssa=ssa,
        signing_jwk_public=public,
    )


def auth_metadata(tpp: Onboarded, method: str) -> dict[str, Any]:
    """The client metadata of ``method`` (one of :data:`AUTH_METHODS`); None drops a claim."""
    if method not in AUTH_METHODS:
        raise ValueError(f"unknown auth method {method!r}: one of {', '.join(AUTH_METHODS)}")
    if method == "private_key_jwt":
        return {"token_endpoint_auth_method": method, "token_endpoint_auth_signing_alg": "PS256"}
    metadata: dict[str, Any] = {
        "token_endpoint_auth_method": method,
        "token_endpoint_auth_signing_alg": None,
    }
    if method == "tls_client_auth":
        metadata["tls_client_auth_subject_dn"] = tpp.subject_dn
    return metadata


def _apply(claims: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    for name, value in metadata.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def register_at_bank(
    url: str, tpp: Onboarded, auth_method: str = "private_key_jwt", **metadata: Any
) -> dict[str, Any]:
    """One client registered at the bank through ``POST /register`` with ``auth_method``
    (``metadata`` overrides the request's claims further; None drops one); its registration
    response (with ``client_secret`` for a secret-based method)."""
    signing.init_signer(tpp.signing_key_pem, tpp.signing_kid)
    claims = signing.registration_claims(tpp, aud=ISSUER, now=int(time.time()), lifetime=300)
    _apply(claims, {**auth_metadata(tpp, auth_method), **metadata})
    response = requests.post(
        url + "/register",
        data=signing.sign_ps256(claims),
        headers={"Content-Type": "application/jwt", CERT_HEADER: tpp.escaped_transport_pem},
        timeout=30,
    )
    if response.status_code != 201:
        raise SystemExit(f"registration at the bank: {response.status_code} {response.text}")
    return response.json()


def register_at_node(
    url: str, tpp: Onboarded, auth_method: str = "private_key_jwt", **metadata: Any
) -> dict[str, Any]:
    """One client_credentials client registered at node-oidc-provider (``POST /reg``) with
    ``auth_method``, its tokens bound to the transport certificate (RFC 8705
    ``tls_client_certificate_bound_access_tokens``, as the bank binds every token)."""
    body = signing.node_registration_metadata(tpp, 0)
    body.update(grant_types=["client_credentials"], response_types=[], scope="accounts")
    body.pop("redirect_uris", None)
    body["tls_client_certificate_bound_access_tokens"] = True
    _apply(body, {**auth_metadata(tpp, auth_method), **metadata})
    response = requests.post(url + "/reg", json=body, timeout=30)
    if response.status_code != 201:
        raise SystemExit(f"registration at oidc-provider: {response.status_code} {response.text}")
    return response.json()
