"""The sandbox Open Banking Directory as a service: ``python -m example_app.directory``.

What the real Directory's front end and APIs let a TPP's technical contact do, on loopback:

* onboard an organisation and a piece of software (the "Add new statement" form: name, roles,
  redirect URIs), over the HTTP API or with ``python -m example_app.directory onboard``;
* upload the CSRs of a transport and a signing key; the Directory's issuing CA signs them with
  the OB subject ``CN=<software_id>, OU=<org_id>, O=OpenBanking, C=GB`` and publishes the keys
  (with ``x5c``, ``use`` ``tls``/``sig``) at ``/<org_id>/<software_id>.jwks``; revoked keys
  move to ``/<org_id>/revoked/<software_id>.jwks``;
* download the issued certificates as PEM;
* generate software statements (SSAs): JWTs signed PS256 by the Directory, ``iss``
  ``"OpenBanking Ltd"``, verifiable with ``/openbanking.jwks``.

HTTP API (JSON unless noted; no authentication: it is a sandbox, bound to loopback)::

    GET    /                                          what this service is, its URLs
    GET    /ca.pem                                    the sandbox CA bundle (issuing + root)
    GET    /openbanking.jwks                          the Directory's SSA signing keys
    POST   /api/organisations                         {"org_name": ...} -> 201 organisation
    GET    /api/organisations/<org_id>
    POST   /api/organisations/<org_id>/software       {"client_name", "roles", "redirect_uris",
                                                       ...} -> 201 software
    GET    /api/software/<software_id>                the software, its certificates
    POST   /api/software/<software_id>/certificates/<transport|signing>
                                                      body: a PEM (or DER) CSR -> 201 certificate
    GET    /api/software/<software_id>/certificates/<kid>.pem   the certificate (PEM)
    DELETE /api/software/<software_id>/certificates/<kid>       revoke -> 200 certificate
    POST   /api/software/<software_id>/ssa            -> 201 the SSA (application/jwt)
    GET    /<org_id>/<software_id>.jwks               the software's published keys
    GET    /<org_id>/revoked/<software_id>.jwks       its revoked keys
    GET    /<org_id>/<org_id>.jwks, /<org_id>/revoked/<org_id>.jwks   (empty key sets)

State (PKI, SSA key, registry, TLS certificate) lives in one folder, ``--state``; the same
folder serves again after a restart.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from flask_obdcr.certificates import dn_matches
from flask_obdcr.testing import SandboxDirectory, Software, base62_id
from flask_obdcr.testing.directory import jwk_from_certificate
from flask_obdcr.testing.pki import Usage, generate_key, key_pem, ob_subject, pem

from ._util import read_json, write_file, write_json

__all__ = ["DirectoryError", "DirectoryState", "create_directory_app", "cli"]

ROLES = ("AISP", "PISP", "CBPII", "ASPSP")
#: certificate type -> (JWK ``use``, the issuing CA's certificate profile)
#: certificate type -> (JWK "use", issuing profile)
CERTIFICATE_TYPES: dict[str, tuple[str, Usage]] = {
    "transport": ("tls", "transport"),
    "signing": ("sig", "signing"),
}
JWKS_MAX_AGE = 60


class DirectoryError(Exception):
    """An API error: HTTP status, a short code and a description for the caller."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _now() -> int:
    return int(time.time())


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class DirectoryState:
    """The Directory's PKI and registry, kept in ``folder``:

    ``pki/`` (root and issuing CA, SSA signing key: :meth:`SandboxDirectory.save`),
    ``ca-bundle.pem`` (issuing + root: what banks and TPPs trust), ``registry.json``
    (organisations, software, certificates), ``tls/`` (the service's HTTPS certificate).
    Thread-safe: the service is threaded.
    """

    def __init__(self, folder: Path, sandbox: SandboxDirectory, registry: dict[str, Any]):
        self.folder = folder
        self.sandbox = sandbox
        self.registry = registry
        self._lock = threading.RLock()
        self._base_url: str | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, create: bool = True) -> DirectoryState:
        """The Directory kept in ``folder``; a new one (fresh PKI) if there is none yet."""
        folder = Path(folder).resolve()
        pki = folder / "pki"
        if (pki / "directory.json").exists():
            sandbox = SandboxDirectory.load(pki)
        elif create:
            sandbox = SandboxDirectory()
            sandbox.save(pki)
        else:
            raise FileNotFoundError(f"no sandbox Directory in {folder}")
        state = cls(folder, sandbox, read_json(folder / "registry.json", None) or {})
        state.registry.setdefault("organisations", {})
        state.registry.setdefault("software", {})
        if not state.ca_bundle.exists():
            write_file(state.ca_bundle, sandbox.transport_ca_pem())
        return state

    # -- files ---------------------------------------------------------------------------

    @property
    def ca_bundle(self) -> Path:
        """Issuing CA + root CA (PEM): for ``verify=``, ``OBDCR_HTTP_VERIFY``,
        ``OBDCR_TRANSPORT_CA_FILE`` and a TLS server's client CA list."""
        return self.folder / "ca-bundle.pem"

    @property
    def base_url(self) -> str | None:
        """Where the service is reached (``https://127.0.0.1:8443``): the prefix of every JWKS
        URL in the SSAs. None until the server sets it."""
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._base_url = self.sandbox.base_url = value.rstrip("/")

    def _save(self) -> None:
        write_json(self.folder / "registry.json", self.registry)

    def issue_server_certificate(
        self,
        folder: str | os.PathLike[str],
        *,
        name: str = "server",
        hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    ) -> tuple[Path, Path]:
        """An HTTPS server certificate for ``hosts`` from the issuing CA: writes
        ``<name>.pem`` (leaf + issuing CA) and ``<name>.key``; returns their paths. An existing
        pair valid for at least another day is kept."""
        folder = Path(folder)
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        if cert_path.exists() and key_path.exists() and self._still_good(cert_path, hosts):
            return cert_path, key_path
        ips = []
        dns = []
        for host in hosts:
            try:
                ipaddress.ip_address(host)
                ips.append(host)
            except ValueError:
                dns.append(host)
        key = generate_key("EC")
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, hosts[0])])
        certificate = self.sandbox.issuing_ca.issue(
            subject, key.public_key(), usage="server", dns_names=dns, ip_addresses=ips
        )
        write_file(key_path, key_pem(key), secret=True)
        write_file(cert_path, pem(certificate) + pem(self.sandbox.issuing_ca.certificate))
        return cert_path, key_path

    def _still_good(self, cert_path: Path, hosts: Sequence[str]) -> bool:
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except (ValueError, x509.ExtensionNotFound):
            return False
        names = {str(v) for v in san.value.get_values_for_type(x509.IPAddress)}
        names |= set(san.value.get_values_for_type(x509.DNSName))
        tomorrow = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
        return (
            certificate.issuer == self.sandbox.issuing_ca.certificate.subject
            and set(hosts) <= names
            and certificate.not_valid_after_utc > tomorrow
        )

    # -- onboarding ----------------------------------------------------------------------

    def add_organisation(
        self,
        org_name: str,
        *,
        org_id: str | None = None,
        authority_id: str = "OBGBR",
        registration_id: str | None = None,
        contacts: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        if not isinstance(org_name, str) or not org_name.strip():
            raise DirectoryError(400, "invalid_request", "org_name is required.")
        with self._lock:
            org_id = org_id or base62_id(18)
            if org_id in self.registry["organisations"]:
                raise DirectoryError(409, "conflict", f"organisation {org_id} exists.")
            organisation = {
                "org_id": org_id,
                "org_name": org_name.strip(),
                "org_status": "Active",
                "authority_id": authority_id,
                "registration_id": registration_id or "Unknown" + base62_id(18),
                "contacts": contacts
                or [
                    {
                        "name": "Technical",
                        "email": "tech@tpp.example.com",
                        "phone": "+441234567890",
                        "type": "Technical",
                    }
                ],
                "created_at": _now(),
            }
            self.registry["organisations"][org_id] = organisation
            self._save()
        return organisation

    def organisation(self, org_id: str) -> dict[str, Any]:
        organisation = self.registry["organisations"].get(org_id)
        if organisation is None:
            raise DirectoryError(404, "not_found", f"no organisation {org_id}.")
        return organisation

    def add_software(
        self,
        org_id: str,
        *,
        client_name: str,
        roles: Iterable[str],
        redirect_uris: Iterable[str],
        description: str | None = None,
        version: str = "1.0",
        client_uri: str = "https://tpp.example.com",
        logo_uri: str = "https://tpp.example.com/logo.png",
        policy_uri: str = "https://tpp.example.com/policy",
        tos_uri: str = "https://tpp.example.com/tos",
        software_id: str | None = None,
    ) -> dict[str, Any]:
        """The "Add new statement" form: a new software of ``org_id``."""
        self.organisation(org_id)
        if not isinstance(client_name, str) or not client_name.strip():
            raise DirectoryError(400, "invalid_request", "client_name is required.")
        roles = list(dict.fromkeys(roles or []))
        if not roles or not all(isinstance(r, str) and r in ROLES for r in roles):
            raise DirectoryError(
                400, "invalid_request", f"roles must be a non-empty list drawn from {ROLES}."
            )
        redirect_uris = list(redirect_uris or [])
        if not redirect_uris or not all(
            isinstance(u, str) and urlsplit(u).scheme == "https" and urlsplit(u).hostname
            for u in redirect_uris
        ):
            raise DirectoryError(
                400, "invalid_request", "redirect_uris must be a non-empty list of https URLs."
            )
        with self._lock:
            software_id = software_id or base62_id(22)
            if software_id in self.registry["software"]:
                raise DirectoryError(409, "conflict", f"software {software_id} exists.")
            software = {
                "software_id": software_id,
                "org_id": org_id,
                "client_name": client_name.strip(),
                "description": description or f"{client_name.strip()} (sandbox)",
                "version": version,
                "client_uri": client_uri,
                "logo_uri": logo_uri,
                "policy_uri": policy_uri,
                "tos_uri": tos_uri,
                "roles": roles,
                "redirect_uris": redirect_uris,
                "created_at": _now(),
                "certificates": [],
            }
            self.registry["software"][software_id] = software
            self._save()
        return software

    def software(self, software_id: str, org_id: str | None = None) -> dict[str, Any]:
        software = self.registry["software"].get(software_id)
        if software is None or (org_id is not None and software["org_id"] != org_id):
            raise DirectoryError(404, "not_found", f"no software {software_id}.")
        return software

    # -- certificates --------------------------------------------------------------------

    def sign_csr(self, software_id: str, cert_type: str, csr_data: bytes) -> dict[str, Any]:
        """Issue the transport or signing certificate for an uploaded CSR and publish its key."""
        software = self.software(software_id)
        if cert_type not in CERTIFICATE_TYPES:
            raise DirectoryError(
                404, "not_found", "certificate type must be 'transport' or 'signing'."
            )
        csr = _load_csr(csr_data)
        expected = ob_subject(software_id, software["org_id"])
        if not dn_matches(expected.rfc4514_string(), csr.subject):
            raise DirectoryError(
                400,
                "invalid_csr",
                f"the CSR subject must be {expected.rfc4514_string()} (openssl -subj"
                f' "/C=GB/O=OpenBanking/OU={software["org_id"]}/CN={software_id}");'
                f" got {csr.subject.rfc4514_string() or 'an empty subject'}.",
            )
        public_key = csr.public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise DirectoryError(400, "invalid_csr", "RSA keys must be 2048 bits or more.")
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name != "secp256r1":
                raise DirectoryError(400, "invalid_csr", "EC keys must be on P-256.")
        else:
            raise DirectoryError(400, "invalid_csr", "the CSR key must be RSA or EC P-256.")
        use, profile = CERTIFICATE_TYPES[cert_type]
        certificate = self.sandbox.issuing_ca.issue(expected, public_key, usage=profile)
        der = certificate.public_bytes(serialization.Encoding.DER)
        record = {
            "kid": base62_id(27),
            "type": cert_type,
            "use": use,
            "status": "active",
            "subject": certificate.subject.rfc4514_string(),
            "issuer": certificate.issuer.rfc4514_string(),
            "serial_number": format(certificate.serial_number, "x"),
            "not_before": _iso(certificate.not_valid_before_utc),
            "not_after": _iso(certificate.not_valid_after_utc),
            "x5t#S256": _b64url(hashlib.sha256(der).digest()),
            "pem": pem(certificate),
        }
        with self._lock:
            software["certificates"].append(record)
            self._save()
        return record

    def certificate(self, software_id: str, kid: str) -> dict[str, Any]:
        for record in self.software(software_id)["certificates"]:
            if record["kid"] == kid:
                return record
        raise DirectoryError(404, "not_found", f"no certificate {kid} for software {software_id}.")

    def revoke(self, software_id: str, kid: str) -> dict[str, Any]:
        """Move a key from the software's JWKS to its revoked JWKS."""
        with self._lock:
            record = self.certificate(software_id, kid)
            if record["status"] != "revoked":
                record["status"] = "revoked"
                record["revoked_at"] = _now()
                self._save()
        return record

    def _key_set(self, software_id: str, org_id: str, status: str) -> dict[str, Any]:
        software = self.software(software_id, org_id)
        chain = [self.sandbox.issuing_ca.certificate]
        keys = []
        for record in software["certificates"]:
            if record["status"] != status:
                continue
            certificate = x509.load_pem_x509_certificate(record["pem"].encode())
            key = jwk_from_certificate(
                certificate, kid=record["kid"], use=record["use"], chain=chain
            )
            keys.append(json.loads(key.export_public()))
        return {"keys": keys}

    def software_jwks(self, org_id: str, software_id: str) -> dict[str, Any]:
        return self._key_set(software_id, org_id, "active")

    def revoked_jwks(self, org_id: str, software_id: str) -> dict[str, Any]:
        return self._key_set(software_id, org_id, "revoked")

    # -- software statements -------------------------------------------------------------

    def ssa(self, software_id: str) -> str:
        """A software statement for the software, signed by the Directory (PS256)."""
        record = self.software(software_id)
        organisation = self.organisation(record["org_id"])
        # the SandboxDirectory's SSA shape; this Directory holds no private key of the TPP
        software = Software(
            directory=self.sandbox,
            software_id=record["software_id"],
            org_id=record["org_id"],
            org_name=organisation["org_name"],
            client_name=record["client_name"],
            roles=record["roles"],
            redirect_uris=record["redirect_uris"],
            signing_key=None,  # type: ignore[arg-type]
            signing_certificate=None,  # type: ignore[arg-type]
            transport_private_key=None,  # type: ignore[arg-type]
            transport_certificate=None,  # type: ignore[arg-type]
            transport_jwk=None,  # type: ignore[arg-type]
            authority_id=organisation["authority_id"],
            registration_id=organisation["registration_id"],
        )
        return self.sandbox.ssa(
            software,
            software_client_description=record["description"],
            software_version=record["version"],
            software_client_uri=record["client_uri"],
            software_logo_uri=record["logo_uri"],
            software_policy_uri=record["policy_uri"],
            software_tos_uri=record["tos_uri"],
            org_status=organisation["org_status"],
            org_contacts=organisation["contacts"],
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _load_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data.strip())
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError:
        raise DirectoryError(400, "invalid_csr", "the body is not a PEM or DER CSR.") from None
    if not csr.is_signature_valid:
        raise DirectoryError(400, "invalid_csr", "the CSR signature is invalid.")
    return csr


def _public(record: dict[str, Any], base_url: str, software_id: str) -> dict[str, Any]:
    """A certificate record as the API shows it (with its download URL)."""
    shown = {k: v for k, v in record.items() if k != "pem"}
    shown["pem_url"] = f"{base_url}/api/software/{software_id}/certificates/{record['kid']}.pem"
    return shown


# -- the Flask app -----------------------------------------------------------------------------


def create_directory_app(
    state: DirectoryState | str | os.PathLike[str], *, base_url: str | None = None
) -> Flask:
    """The Directory's HTTP API and published documents, backed by ``state``.

    ``base_url`` (the URL the service is reached at) goes into the SSAs' JWKS URLs; without
    it, ``state.base_url`` (set it once the server is bound), or else the first request's URL.
    """
    if not isinstance(state, DirectoryState):
        state = DirectoryState.open(state)
    if base_url is not None:
        state.base_url = base_url
    app = Flask("example_app.directory")
    app.extensions["sandbox_directory"] = state
    app.json.sort_keys = False  # type: ignore[attr-defined]

    def public_base_url() -> str:
        url = state.base_url
        if url is None:
            url = state.base_url = request.host_url
        return url

    def body_json() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise DirectoryError(400, "invalid_request", "the body must be a JSON object.")
        return data

    def key_set(document: dict[str, Any]) -> Response:
        response = jsonify(document)
        response.headers["Cache-Control"] = f"max-age={JWKS_MAX_AGE}"
        return response

    @app.errorhandler(DirectoryError)
    def directory_error(error: DirectoryError):
        return jsonify(error.to_dict()), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return jsonify({"error": "http_error", "error_description": error.name}), error.code

    @app.get("/")
    def index():
        url = public_base_url()
        return jsonify(
            {
                "service": "Sandbox Open Banking Directory",
                "issuer": state.sandbox.issuer,
                "jwks_uri": f"{url}/openbanking.jwks",
                "ca_bundle": f"{url}/ca.pem",
                "organisations": f"{url}/api/organisations",
                "organisation_count": len(state.registry["organisations"]),
                "software_count": len(state.registry["software"]),
            }
        )

    @app.get("/ca.pem")
    def ca_bundle():
        return Response(state.ca_bundle.read_text(), mimetype="application/x-pem-file")

    @app.get("/openbanking.jwks")
    def directory_jwks():
        return key_set(state.sandbox.jwks())

    @app.post("/api/organisations")
    def add_organisation():
        data = body_json()
        organisation = state.add_organisation(
            data.get("org_name", ""),
            authority_id=data.get("authority_id") or "OBGBR",
            registration_id=data.get("registration_id"),
        )
        return jsonify(organisation), 201

    @app.get("/api/organisations/<org_id>")
    def get_organisation(org_id: str):
        organisation = dict(state.organisation(org_id))
        organisation["software"] = [
            s["software_id"] for s in state.registry["software"].values() if s["org_id"] == org_id
        ]
        return jsonify(organisation)

    @app.post("/api/organisations/<org_id>/software")
    def add_software(org_id: str):
        data = body_json()
        optional = ("description", "version", "client_uri", "logo_uri", "policy_uri", "tos_uri")
        software = state.add_software(
            org_id,
            client_name=data.get("client_name", ""),
            roles=data.get("roles") or [],
            redirect_uris=data.get("redirect_uris") or [],
            **{k: data[k] for k in optional if isinstance(data.get(k), str)},
        )
        return jsonify(_software_view(software, public_base_url())), 201

    @app.get("/api/software/<software_id>")
    def get_software(software_id: str):
        return jsonify(_software_view(state.software(software_id), public_base_url()))

    @app.post("/api/software/<software_id>/certificates/<cert_type>")
    def upload_csr(software_id: str, cert_type: str):
        record = state.sign_csr(software_id, cert_type, request.get_data())
        return jsonify(_public(record, public_base_url(), software_id)), 201

    @app.get("/api/software/<software_id>/certificates/<kid>.pem")
    def download_certificate(software_id: str, kid: str):
        record = state.certificate(software_id, kid)
        response = Response(record["pem"], mimetype="application/x-pem-file")
        response.headers["Content-Disposition"] = f'attachment; filename="{kid}.pem"'
        return response

    @app.delete("/api/software/<software_id>/certificates/<kid>")
    def revoke_certificate(software_id: str, kid: str):
        return jsonify(_public(state.revoke(software_id, kid), public_base_url(), software_id))

    @app.post("/api/software/<software_id>/ssa")
    def generate_ssa(software_id: str):
        public_base_url()
        return Response(state.ssa(software_id), status=201, mimetype="application/jwt")

    @app.get("/<org_id>/<software_id>.jwks")
    def software_jwks(org_id: str, software_id: str):
        if software_id == org_id:
            state.organisation(org_id)
            return key_set({"keys": []})
        return key_set(state.software_jwks(org_id, software_id))

    @app.get("/<org_id>/revoked/<software_id>.jwks")
    def revoked_jwks(org_id: str, software_id: str):
        if software_id == org_id:
            state.organisation(org_id)
            return key_set({"keys": []})
        return key_set(state.revoked_jwks(org_id, software_id))

    return app


def _software_view(software: dict[str, Any], base_url: str) -> dict[str, Any]:
    view = {k: v for k, v in software.items() if k != "certificates"}
    sid, org = software["software_id"], software["org_id"]
    view["software_jwks_endpoint"] = f"{base_url}/{org}/{sid}.jwks"
    view["software_jwks_revoked_endpoint"] = f"{base_url}/{org}/revoked/{sid}.jwks"
    view["certificates"] = [_public(r, base_url, sid) for r in software["certificates"]]
    return view


# -- command line ------------------------------------------------------------------------------


#: every command works on one state folder
state_option = click.option(
    "--state",
    "state_dir",
    default="instance/directory",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder holding the Directory's state.",
)


@click.group(help="The sandbox Open Banking Directory.")
def cli() -> None:
    pass


@cli.command()
@state_option
def init(state_dir: str) -> None:
    """Create the Directory's PKI and SSA signing key (kept if they exist)."""
    state = DirectoryState.open(state_dir)
    click.echo(f"sandbox CA bundle: {state.ca_bundle}")


@cli.command("server-cert")
@state_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to write <name>.pem and <name>.key.",
)
@click.option("--name", default="server", show_default=True)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    default=["127.0.0.1", "localhost"],
    show_default=True,
    help="IP address or DNS name (repeat).",
)
def server_cert(state_dir: str, out_dir: str, name: str, hosts: tuple[str, ...]) -> None:
    """Issue an HTTPS server certificate from the sandbox PKI (e.g. for the bank)."""
    state = DirectoryState.open(state_dir)
    cert, key = state.issue_server_certificate(out_dir, name=name, hosts=hosts)
    click.echo(f"certificate: {cert}\nkey: {key}")


@cli.command()
@state_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8443, show_default=True, help="0: a free port.")
@click.option(
    "--url-file",
    type=click.Path(dir_okay=False),
    help="Write the service URL here once it is listening.",
)
@click.option("--exit-with-parent", is_flag=True, help="Stop when the parent process ends.")
def serve(state_dir: str, host: str, port: int, url_file: str | None, exit_with_parent: bool):
    """Serve the Directory over HTTPS until interrupted."""
    from .serving import serve_until_stopped, server_hosts, tls_context

    parent = os.getppid() if exit_with_parent else None
    state = DirectoryState.open(state_dir)
    cert, key = state.issue_server_certificate(state.folder / "tls", hosts=server_hosts(host))

    def make_app(url: str):
        state.base_url = url
        return create_directory_app(state)

    serve_until_stopped(
        name="directory",
        title="Sandbox Open Banking Directory",
        host=host,
        port=port,
        ssl_context=tls_context(cert, key),
        make_app=make_app,
        url_file=url_file,
        parent_pid=parent,
    )


@cli.command()
@click.option("--url", required=True, envvar="DIRECTORY_URL", help="The Directory's URL.")
@click.option(
    "--ca",
    "ca_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The sandbox CA bundle, to verify the Directory's HTTPS certificate.",
)
@click.option("--org-id", help="Add the software to this organisation (default: a new one).")
@click.option("--org-name", default="Sandbox TPP Ltd", show_default=True)
@click.option("--client-name", required=True, help="The software's name.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(ROLES),
    help="Software role (repeat).",
)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    required=True,
    help="https redirect URI (repeat).",
)
@click.option("--description")
def onboard(url, ca_file, org_id, org_name, client_name, roles, redirect_uris, description):
    """Onboard an organisation and a piece of software (the "Add new statement" form)."""
    import requests

    url = url.rstrip("/")

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(url + path, json=body, verify=ca_file, timeout=10)
        if response.status_code != 201:
            raise click.ClickException(f"{path}: HTTP {response.status_code} {response.text}")
        return response.json()

    if org_id is None:
        organisation = call("/api/organisations", {"org_name": org_name})
        org_id = organisation["org_id"]
    body: dict[str, Any] = {
        "client_name": client_name,
        "roles": list(roles),
        "redirect_uris": list(redirect_uris),
    }
    if description:
        body["description"] = description
    software = call(f"/api/organisations/{org_id}/software", body)
    click.echo(json.dumps(software, indent=2))
    return software


if __name__ == "__main__":
    from example_app.directory import cli as _cli

    _cli()
