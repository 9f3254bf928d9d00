"""The sandbox Directory's state: its PKI, its registry and its revocation register.

:class:`DirectoryState` keeps everything in one folder (``--state``), so the service serves the
same Directory again after a restart:

* ``pki/``: the root and issuing CA and the SSA signing key (:meth:`SandboxDirectory.save`);
* ``ca-bundle.pem``: issuing + root CA, what banks and TPPs trust;
* ``registry.json``: organisations (with their ``org_status``), software and the certificates
  issued to it, each with its serial, its status and, once revoked, when and why;
* ``tls/``: the service's own HTTPS certificate;
* ``portal-secret.key`` (owner-only): the key the portal signs its session cookie with (its
  CSRF token), made on first use and kept, so a restart does not void the forms open in a
  browser.

The issuing CA's revocation register (what its CRL lists and its OCSP responder answers) is
made from the registry's revoked certificates when the state is opened, and kept in step with
every revocation, so a restart forgets none.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import threading
import time
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape as xml_escape

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from flask_obdcr.certificates import dn_matches
from flask_obdcr.certificates.binding import psd_identifier
from flask_obdcr.revocation.ocsp import build_request as build_ocsp_request
from flask_obdcr.testing import SandboxDirectory, Software, base62_id
from flask_obdcr.testing.jose import jwk_from_certificate
from flask_obdcr.testing.pki import Usage, eidas_subject, generate_key, key_pem, ob_subject, pem

from .._util import read_json, write_file, write_json

__all__ = [
    "CERTIFICATE_PROFILES",
    "CRL_PATH",
    "CRL_VALIDITY",
    "OCSP_PATH",
    "OCSP_VALIDITY",
    "ORG_STATUSES",
    "REVOCATION_REASONS",
    "DirectoryError",
    "DirectoryState",
]

ROLES = ("AISP", "PISP", "CBPII", "ASPSP")
#: certificate type -> (JWK "use", the issuing CA's certificate profile)
CERTIFICATE_TYPES: dict[str, tuple[str, Usage]] = {
    "transport": ("tls", "transport"),
    "signing": ("sig", "signing"),
}
#: the subject a transport certificate is issued with: ``"ob"`` (``CN=<software_id>,
#: OU=<org_id>, O=OpenBanking, C=GB``) or ``"eidas"`` (OBWAC-shaped: ``CN=<org_id>,
#: 2.5.4.97=PSDGB-OB-<registration_id>, O=<org_name>, C=GB``)
CERTIFICATE_PROFILES = ("ob", "eidas")
JWKS_MAX_AGE = 60
#: an organisation's status, as the Directory reports it (and puts in its SSAs)
ORG_STATUSES = ("Active", "Revoked", "Withdrawn")
#: the CRLReason a revocation may give (RFC 5280 names) -> its reasonCode; "unspecified" is
#: written as no reasonCode at all, as RFC 5280 section 5.3.1 asks
REVOCATION_REASONS: dict[str, x509.ReasonFlags | None] = {
    "unspecified": None,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
}
#: where the issuing CA's CRL and OCSP responder are served, under the Directory's URL; every
#: transport and signing certificate the Directory issues names both
CRL_PATH = "/pki/issuing.crl"
OCSP_PATH = "/pki/ocsp"
#: the nextUpdate of a CRL and of an OCSP response, after their thisUpdate (the moment they
#: are made: every request gets a fresh one)
CRL_VALIDITY = datetime.timedelta(days=1)
OCSP_VALIDITY = datetime.timedelta(hours=1)
#: the portal's session key, in the state folder; its length in random bytes
PORTAL_SECRET_FILE = "portal-secret.key"
PORTAL_SECRET_BYTES = 32


#: the backgrounds of the logos the Directory draws
LOGO_COLOURS = ("#0b3d91", "#1b7f5f", "#8a3ffc", "#b3361b", "#00607a")


class DirectoryError(Exception):
    """An API error: HTTP status, a short code and a description for the caller."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _check_name(value: Any, field: str) -> None:
    """A name shown on pages, in SSAs and in drawn logos: text, and no control character (XML
    1.0, which the logos are, has no place for them, nor has a page)."""
    if not isinstance(value, str) or not value.strip():
        raise DirectoryError(400, "invalid_request", f"{field} is required.")
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise DirectoryError(400, "invalid_request", f"{field} must not hold control characters.")


def _now() -> int:
    return int(time.time())


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class DirectoryState:
    """The Directory's PKI and registry, kept in ``folder`` (see the module docstring).

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
        state._load_register()
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
        URL in the SSAs and of the CRL and OCSP URLs in the certificates. None until the server
        sets it."""
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._base_url = self.sandbox.base_url = value.rstrip("/")

    def logo_url(self, software_id: str) -> str | None:
        """The logo this Directory draws for a software without one of its own."""
        return f"{self.base_url}/logos/{software_id}.svg" if self.base_url else None

    def logo_svg(self, software_id: str) -> str:
        """That logo: the software's initials on a square, as SVG (its name escaped as XML)."""
        record = self.software(software_id)
        words = [w for w in record["client_name"].split() if w[:1].isalnum()]
        initials = "".join(w[0] for w in words[:2]).upper() or "?"
        # one of a few colours, always the same for the same software
        colour = LOGO_COLOURS[sum(software_id.encode()) % len(LOGO_COLOURS)]
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128"'
            ' viewBox="0 0 128 128" role="img">'
            f"<title>{xml_escape(record['client_name'])}</title>"
            f'<rect width="128" height="128" rx="20" fill="{colour}"/>'
            '<text x="64" y="82" font-family="DejaVu Sans, Arial, sans-serif" font-size="52"'
            f' font-weight="bold" fill="#fff" text-anchor="middle">{xml_escape(initials)}</text>'
            "</svg>"
        )

    @property
    def crl_url(self) -> str | None:
        """The issuing CA's CRL (DER), as certificates name it; None without a base URL."""
        return f"{self.base_url}{CRL_PATH}" if self.base_url else None

    @property
    def ocsp_url(self) -> str | None:
        """The issuing CA's OCSP responder, as certificates name it; None without a base URL."""
        return f"{self.base_url}{OCSP_PATH}" if self.base_url else None

    def _save(self) -> None:
        write_json(self.folder / "registry.json", self.registry)

    def portal_secret_key(self) -> bytes:
        """The key the portal signs its session cookie (the CSRF token) with: read from
        ``portal-secret.key`` in the state folder, made there (owner-only) on first use."""
        path = self.folder / PORTAL_SECRET_FILE
        with self._lock:
            try:
                key = path.read_bytes().strip()
            except FileNotFoundError:
                key = b""
            if len(key) < PORTAL_SECRET_BYTES:
                key = secrets.token_hex(PORTAL_SECRET_BYTES).encode()
                write_file(path, key + b"\n", secret=True)
        return key

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
        with self._lock:
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
        _check_name(org_name, "org_name")
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

    def organisations(self) -> list[dict[str, Any]]:
        """Every organisation, oldest first."""
        with self._lock:  # another thread may be adding one
            found = list(self.registry["organisations"].values())
        return sorted(found, key=lambda o: (o.get("created_at", 0), o["org_name"]))

    def software_of(self, org_id: str) -> list[dict[str, Any]]:
        """The software of an organisation (404 if there is no such organisation), oldest
        first."""
        self.organisation(org_id)
        with self._lock:
            found = [s for s in self.registry["software"].values() if s["org_id"] == org_id]
        return sorted(found, key=lambda s: (s.get("created_at", 0), s["client_name"]))

    def set_org_status(self, org_id: str, status: str) -> dict[str, Any]:
        """Change an organisation's status (``Active``, ``Revoked`` or ``Withdrawn``, in any
        case): what ``GET /api/organisations/<org_id>`` reports and what the SSAs generated
        from now on carry. Its certificates and keys are left as they are."""
        wanted = {s.lower(): s for s in ORG_STATUSES}.get(str(status).lower())
        if wanted is None:
            raise DirectoryError(
                400, "invalid_request", f"org_status must be one of {list(ORG_STATUSES)}."
            )
        with self._lock:
            organisation = self.organisation(org_id)
            if organisation["org_status"] != wanted:
                organisation["org_status"] = wanted
                organisation["org_status_changed_at"] = _now()
                self._save()
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
        logo_uri: str | None = None,
        policy_uri: str = "https://tpp.example.com/policy",
        tos_uri: str = "https://tpp.example.com/tos",
        software_id: str | None = None,
    ) -> dict[str, Any]:
        """The "Add new statement" form: a new software of ``org_id``. Without ``logo_uri`` the
        SSA names the logo this Directory draws for it (:meth:`logo_url`): a sandbox has no
        other place a bank's consent page could load one from."""
        self.organisation(org_id)
        _check_name(client_name, "client_name")
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

    def sign_csr(
        self, software_id: str, cert_type: str, csr_data: bytes, *, profile: str = "ob"
    ) -> dict[str, Any]:
        """Issue the transport or signing certificate for an uploaded CSR and publish its key.

        Once the service's URL is known (:attr:`base_url`), the certificate names the issuing
        CA's CRL (CRL distribution points) and OCSP responder (authorityInfoAccess), as the
        real Open Banking certificates do.

        ``profile="eidas"`` (transport certificates only) issues an eIDAS/OBWAC-shaped one:
        the subject ``CN=<org_id>, organizationIdentifier=PSDGB-OB-<registration_id>,
        O=<org_name>, C=GB`` (the PSD2 identifier made from the organisation's competent
        authority, as a bank derives it from the SSA), clientAuth and serverAuth. Its CSR may
        carry that subject or the OB one (the Directory writes the subject it certifies)."""
        software = self.software(software_id)
        if cert_type not in CERTIFICATE_TYPES:
            raise DirectoryError(
                404, "not_found", "certificate type must be 'transport' or 'signing'."
            )
        if profile not in CERTIFICATE_PROFILES:
            raise DirectoryError(
                400, "invalid_request", f"profile must be one of {list(CERTIFICATE_PROFILES)}."
            )
        if profile == "eidas" and cert_type != "transport":
            raise DirectoryError(
                400, "invalid_request", "the eidas profile is for transport certificates only."
            )
        csr = _load_csr(csr_data)
        expected = ob_subject(software_id, software["org_id"])
        accepted = [expected]
        if profile == "eidas":
            expected = self._eidas_subject(software)
            accepted.append(expected)
        if not any(dn_matches(name.rfc4514_string(), csr.subject) for name in accepted):
            raise DirectoryError(
                400,
                "invalid_csr",
                f"the CSR subject must be {accepted[0].rfc4514_string()} (openssl -subj"
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
        use, usage = CERTIFICATE_TYPES[cert_type]
        crl_url, ocsp_url = self.crl_url, self.ocsp_url
        with self._lock:
            certificate = self.sandbox.issuing_ca.issue(
                expected, public_key, usage=usage, crl_url=crl_url, ocsp_url=ocsp_url
            )
        der = certificate.public_bytes(serialization.Encoding.DER)
        record: dict[str, Any] = {
            "kid": base62_id(27),
            "type": cert_type,
            "use": use,
            "status": "active",
            "profile": profile,
            "subject": certificate.subject.rfc4514_string(
                {NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier"}
            ),
            "issuer": certificate.issuer.rfc4514_string(),
            "serial_number": format(certificate.serial_number, "x"),
            "not_before": _iso(certificate.not_valid_before_utc),
            "not_after": _iso(certificate.not_valid_after_utc),
            "x5t#S256": _b64url(hashlib.sha256(der).digest()),
        }
        if crl_url and ocsp_url:
            record.update(crl_distribution_point=crl_url, ocsp_url=ocsp_url)
        record["pem"] = pem(certificate)
        with self._lock:
            software["certificates"].append(record)
            self._save()
        return record

    def _eidas_subject(self, software: dict[str, Any]) -> x509.Name:
        organisation = self.organisation(software["org_id"])
        claims = {
            "organisation_competent_authority_claims": {
                "authority_id": organisation["authority_id"],
                "registration_id": organisation["registration_id"],
            }
        }
        identifier = psd_identifier(claims)
        if identifier is None:
            raise DirectoryError(
                400,
                "invalid_request",
                f"organisation {organisation['org_id']} has no PSD2 authorisation an"
                f" organizationIdentifier can be made of (authority_id"
                f" {organisation['authority_id']!r}).",
            )
        return eidas_subject(organisation["org_id"], organisation["org_name"], identifier)

    def certificate(self, software_id: str, kid: str) -> dict[str, Any]:
        for record in self.software(software_id)["certificates"]:
            if record["kid"] == kid:
                return record
        raise DirectoryError(404, "not_found", f"no certificate {kid} for software {software_id}.")

    def revoke(self, software_id: str, kid: str, *, reason: str = "unspecified") -> dict[str, Any]:
        """Revoke a certificate: its key moves from the software's JWKS to its revoked JWKS,
        and its serial goes on the issuing CA's register, so the CRL lists it and the OCSP
        responder answers "revoked" from now on. ``reason`` is a name of
        :data:`REVOCATION_REASONS`. Revoking a revoked certificate changes nothing."""
        if reason not in REVOCATION_REASONS:
            raise DirectoryError(
                400, "invalid_request", f"reason must be one of {list(REVOCATION_REASONS)}."
            )
        with self._lock:
            record = self.certificate(software_id, kid)
            if record["status"] != "revoked":
                record["status"] = "revoked"
                record["revoked_at"] = _now()
                record["revocation_reason"] = reason
                self._register_revocation(record)
                self._save()
        return record

    def _register_revocation(self, record: dict[str, Any]) -> None:
        revoked_at = datetime.datetime.fromtimestamp(
            record.get("revoked_at") or _now(), tz=datetime.timezone.utc
        )
        reason = REVOCATION_REASONS.get(record.get("revocation_reason") or "unspecified")
        self.sandbox.issuing_ca.revoke(
            int(record["serial_number"], 16), at=revoked_at, reason=reason
        )

    def _load_register(self) -> None:
        """The issuing CA's register from the registry: the serials it issued to software (the
        OCSP responder answers "unknown" for any other) and those revoked since."""
        for software in self.registry["software"].values():
            for record in software["certificates"]:
                self.sandbox.issuing_ca.issued.add(int(record["serial_number"], 16))
                if record["status"] == "revoked":
                    self._register_revocation(record)

    def revocations(self) -> list[dict[str, Any]]:
        """Every revoked certificate: software, kid, serial, when and why (for display)."""
        found = []
        for software in self.registry["software"].values():
            for record in software["certificates"]:
                if record["status"] == "revoked":
                    found.append(
                        {
                            "software_id": software["software_id"],
                            "kid": record["kid"],
                            "serial_number": record["serial_number"],
                            "revoked_at": record.get("revoked_at"),
                            "revocation_reason": record.get("revocation_reason", "unspecified"),
                        }
                    )
        return found

    def revocation_status(self, software_id: str) -> dict[str, dict[str, Any]]:
        """What the issuing CA's CRL and OCSP responder say now of each certificate of the
        software, by kid: ``{"ocsp": "good" | "revoked" | "unknown", "crl": "listed" | "not
        listed", "revoked_at": ISO time or None, "reason": CRLReason name or None}``. Both are
        asked as a bank asks them (the OCSP request and the CRL go through :meth:`ocsp_response`
        and :meth:`crl`), so this is what a bank would be told."""
        records = list(self.software(software_id)["certificates"])
        crl = x509.load_der_x509_crl(self.crl())
        issuer = self.sandbox.issuing_ca.certificate
        statuses: dict[str, dict[str, Any]] = {}
        for record in records:
            certificate = x509.load_pem_x509_certificate(record["pem"].encode())
            # the request the bank's revocation checker sends
            answer = ocsp.load_der_ocsp_response(
                self.ocsp_response(build_ocsp_request(certificate, issuer))
            )
            entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            status: dict[str, Any] = {
                "ocsp": answer.certificate_status.name.lower(),
                "crl": "listed" if entry is not None else "not listed",
                "revoked_at": None,
                "reason": None,
            }
            if answer.certificate_status == ocsp.OCSPCertStatus.REVOKED:
                status["revoked_at"] = _iso(answer.revocation_time_utc)  # type: ignore[arg-type]
                status["reason"] = _reason_name(answer.revocation_reason)
            statuses[record["kid"]] = status
        return statuses

    # -- the issuing CA's CRL and OCSP responder -------------------------------------------

    def crl(self) -> bytes:
        """The issuing CA's CRL, DER, made now (thisUpdate now, nextUpdate
        :data:`CRL_VALIDITY` later) and signed by the issuing CA."""
        with self._lock:
            crl = self.sandbox.issuing_ca.crl(validity=CRL_VALIDITY)
        return crl.public_bytes(serialization.Encoding.DER)

    def ocsp_response(self, request_der: bytes) -> bytes:
        """The DER OCSP response to a DER OCSP request about one certificate of the issuing CA,
        signed by the CA (thisUpdate now, nextUpdate :data:`OCSP_VALIDITY` later): "revoked"
        for a serial on the register, "good" for another it issued to software, "unknown"
        for any other. A request that cannot be read gets a malformedRequest response, one
        about another CA's certificate an unauthorized one (RFC 6960 section 2.3)."""
        try:
            ocsp.load_der_ocsp_request(request_der)
        except ValueError:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        with self._lock:
            return self.sandbox.issuing_ca.ocsp_response(request_der, validity=OCSP_VALIDITY)

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
        """A software statement for the software, signed by the Directory (PS256); it carries
        the organisation's current ``org_status``."""
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
            software_logo_uri=record["logo_uri"] or self.logo_url(record["software_id"]),
            software_policy_uri=record["policy_uri"],
            software_tos_uri=record["tos_uri"],
            org_status=organisation["org_status"],
            org_contacts=organisation["contacts"],
        )


def _reason_name(flag: x509.ReasonFlags | None) -> str:
    """The :data:`REVOCATION_REASONS` name of a CRLReason (none given: ``unspecified``)."""
    for name, value in REVOCATION_REASONS.items():
        if value == flag:
            return name
    return flag.value if flag is not None else "unspecified"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    response = ocsp.OCSPResponseBuilder.build_unsuccessful(status)
    return response.public_bytes(serialization.Encoding.DER)


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
