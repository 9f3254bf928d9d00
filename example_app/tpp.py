"""The TPP's side, one step per command: ``obdcr-tpp [--workdir DIR] COMMAND`` (the same as
``python -m example_app.tpp``).

Everything the TPP has (keys, CSRs, certificates, the SSA, requests, the registration, the
token) is a file in its working directory (``--workdir``, or ``$TPP_WORKDIR``, default
``instance/tpp``), so the steps can be run one at a time and inspected in between::

    onboard       have the Directory create the organisation and the software; remember both ids
    init          remember the Directory, the bank, the sandbox CA bundle (and given ids)
    status        what has been done in the working folder, the client_id, the token's expiry
    keys          transport and signing keys and CSRs (and the equivalent openssl commands)
    upload-csr    send the CSRs to the Directory, which issues the certificates (--eidas: an
                  eIDAS/OBWAC-shaped transport certificate)
    download      fetch the issued certificates (PEM)
    p12           bundle transport certificate and key as transport.p12 (openssl pkcs12 -export)
    jwks          show the keys the Directory publishes for the software
    ssa           get a software statement from the Directory and show it decoded
    discover      read the bank's /.well-known/openid-configuration (no client certificate)
    request       build and sign (PS256) the registration request JWT and show it decoded
    explain       ask the bank how it would judge request.jwt, policy by policy (nothing stored)
    register      POST it to the bank over mutual TLS (application/jwt)
    token         client_credentials token over mutual TLS
    consent       the customer's consent journey, by hand: create an account-access-consent
                  and print the bank's authorize URL to open in a browser
    callback      check where the bank sent the browser back (the id_token), exchange the code
    web           serve the TPP's web page (its redirect URI): connect, accounts, revoke
    accounts      call the bank's accounts API with the token the customer's consent gave
    refresh       a new access token for the consent (the refresh_token grant)
    revoke-consent  revoke the consent at the bank (DELETE): its tokens open nothing any more
    registration  get | update | delete the registration (RFC 7592 over mutual TLS)
    revoke        revoke the transport (or, with --signing, the signing) certificate at the
                  Directory, and say when the bank will notice
    decode        print a JWT, certificate, CSR or key of the working folder readably
    conformance-config   write the OB DCR conformance tool's config.json from the folder

Every HTTPS call verifies the server with the sandbox CA bundle; calls to the bank present the
transport certificate (``requests``' ``cert=(transport.pem, transport.key)``) unless
``--no-cert`` is given, which shows the bank refusing them. A refusal prints its cause, what to
run next and the working folder, and exits with status 1.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import socket
import textwrap
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import click
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from jwcrypto import jwk, jws

from flask_obdcr.testing import sign_jwt
from flask_obdcr.testing.pki import generate_key, key_pem, ob_subject, pem

from ._util import (
    Refusal,
    abbreviate,
    connection_refusal,
    decode_jwt,
    pretty,
    program_name,
    read_json,
    refuse_placeholder,
    write_file,
    write_json,
)
from .directory import REVOCATION_REASONS
from .directory.cli import (
    directory_command,
    flask_command,
    installed_command,
    revocation_consequences,
    shown_path,
)
from .directory.state import ROLES

__all__ = [
    "TPP",
    "ConsentDenied",
    "Failed",
    "InvalidAnswer",
    "InvalidIdToken",
    "cli",
    "complete_authorization",
    "create_consent",
    "main",
    "read_accounts",
    "registration_claims",
    "sign_request",
    "start_authorization",
    "verify_id_token",
]

CERT_TYPES = ("transport", "signing")
AUTH_METHODS = ("tls_client_auth", "private_key_jwt")
ALG = "PS256"
TIMEOUT = 10
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
#: the name the hints use when the command line was not started under a name of its own
PROG = "obdcr-tpp"
#: the working folder when --workdir (or TPP_WORKDIR) does not name one
DEFAULT_WORKDIR = "instance/tpp"
#: the ``make serve`` layout, used when neither an option nor tpp.json says otherwise
DEFAULT_DIRECTORY_URL = "https://127.0.0.1:8443"
DEFAULT_BANK_URL = "https://127.0.0.1:9443"
#: seconds a registration request is valid for (its exp after its iat)
REQUEST_LIFETIME = 300
#: where the TPP's web page listens under ``make serve`` (``obdcr-tpp web --port``), and so
#: its redirect URI, which the software statement lists
DEFAULT_WEB_PORT = 7443
DEFAULT_REDIRECT_URI = f"https://127.0.0.1:{DEFAULT_WEB_PORT}/callback"
#: what each file of the working folder is made by (``decode`` and ``status`` name them)
ARTEFACTS = {
    "transport.key": "keys",
    "transport.csr": "keys",
    "signing.key": "keys",
    "signing.csr": "keys",
    "transport.pem": "download",
    "signing.pem": "download",
    "transport.p12": "p12",
    "ssa.jwt": "ssa",
    "discovery.json": "discover",
    "request.jwt": "request",
    "registration.json": "register",
    "token.json": "token",
    "authorizations.json": "consent",
    "consent.json": "callback",
    "config.json": "conformance-config",
}
#: made with (or certifying) the keys: stale once ``keys --force`` replaces them
MADE_WITH_THE_KEYS = (
    "transport.pem",
    "signing.pem",
    "transport.p12",
    "request.jwt",
    "token.json",
    "consent.json",
    "config.json",
)


def tpp_command(tpp: TPP | None, args: str = "") -> str:
    """A command line of this TPP as it can be pasted into a fresh shell: the program as it
    was invoked (``.venv/bin/obdcr-tpp``, never a bare name that is not on PATH), with
    ``--workdir`` when the working folder is not the default ``instance/tpp``, then ARGS."""
    command = installed_command(PROG)
    if tpp is not None and tpp.workdir != Path(DEFAULT_WORKDIR).resolve():
        command += f" --workdir {shown_path(tpp.workdir)}"
    return f"{command} {args}".rstrip()


def prog() -> str:
    """The start of every hint: :func:`tpp_command` for the working folder in use."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return tpp_command(obj if isinstance(obj, TPP) else None)


def _now() -> int:
    """The clock of the JWTs this TPP signs (a test moves it)."""
    return int(time.time())


def _directory_command(tpp: TPP, args: str) -> str:
    """``.venv/bin/obdcr-directory ARGS`` for the Directory this working folder uses."""
    return directory_command(
        args, url=tpp.config.get("directory_url"), ca_file=tpp.config.get("ca_file")
    )


class Failed(Refusal):
    """A step that did not work (an HTTP error, a missing earlier step): exit status 1, with
    one line of cause, one of what to run next and the working folder. ``upstream``: the
    server refused (the web page answers 502 then, as for a server it cannot reach: those are
    refusals from :meth:`TPP.http`)."""

    upstream = False


class TPP:
    """The TPP's working directory: ``tpp.json`` plus one file per artefact."""

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = Path(workdir).resolve()
        self.config: dict[str, Any] = read_json(self.workdir / "tpp.json", {}) or {}

    def path(self, name: str) -> Path:
        return self.workdir / name

    def save(self) -> None:
        write_json(self.path("tpp.json"), self.config)

    def fail(self, message: str, *, cause: str, remedy: str) -> Failed:
        """A :class:`Failed` naming this working folder (to raise)."""
        return Failed(message, cause=cause, remedy=remedy, folder=self.workdir)

    def need(self, key: str) -> Any:
        if key not in self.config:
            p = prog()
            if key in ("org_id", "software_id"):
                remedy = (
                    f"run `{p} onboard` (the Directory creates them), or `{p} init --org-id ..."
                    " --software-id ...` with the ids the Directory printed"
                )
            else:
                remedy = f"run `{p} onboard` or `{p} init` (`make serve` prints the URLs)"
            raise self.fail(
                f"{key} is not known yet",
                cause=f"tpp.json in this working folder has no {key}",
                remedy=remedy,
            )
        return self.config[key]

    def read(self, name: str, step: str) -> str:
        try:
            return self.path(name).read_text()
        except FileNotFoundError:
            raise self.missing(name, step) from None

    def missing(self, name: str, step: str) -> Failed:
        return self.fail(
            f"no {name} in {self.workdir}",
            cause=f"`{step}` has not been run in this working folder (or its {name} was removed)",
            remedy=f"run `{prog()} {step}` (`{prog()} status` shows every step)",
        )

    @property
    def ca_file(self) -> str:
        path = self.need("ca_file")
        if not os.path.isfile(path):
            raise self.fail(
                f"no sandbox CA bundle at {path}",
                cause="the CA bundle tpp.json names is gone (a sandbox started in another folder?)",
                remedy=f"pass the running sandbox's bundle: `{prog()} init --ca"
                " instance/directory/ca-bundle.pem` (`make serve` prints it)",
            )
        return path

    @property
    def software_id(self) -> str:
        return self.need("software_id")

    @property
    def org_id(self) -> str:
        return self.need("org_id")

    def directory(self, path: str) -> str:
        return self.need("directory_url").rstrip("/") + path

    def transport_cert(self) -> tuple[str, str]:
        for name, step in (("transport.key", "keys"), ("transport.pem", "download")):
            if not self.path(name).exists():
                raise self.missing(name, step)
        return str(self.path("transport.pem")), str(self.path("transport.key"))

    def server_name(self, url: str) -> str:
        """ "the bank" or "the Directory", by the URL's host and port."""
        netloc = urlsplit(url).netloc
        for key, name in (("bank_url", "the bank"), ("directory_url", "the Directory")):
            if self.config.get(key) and urlsplit(self.config[key]).netloc == netloc:
                return name
        return "the server"

    def http(self, method: str, url: str, *, mtls: bool = True, **kwargs: Any) -> requests.Response:
        """One HTTPS call, the server verified with the sandbox CA bundle; with ``mtls`` the
        transport certificate is presented. A failure to connect is a :class:`Failed` that
        says why (refused connection, TLS alert) and what to do."""
        if mtls:
            kwargs["cert"] = self.transport_cert()
        ca_file = self.ca_file
        try:
            return requests.request(method, url, verify=ca_file, timeout=TIMEOUT, **kwargs)
        except requests.exceptions.ConnectionError as exc:
            refusal = self._refusal(exc, url, mtls=mtls, ca_file=ca_file)
            if "make serve` running" in refusal.remedy and not self._make_serve_layout():
                refusal.remedy += (
                    f"; this working folder's servers ({self.config.get('directory_url')},"
                    f" {self.config.get('bank_url')}) are not `make serve`'s"
                    f" ({DEFAULT_DIRECTORY_URL}, {DEFAULT_BANK_URL}): a `make demo KEEP=1`"
                    " folder's servers are gone (offline commands still work: status, decode,"
                    f" p12, request), or point it at make serve: `{prog()} init --directory"
                    f" {DEFAULT_DIRECTORY_URL} --bank {DEFAULT_BANK_URL}`"
                )
            raise refusal from None
        except requests.exceptions.RequestException as exc:
            raise self._refusal(exc, url, mtls=mtls, ca_file=ca_file) from None

    def _make_serve_layout(self) -> bool:
        """Whether this folder's Directory and bank are where ``make serve`` listens."""
        return (self.config.get("directory_url"), self.config.get("bank_url")) == (
            DEFAULT_DIRECTORY_URL,
            DEFAULT_BANK_URL,
        )

    def _refusal(
        self, exc: requests.exceptions.RequestException, url: str, *, mtls: bool, ca_file: str
    ) -> Refusal:
        return connection_refusal(
            exc,
            url,
            server=self.server_name(url),
            prog=prog(),
            ca=ca_file,
            ca_option=f"`{prog()} init --ca BUNDLE`",
            cert="transport.pem" if mtls else None,
            eof_means=self._certificate_problem(ca_file) if mtls else None,
            folder=self.workdir,
        )

    def _certificate_problem(self, ca_file: str) -> str | None:
        """What is visibly wrong with transport.pem (a key of ``TLS_FAILURES``), if anything:
        expired, or issued by a CA outside the sandbox bundle."""
        try:
            certificate = x509.load_pem_x509_certificate(self.path("transport.pem").read_bytes())
            bundle = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        except (OSError, ValueError):
            return None
        now = time.time()
        if not certificate.not_valid_before_utc.timestamp() <= now:
            return None
        if certificate.not_valid_after_utc.timestamp() < now:
            return "CERTIFICATE_EXPIRED"
        if certificate.issuer not in {ca.subject for ca in bundle}:
            return "UNKNOWN_CA"
        return None

    def discovery(self) -> dict[str, Any]:
        document = read_json(self.path("discovery.json"))
        if document is None:
            document = fetch_discovery(self)
        return document

    def signing_key(self) -> jwk.JWK:
        key = jwk.JWK.from_pem(self.read("signing.key", "keys").encode())
        kid = self.config.get("certificates", {}).get("signing", {}).get("kid")
        if not kid:
            raise self.fail(
                "the signing certificate has no kid yet",
                cause="the signing CSR has not been sent to the Directory, which gives the kid",
                remedy=f"run `{prog()} upload-csr`, then `{prog()} download`",
            )
        return jwk.JWK(**{**key.export_private(as_dict=True), "kid": kid})

    def registered_scope(self) -> str | None:
        registration = read_json(self.path("registration.json")) or {}
        return registration.get("scope")


#: long values shortened when a response is printed (never in the saved files)
SHORTENED = ("software_statement",)


def show_response(response: requests.Response) -> Any:
    """Print the status line, a few headers and the (pretty) body; returns the parsed JSON
    (or the text)."""
    click.echo(f"HTTP {response.status_code} {_phrase(response)}")
    headers: tuple[str, ...] = (
        "Cache-Control",
        "WWW-Authenticate",
        "Retry-After",
        "x-fapi-interaction-id",
    )
    if response.content:
        headers = ("Content-Type", *headers)
    for header in headers:
        if header in response.headers:
            click.echo(f"{header}: {response.headers[header]}")
    if not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        click.echo(response.text)
        return response.text
    if isinstance(body, dict):
        shown = {
            k: abbreviate(v) if k in SHORTENED and isinstance(v, str) else v
            for k, v in body.items()
        }
    else:
        shown = body
    click.echo(pretty(shown))
    return body


def _phrase(response: requests.Response) -> str:
    try:
        return HTTPStatus(response.status_code).phrase
    except ValueError:
        return response.reason or ""


def _error_of(response: requests.Response) -> tuple[str, str]:
    """The OAuth ``error`` and ``error_description`` of a response (else from
    WWW-Authenticate), empty strings when there are none."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], str(body.get("error_description") or "")
    # the Open Banking APIs' error shape: {"Code", "Message", "Errors": [{"ErrorCode", ...}]}
    errors = body.get("Errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return str(first.get("ErrorCode") or ""), str(first.get("Message") or "")
    challenge = response.headers.get("WWW-Authenticate", "")
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    return fields.get("error", ""), fields.get("error_description", "")


def expect(
    tpp: TPP,
    response: requests.Response,
    *statuses: int,
    what: str,
    step: str,
    no_cert: bool = False,
    **context: Any,
) -> None:
    """Nothing if the response has one of ``statuses``; else a :class:`Failed` whose first line
    is ``"<what>: the server answered HTTP <status> <error>"`` and whose cause and remedy
    :func:`diagnose` finds for ``step`` (the command that sent it)."""
    if response.status_code in statuses:
        return
    error, _description = _error_of(response)
    cause, remedy = diagnose(tpp, step, response, no_cert=no_cert, **context)
    message = f"{what}: the server answered HTTP {response.status_code}"
    failure = tpp.fail(message + (f" {error}" if error else ""), cause=cause, remedy=remedy)
    failure.upstream = True
    raise failure


def diagnose(
    tpp: TPP, step: str, response: requests.Response, *, no_cert: bool = False, **context: Any
) -> tuple[str, str]:
    """One line of cause and one of remedy for a refusal of ``step``'s call (``register``,
    ``token``, ``accounts``, ``registration``, ``explain``, ``discover``, ``directory``)."""
    p = prog()
    status = response.status_code
    error, description = _error_of(response)
    said = description.rstrip(".") or f"HTTP {status} {error}".strip()
    lowered = description.lower()
    new_certificates = (
        f"get new certificates: `{p} keys --force`, `{p} upload-csr`, `{p} download` (keys"
        " --force says what to run after)"
    )
    again = f"run `{p} request` again, then `{p} register`"
    registered = tpp.path("registration.json").exists()

    # -- the Directory's API
    if step == "directory":
        if status == 404:
            return (
                f"the Directory has no such record ({said}): tpp.json may name software of an"
                " earlier sandbox",
                f"onboard anew at this Directory: `{p} onboard --force`",
            )
        if error == "invalid_csr":
            return said, f"make new keys and CSRs: `{p} keys --force`, then `{p} upload-csr`"
        return said, f"see the answer above; `{p} status` shows what has been done"

    # -- the transport certificate, wherever the bank checks it
    if status == 401 and "certificate" in lowered and "required" in lowered:
        if no_cert:
            return (
                "no transport certificate was presented (--no-cert), and the bank needs one",
                "run the same command without --no-cert",
            )
        return said, f"check transport.pem and transport.key: `{p} decode transport.pem`"
    if "certificate has been revoked" in lowered or "key has been revoked" in lowered:
        return (
            f"the Directory has revoked the transport certificate ({said})",
            new_certificates,
        )
    if status in (401, 400) and "does not belong" in lowered:
        return (
            f"transport.pem is not a certificate of this client's software ({said})",
            f"present this software's own certificate: `{p} download`",
        )
    if (
        status == 401
        and error == "invalid_client"
        and ("expired" in lowered or "not trusted" in lowered or "not valid" in lowered)
    ):
        return said, new_certificates
    if status == 503:
        retry = response.headers.get("Retry-After")
        return (
            f"the bank could not check something with the Directory right now ({said})",
            "is the Directory running (`make serve`)? then try again"
            + (f" in {retry} s" if retry else ""),
        )
    if status == 429:
        retry = response.headers.get("Retry-After", "a few")
        return said, f"wait {retry} s, then run it again"

    # -- registration requests (register, registration update, explain)
    if error == "invalid_client_metadata":
        if "expired" in lowered:
            return (
                f"request.jwt has expired: it is valid for {REQUEST_LIFETIME // 60} minutes"
                f" after `{p} request` made it ({said})",
                again,
            )
        if "replayed" in lowered or "used before" in lowered:
            return (
                "request.jwt was registered before, and the bank accepts each request (its jti)"
                " once",
                again,
            )
        if "in the future" in lowered or "not valid yet" in lowered:
            return said, f"check this computer's clock, then {again}"
        if " aud " in f" {lowered} ":
            return said, f"read the bank's issuer again: `{p} discover`, then {again}"
        if "scope" in lowered:
            return (
                said,
                f"`{p} request --scope ...` within the software's roles (accounts: AISP,"
                f" payments: PISP, fundsconfirmations: CBPII), then `{p} register`",
            )
        if "subject_dn" in lowered:
            return said, f"`{p} request` takes the DN from transport.pem: {again}"
        if "revoked" in lowered:
            return f"the Directory has revoked the signing key ({said})", new_certificates
        if "sign" in lowered:
            return (
                said,
                f"have the signing key published: `{p} upload-csr`, `{p} download`, then {again}",
            )
        if "cannot change" in lowered:
            return said, f"register this software anew: `{p} request`, `{p} register`"
        return said, f"fix it, then {again} (`{p} explain` shows every check)"
    if error == "invalid_software_statement":
        return said, f"get a fresh software statement: `{p} ssa`, then {again}"
    if error == "unapproved_software_statement":
        if "org" in lowered or "status" in lowered:
            return (
                said,
                "ask the Directory: `"
                + _directory_command(tpp, f"org-status {tpp.config.get('org_id')}")
                + f"` (Active restores it), then `{p} ssa` and {again}",
            )
        return (
            said,
            "the bank must trust the Directory that signed ssa.jwt (its OBDCR_TRUSTED_DIRECTORIES)",
        )
    if error == "invalid_redirect_uri":
        uris = _ssa_redirect_uris(tpp)
        return (
            said,
            f"`{p} request --redirect-uri URI` with URIs of the software statement"
            f" ({', '.join(uris) or 'software_redirect_uris'}), then `{p} register`",
        )

    # -- the token endpoint
    if error == "invalid_scope":
        asked = context.get("scope", "")
        granted = tpp.registered_scope() or "?"
        return (
            f"the bank will not grant scope {asked!r}: this client registered {granted!r}",
            f"ask for a scope it registered (`{p} token --scope accounts`); another needs the"
            f" software role and a registration with that scope (`{p} request --scope ...`,"
            f" `{p} register`)",
        )
    if step == "token" and error == "invalid_client":
        if "suspended" in lowered:
            return (
                f"the bank has suspended this client ({said})",
                f"see why at the bank (`{flask_command('obdcr clients list')}`); once the"
                f" Directory vouches for it again, `{flask_command('obdcr revalidate')}`"
                f" reinstates it; then `{p} token`",
            )
        client_id = (read_json(tpp.path("registration.json")) or {}).get("client_id", "?")
        return (
            f"the bank refused client {client_id}'s authentication"
            + (f" ({said})" if description else " (deleted, or registered at another bank?)"),
            f"register again: `{p} request`, then `{p} register`, then `{p} token`",
        )

    # -- the Open Banking APIs' own refusals (consents, accounts)
    if error == "UK.OBIE.Resource.ConsentMismatch":
        return (
            f"account data needs the customer's consent ({said})",
            f"connect through the TPP's web page (`{p} web`), or `{p} consent`; then"
            f" `{p} accounts`",
        )
    if error == "UK.OBIE.Resource.InvalidConsentStatus":
        return (
            f"the consent behind this token is no longer authorised: revoked or expired ({said})",
            f"ask the customer again: connect on the TPP's web page, or `{p} consent`",
        )
    if error.startswith("UK.OBIE."):
        return said, f"see the answer above; `{p} status` shows what has been done"

    # -- calls with the access token (accounts, registration get/update/delete)
    if error == "insufficient_scope":
        token_scope = (tpp.config.get("token") or {}).get("scope_granted", "?")
        return (
            f"the access token has scope {token_scope!r}, not the one this call needs ({said})",
            f"`{p} token --scope accounts`",
        )
    if error == "invalid_token":
        if not registered or "deleted" in lowered:
            return (
                "the client this token was issued to has been deleted",
                f"register again: `{p} request`, then `{p} register`, then `{p} token`",
            )
        if no_cert and "present it" in lowered:
            return (
                "the token is bound to the transport certificate, and none was presented"
                " (--no-cert)",
                "run the same command without --no-cert",
            )
        expires_at = (tpp.config.get("token") or {}).get("expires_at")
        if isinstance(expires_at, int | float) and expires_at <= time.time():
            return (
                f"the access token expired {_when(expires_at)}",
                f"run `{p} token` again",
            )
        if "revoked" in lowered or "another certificate" in lowered:
            return f"the bank has revoked the access token ({said})", f"run `{p} token` again"
        return (
            f"the bank no longer accepts token.json's access token ({said}): revoked, or its"
            " client deleted or suspended",
            f"run `{p} token` again (`{p} status` shows the registration)",
        )
    if status in (404, 405) and step in ("register", "registration", "token", "discover"):
        return (
            f"the bank has no such endpoint ({response.request.method} {response.url})",
            f"read the bank's endpoints again: `{p} discover`",
        )
    if status == 404 and step == "accounts":
        return said, f"`{p} accounts` without --account-id lists the accounts"
    return said, f"see the answer above; `{p} status` shows what has been done"


def _ssa_redirect_uris(tpp: TPP) -> list[str]:
    try:
        _, claims = decode_jwt(tpp.path("ssa.jwt").read_text())
    except (OSError, ValueError):
        return []
    uris = claims.get("software_redirect_uris")
    return [str(u) for u in uris] if isinstance(uris, list) else []


def thumbprint(pem_text: str) -> str:
    """RFC 8705 ``x5t#S256``: base64url SHA-256 of the certificate's DER."""
    der = x509.load_pem_x509_certificate(pem_text.encode()).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def _when(timestamp: float, now: float | None = None) -> str:
    """``2026-12-06 01:06 UTC (in 4 min)`` / ``(3 min ago)``."""
    now = time.time() if now is None else now
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    delta = int(timestamp - now)
    span = abs(delta)
    if span < 90:
        amount = f"{span} s"
    elif span < 90 * 60:
        amount = f"{round(span / 60)} min"
    elif span < 36 * 3600:
        amount = f"{round(span / 3600)} h"
    else:
        amount = f"{round(span / 86400)} days"
    relative = "now" if span < 5 else f"in {amount}" if delta >= 0 else f"{amount} ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({relative})"


#: JWT claims that are times (seconds since 1970)
TIME_CLAIMS = ("iat", "exp", "nbf")


def show_jwt(token: str, *, abbreviate_claims: tuple[str, ...] = ()) -> tuple[dict, dict]:
    header, claims = decode_jwt(token)
    click.echo("header:")
    click.echo(pretty(header))
    shown = {k: (abbreviate(v) if k in abbreviate_claims else v) for k, v in claims.items()}
    click.echo("claims:")
    click.echo(pretty(shown))
    return header, claims


# -- the command line ----------------------------------------------------------------------------


class _InOrder(click.Group):
    """Commands listed in the order of the walkthrough, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_InOrder)
@click.option(
    "--workdir",
    envvar="TPP_WORKDIR",
    default=DEFAULT_WORKDIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="The TPP's files.",
)
@click.pass_context
def cli(ctx: click.Context, workdir: str) -> None:
    """The TPP's command line for the AnyBank sandbox.

    Start with `onboard` (with `make serve` running), then `status` says what to run next."""
    ctx.obj = TPP(workdir)


pass_tpp = click.make_pass_decorator(TPP)


#: ``--ca`` of the commands that locate the Directory and the bank (onboard, init)
_ca_option = click.option(
    "--ca",
    "ca_file",
    type=click.Path(dir_okay=False),
    help="The sandbox CA bundle [default: <workdir>/../directory/ca-bundle.pem, else"
    " instance/directory/ca-bundle.pem].",
)


def _id_option(name: str, what: str, help_text: str) -> Callable[..., Any]:
    """``--org-id`` / ``--software-id``, refusing a placeholder copied as it stands."""

    def refuse(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        return refuse_placeholder(
            value,
            what,
            f"run `{prog()} onboard` or pass the {what} the Directory printed",
        )

    return click.option(name, callback=refuse, help=help_text)


def _locate(tpp: TPP, directory_url: str | None, bank_url: str | None, ca_file: str | None) -> None:
    """Where the Directory, the bank and the CA bundle are: the options, else what tpp.json
    remembers, else the ``make serve`` layout."""
    config = tpp.config
    old_bank = config.get("bank_url")
    config["directory_url"] = (
        directory_url or config.get("directory_url") or DEFAULT_DIRECTORY_URL
    ).rstrip("/")
    config["bank_url"] = (bank_url or config.get("bank_url") or DEFAULT_BANK_URL).rstrip("/")
    if ca_file is None and config.get("ca_file") and os.path.isfile(config["ca_file"]):
        ca_file = config["ca_file"]
    candidates = (
        [ca_file]
        if ca_file
        else [
            str(tpp.workdir.parent / "directory" / "ca-bundle.pem"),
            os.path.join("instance", "directory", "ca-bundle.pem"),
        ]
    )
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise tpp.fail(
            f"no sandbox CA bundle at {' or '.join(candidates)}",
            cause="the sandbox has not been started here, or it keeps its state elsewhere",
            remedy="start it with `make serve` (it prints the bundle's path), or pass --ca",
        )
    config["ca_file"] = os.path.abspath(found)
    if old_bank and old_bank != config["bank_url"]:
        tpp.path("discovery.json").unlink(missing_ok=True)  # another bank: read it afresh


def _forget(tpp: TPP, names: tuple[str, ...] | list[str]) -> list[str]:
    """Remove these files of the working folder; the names of those that were there."""
    removed = []
    for name in names:
        if tpp.path(name).exists():
            tpp.path(name).unlink()
            removed.append(name)
    return removed


@cli.command()
@click.option(
    "--directory",
    "directory_url",
    help=f"The Directory's URL [default: tpp.json's, else {DEFAULT_DIRECTORY_URL}].",
)
@click.option(
    "--bank",
    "bank_url",
    help=f"The bank's URL (its issuer) [default: tpp.json's, else {DEFAULT_BANK_URL}].",
)
@_ca_option
@_id_option("--org-id", "org_id", "Add the software to this organisation [default: a new one].")
@click.option("--org-name", default="Sandbox TPP Ltd", show_default=True)
@click.option("--client-name", default="My TPP", show_default=True, help="The software's name.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    default=("AISP",),
    show_default=True,
    help="Software role (repeat).",
)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    default=(DEFAULT_REDIRECT_URI,),
    show_default=True,
    help="https redirect URI (repeat); the default is the TPP's web page (`web`).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Onboard new software though this folder has some (its files are removed).",
)
@pass_tpp
def onboard(
    tpp: TPP,
    directory_url: str | None,
    bank_url: str | None,
    ca_file: str | None,
    org_id: str | None,
    org_name: str,
    client_name: str,
    roles: tuple[str, ...],
    redirect_uris: tuple[str, ...],
    force: bool,
) -> dict[str, Any]:
    """Have the Directory create the organisation and the software (the "Add new statement"
    form), and remember org_id and software_id in tpp.json: nothing to copy."""
    p = prog()
    if "software_id" in tpp.config and not force:
        raise tpp.fail(
            f"this working folder already belongs to software {tpp.config['software_id']}",
            cause=f"`{p} onboard` (or `{p} init`) ran here before",
            remedy=f"carry on (`{p} status` says with what); for other software use another"
            f" --workdir, or `{p} onboard --force`",
        )
    _locate(tpp, directory_url, bank_url, ca_file)
    if org_id is None:
        url = tpp.directory("/api/organisations")
        response = tpp.http("POST", url, mtls=False, json={"org_name": org_name})
        click.echo(f"POST {url} -> HTTP {response.status_code}")
        expect(tpp, response, 201, what="creating the organisation", step="directory")
        organisation = response.json()
        org_id = organisation["org_id"]
    url = tpp.directory(f"/api/organisations/{org_id}/software")
    body = {"client_name": client_name, "roles": list(roles), "redirect_uris": list(redirect_uris)}
    response = tpp.http("POST", url, mtls=False, json=body)
    click.echo(f"POST {url} -> HTTP {response.status_code}")
    expect(tpp, response, 201, what="creating the software", step="directory")
    software = response.json()
    if force:
        removed = _forget(tpp, list(ARTEFACTS))
        for key in ("certificates", "retired_certificates", "token", "request_options"):
            tpp.config.pop(key, None)
        tpp.config.pop("registered_jti", None)
        if removed:
            click.echo(f"removed the files of the previous software: {', '.join(removed)}")
    tpp.config.update(
        org_id=software["org_id"],
        software_id=software["software_id"],
        client_name=software["client_name"],
        roles=software["roles"],
    )
    tpp.save()
    click.echo(
        f"organisation {software['org_id']}, software {software['software_id']}"
        f" ({', '.join(software['roles'])}; redirect URIs {', '.join(software['redirect_uris'])})"
    )
    click.echo(f"remembered in {tpp.path('tpp.json')}")
    click.echo(f"next: `{p} keys`")
    return software


@cli.command()
@click.option("--directory", "directory_url", help="The Directory's URL.")
@click.option("--bank", "bank_url", help="The bank's URL (its issuer).")
@_ca_option
@_id_option("--org-id", "org_id", "The org_id the Directory gave (or run `onboard`).")
@_id_option("--software-id", "software_id", "The software_id the Directory gave.")
@pass_tpp
def init(
    tpp: TPP,
    directory_url: str | None,
    bank_url: str | None,
    ca_file: str | None,
    org_id: str | None,
    software_id: str | None,
) -> None:
    """Remember where the Directory and the bank are, and (if given) who this TPP is.

    Given ids are checked at the Directory. Without them, `onboard` makes new ones."""
    p = prog()
    if (org_id is None) != (software_id is None):
        raise click.UsageError("give --org-id and --software-id together (or neither)")
    _locate(tpp, directory_url, bank_url, ca_file)
    if software_id is not None:
        url = tpp.directory(f"/api/software/{software_id}")
        response = tpp.http("GET", url, mtls=False)
        if response.status_code == 404:
            raise tpp.fail(
                f"the Directory at {tpp.config['directory_url']} has no software {software_id}",
                cause="the software_id is mistyped, or comes from another sandbox",
                remedy=f"run `{p} onboard`, or pass the software_id the Directory printed",
            )
        expect(tpp, response, 200, what="looking the software up", step="directory")
        if response.json().get("org_id") != org_id:
            raise tpp.fail(
                f"software {software_id} does not belong to organisation {org_id}",
                cause=f"the Directory says its org_id is {response.json().get('org_id')}",
                remedy="pass the org_id the Directory printed with this software",
            )
        found = response.json()
        # what onboard remembers too: the TPP's page and status name the software by them
        tpp.config.update(
            org_id=org_id,
            software_id=software_id,
            client_name=found.get("client_name"),
            roles=found.get("roles") or [],
        )
    tpp.save()
    click.echo(f"TPP working directory: {tpp.workdir}")
    click.echo(pretty(tpp.config))
    if "software_id" not in tpp.config:
        click.echo(f"next: `{p} onboard`")
    else:
        click.echo(f"next: `{p} keys`")


@cli.command()
@pass_tpp
def status(tpp: TPP) -> list[tuple[str, bool, str]]:
    """What has been done in the working folder, the client_id, the token's expiry, and the
    command to run next."""
    p = prog()
    config = tpp.config
    click.echo(f"working folder  {tpp.workdir}")
    for label, key in (
        ("Directory", "directory_url"),
        ("bank", "bank_url"),
        ("CA bundle", "ca_file"),
        ("org_id", "org_id"),
        ("software_id", "software_id"),
    ):
        click.echo(f"{label:<15} {config.get(key, '-')}")
    rows: list[tuple[str, bool, str]] = []
    # (step, done, what there is); the first step not done is the one to run next
    if "software_id" in config:
        roles = ", ".join(config.get("roles") or [])
        rows.append(
            (
                "onboard",
                True,
                f"software {config['software_id']}" + (f" ({roles})" if roles else ""),
            )
        )
    else:
        rows.append(("onboard", False, "no software yet"))
    keys_there = all(tpp.path(f"{t}.key").exists() for t in CERT_TYPES)
    rows.append(("keys", keys_there, "transport.key, signing.key" if keys_there else ""))
    issued = config.get("certificates") or {}
    note = ", ".join(
        f"{t} kid {issued[t]['kid']}"
        + (f" ({issued[t]['profile']})" if issued[t].get("profile", "ob") != "ob" else "")
        + (" REVOKED" if issued[t].get("status") == "revoked" else "")
        for t in CERT_TYPES
        if t in issued
    )
    revoked = [t for t in CERT_TYPES if (issued.get(t) or {}).get("status") == "revoked"]
    rows.append(("upload-csr", all(t in issued for t in CERT_TYPES) and not revoked, note))
    rows.append(_certificate_row(tpp))
    rows.append(_jwt_row(tpp, "ssa", "ssa.jwt"))
    discovery = read_json(tpp.path("discovery.json"))
    rows.append(
        ("discover", discovery is not None, f"issuer {discovery['issuer']}" if discovery else "")
    )
    registration = read_json(tpp.path("registration.json"))
    rows.append(_request_row(tpp, registered=registration is not None))
    if registration is not None:
        rows.append(
            (
                "register",
                True,
                f"client_id {registration.get('client_id')}"
                f" ({registration.get('token_endpoint_auth_method')},"
                f" scope {registration.get('scope')!r})",
            )
        )
    else:
        rows.append(("register", False, "not registered"))
    rows.append(_token_row(tpp, registration))
    rows.append(_consent_row(tpp, registration))
    next_step = None
    for step, done, what in rows:
        mark = "-" if done and what.startswith(NOT_NEEDED) else "x" if done else " "
        click.echo(f"  [{mark}] {step:<11} {what}".rstrip())
        if not done and next_step is None:
            next_step = step
    if revoked:
        click.echo(f"next: `{p} keys --force` (the {' and '.join(revoked)} certificate is revoked)")
    elif next_step is None:
        click.echo(f"next: `{p} accounts` (every step is done)")
    elif next_step == "consent":
        click.echo(f"next: the customer connects: {connect_hint(tpp)} (or `{p} consent`)")
    else:
        click.echo(f"next: `{p} {next_step}`")
    return rows


def _certificate_row(tpp: TPP) -> tuple[str, bool, str]:
    try:
        certificate = x509.load_pem_x509_certificate(tpp.path("transport.pem").read_bytes())
    except (OSError, ValueError):
        return ("download", False, "")
    done = tpp.path("signing.pem").exists()
    note = f"transport.pem valid until {_when(certificate.not_valid_after_utc.timestamp())}"
    if certificate.not_valid_after_utc.timestamp() < time.time():
        return ("download", False, note + ": EXPIRED")
    try:
        key = serialization.load_pem_private_key(tpp.path("transport.key").read_bytes(), None)
    except (OSError, ValueError):
        return ("download", done, note)
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        return ("download", False, "transport.pem is not transport.key's certificate")
    return ("download", done, note)


def _jwt_row(tpp: TPP, step: str, name: str) -> tuple[str, bool, str]:
    try:
        _, claims = decode_jwt(tpp.path(name).read_text())
    except (OSError, ValueError):
        return (step, False, "")
    note = f"{name} issued {_when(claims['iat'])}" if "iat" in claims else name
    if claims.get("org_status"):
        note += f", org_status {claims['org_status']}"
    return (step, True, note)


#: how a row that needs nothing done starts (shown ``[-]``: no file, none needed)
NOT_NEEDED = "not needed"


def _request_row(tpp: TPP, *, registered: bool) -> tuple[str, bool, str]:
    try:
        _, claims = decode_jwt(tpp.path("request.jwt").read_text())
    except (OSError, ValueError):
        if registered:  # removed by `keys --force`: the registration stands without it
            return ("request", True, f"{NOT_NEEDED}: no request.jwt, the registration stands")
        return ("request", False, "no request.jwt")
    if claims.get("jti") == tpp.config.get("registered_jti"):
        # used: fine while registered; to register again it must be made again
        return ("request", registered, "request.jwt was registered (its jti is used)")
    expired = claims.get("exp", 0) < time.time()
    note = f"request.jwt {'expired' if expired else 'expires'} {_when(claims.get('exp', 0))}"
    return ("request", registered or not expired, note)


def _token_row(tpp: TPP, registration: dict[str, Any] | None) -> tuple[str, bool, str]:
    saved = tpp.config.get("token") or {}
    if not tpp.path("token.json").exists():
        return ("token", False, "no access token")
    if registration is None:
        return (
            "token",
            False,
            "token.json belongs to a deleted registration: not usable (request, register, then"
            " token)",
        )
    if saved.get("client_id") and saved["client_id"] != registration.get("client_id"):
        return (
            "token",
            False,
            f"token.json belongs to client {saved['client_id']}, not"
            f" {registration.get('client_id')}: not usable",
        )
    expires_at = saved.get("expires_at")
    if expires_at is None:
        return ("token", True, "token.json")
    scope = saved.get("scope_granted")
    expired = expires_at < time.time()
    note = f"scope {scope!r}, {'expired' if expired else 'expires'} {_when(expires_at)}"
    return ("token", not expired, note)


def _consent_row(tpp: TPP, registration: dict[str, Any] | None) -> tuple[str, bool, str]:
    record = load_consent(tpp) or {}
    if not record.get("access_token"):
        return ("consent", False, "no customer has connected yet")
    if registration is None or record.get("client_id") != registration.get("client_id"):
        return ("consent", False, "consent.json belongs to another registration: not usable")
    status = record.get("status", "Authorised")
    return (
        "consent",
        status == "Authorised",
        f"consent {record.get('consent_id')} {status}",
    )


@cli.command()
@click.option(
    "--force",
    is_flag=True,
    help="Replace existing keys; the certificates and everything signed with the old keys go.",
)
@pass_tpp
def keys(tpp: TPP, force: bool) -> None:
    """Generate the transport and signing keys (RSA 2048) and their CSRs."""
    p = prog()
    subject = ob_subject(tpp.software_id, tpp.org_id)
    slashed = f"/C=GB/O=OpenBanking/OU={tpp.org_id}/CN={tpp.software_id}"
    if not force and any(tpp.path(f"{t}.key").exists() for t in CERT_TYPES):
        raise tpp.fail(
            f"keys exist in {tpp.workdir}; use --force to replace them",
            cause="`keys` ran here before; replacing the keys makes their certificates useless",
            remedy=f"carry on with `{p} status`, or `{p} keys --force` to start the keys over",
        )
    click.echo(f"CSR subject (RFC 4514): {subject.rfc4514_string()}")
    click.echo("The same keys and CSRs with openssl:")
    for cert_type in CERT_TYPES:
        key = generate_key("RSA")
        csr = (
            x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        )
        write_file(tpp.path(f"{cert_type}.key"), key_pem(key), secret=True)
        write_file(tpp.path(f"{cert_type}.csr"), csr.public_bytes(serialization.Encoding.PEM))
        click.echo(
            f'  openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "{slashed}"'
            f" -keyout {cert_type}.key -out {cert_type}.csr"
        )
    click.echo(f"wrote transport.key, transport.csr, signing.key, signing.csr in {tpp.workdir}")
    if not force:
        click.echo(f"next: `{p} upload-csr`")
        return
    # the certificates certify the old keys, the request and the config were signed with or
    # carry them, the token is bound to the old certificate: all of no use now
    removed = _forget(tpp, MADE_WITH_THE_KEYS)
    old = tpp.config.pop("certificates", None) or {}
    tpp.config.pop("token", None)
    if old:
        retired = tpp.config.setdefault("retired_certificates", [])
        retired.extend({"type": t, **record} for t, record in old.items())
    tpp.save()
    if removed:
        click.echo(f"removed (made for the old keys): {', '.join(removed)}")
    active = [(t, r["kid"]) for t, r in old.items() if r.get("status") != "revoked"]
    if active:
        click.echo(
            "the Directory still publishes the old certificates; if the old keys may have"
            " leaked, revoke them:"
        )
        for cert_type, kid in active:
            revoke = f"revoke --software-id {tpp.software_id} --kid {kid}"
            click.echo(f"  {_directory_command(tpp, revoke)}   ({cert_type})")
    eidas = (old.get("transport") or {}).get("profile") == "eidas"
    steps = [f"`{p} upload-csr{' --eidas' if eidas else ''}`", f"`{p} download`"]
    if tpp.path("registration.json").exists():
        client_id = (read_json(tpp.path("registration.json")) or {}).get("client_id")
        steps.append(f"`{p} token` (the registration {client_id} stays)")
    else:
        steps += [f"`{p} request`", f"`{p} register`", f"`{p} token`"]
    click.echo("run again: " + ", ".join(steps))


@cli.command("upload-csr")
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(CERT_TYPES),
    default=CERT_TYPES,
    show_default=True,
)
@click.option(
    "--eidas",
    is_flag=True,
    help="Ask for an eIDAS/OBWAC-shaped transport certificate (subject with the"
    " organizationIdentifier PSDGB-OB-<registration id>) instead of the OB one.",
)
@pass_tpp
def upload_csr(tpp: TPP, types: tuple[str, ...], eidas: bool) -> None:
    """Upload the CSRs; the Directory issues the certificates and publishes the keys."""
    certificates = tpp.config.setdefault("certificates", {})
    for cert_type in types:
        csr = tpp.read(f"{cert_type}.csr", "keys")
        url = tpp.directory(f"/api/software/{tpp.software_id}/certificates/{cert_type}")
        profile = "eidas" if eidas and cert_type == "transport" else "ob"
        params = {"profile": profile} if profile != "ob" else None
        response = tpp.http(
            "POST",
            url,
            mtls=False,
            data=csr,
            params=params,
            headers={"Content-Type": "application/pkcs10"},
        )
        click.echo(f"{cert_type} CSR -> POST {url}" + (f"?profile={profile}" if params else ""))
        record = show_response(response)
        expect(tpp, response, 201, what=f"uploading the {cert_type} CSR", step="directory")
        certificates[cert_type] = {
            "kid": record["kid"],
            "pem_url": record["pem_url"],
            "profile": profile,
        }
        tpp.save()
    click.echo(f"next: `{prog()} download`")


@cli.command()
@pass_tpp
def download(tpp: TPP) -> None:
    """Download the issued certificates as transport.pem and signing.pem."""
    certificates = tpp.config.setdefault("certificates", {})
    for cert_type in CERT_TYPES:
        if cert_type not in certificates:
            # the CSR may have been pasted into the Directory's portal instead of upload-csr
            found = _issued_for_key(tpp, cert_type)
            if found is None:
                raise tpp.fail(
                    f"no {cert_type} certificate issued yet",
                    cause=f"the Directory has issued no active {cert_type} certificate for"
                    f" {cert_type}.key",
                    remedy=f"run `{prog()} upload-csr` (or paste {cert_type}.csr into the"
                    " Directory's portal, then run this again)",
                )
            certificates[cert_type] = found
            tpp.save()
        response = tpp.http("GET", certificates[cert_type]["pem_url"], mtls=False)
        expect(
            tpp, response, 200, what=f"downloading the {cert_type} certificate", step="directory"
        )
        certificate = x509.load_pem_x509_certificate(response.content)
        key = serialization.load_pem_private_key(
            tpp.read(f"{cert_type}.key", "keys").encode(), password=None
        )
        if certificate.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise tpp.fail(
                f"the {cert_type} certificate is not for {cert_type}.key",
                cause=f"{cert_type}.key was replaced after its CSR was uploaded",
                remedy=f"run `{prog()} upload-csr`, then `{prog()} download`",
            )
        write_file(tpp.path(f"{cert_type}.pem"), response.text)
        click.echo(f"{cert_type}.pem (kid {certificates[cert_type]['kid']})")
        click.echo(f"  subject   {_dn(certificate.subject)}")
        click.echo(f"  issuer    {certificate.issuer.rfc4514_string()}")
        click.echo(f"  not after {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        click.echo(f"  x5t#S256  {thumbprint(response.text)}")
    registration = read_json(tpp.path("registration.json"))
    if registration is not None:  # new keys (keys --force): the registration stands
        click.echo(
            f"next: `{prog()} token` (the registration {registration.get('client_id')} stays)"
        )
    else:
        click.echo(f"next: `{prog()} ssa`")


def _issued_for_key(tpp: TPP, cert_type: str) -> dict[str, Any] | None:
    """The newest active certificate of ``cert_type`` the Directory issued for this folder's
    ``<cert_type>.key`` (its kid, pem_url and profile, as upload-csr records them), or None."""
    key = serialization.load_pem_private_key(
        tpp.read(f"{cert_type}.key", "keys").encode(), password=None
    )
    response = tpp.http("GET", tpp.directory(f"/api/software/{tpp.software_id}"), mtls=False)
    expect(tpp, response, 200, what="looking the software up", step="directory")
    for record in reversed(response.json().get("certificates") or []):
        if record.get("type") != cert_type or record.get("status") != "active":
            continue
        issued = tpp.http("GET", record["pem_url"], mtls=False)
        expect(tpp, issued, 200, what=f"downloading the {cert_type} certificate", step="directory")
        certificate = x509.load_pem_x509_certificate(issued.content)
        if certificate.public_key().public_numbers() == key.public_key().public_numbers():  # type: ignore[union-attr]
            return {
                "kid": record["kid"],
                "pem_url": record["pem_url"],
                "profile": record.get("profile", "ob"),
            }
    return None


def _dn(name: x509.Name) -> str:
    """RFC 4514, with organizationIdentifier named (not 2.5.4.97)."""
    return name.rfc4514_string({NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier"})


@cli.command()
@click.option("--password", default="", help="Protect the .p12 (default: no password).")
@pass_tpp
def p12(tpp: TPP, password: str) -> None:
    """Bundle the transport certificate and key as transport.p12 (for browsers, Postman)."""
    cert_path, key_path = tpp.transport_cert()
    certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        # the Directory certifies RSA and EC keys only (and pkcs12 takes those)
        raise tpp.fail(
            f"{key_path} holds a {type(key).__name__}, not an RSA or EC key",
            cause="transport.key was not made by `keys`",
            remedy=f"`{prog()} keys --force`, then `{prog()} upload-csr`, `{prog()} download`",
        )
    chain = x509.load_pem_x509_certificates(Path(tpp.ca_file).read_bytes())
    encryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    name = f"{tpp.software_id} transport".encode()
    data = pkcs12.serialize_key_and_certificates(
        name,
        key,
        certificate,
        chain,
        encryption,
    )
    write_file(tpp.path("transport.p12"), data, secret=True)
    loaded = pkcs12.load_pkcs12(data, password.encode() or None)
    passout = "pass:..." if password else "pass:"
    click.echo("The same with openssl:")
    click.echo(
        f"  openssl pkcs12 -export -in transport.pem -inkey transport.key"
        f' -certfile {os.path.basename(tpp.ca_file)} -name "{name.decode()}"'
        f" -passout {passout} -out transport.p12"
    )
    assert loaded.cert is not None
    click.echo(
        f"wrote transport.p12 ({len(data)} bytes): key + certificate"
        f" {loaded.cert.certificate.subject.rfc4514_string()} + {len(loaded.additional_certs)}"
        " CA certificate(s)"
    )


@cli.command("jwks")
@pass_tpp
def show_jwks(tpp: TPP) -> None:
    """Show the keys the Directory publishes for this software (and the revoked ones)."""
    for label, path in (
        ("published", f"/{tpp.org_id}/{tpp.software_id}.jwks"),
        ("revoked", f"/{tpp.org_id}/revoked/{tpp.software_id}.jwks"),
    ):
        url = tpp.directory(path)
        response = tpp.http("GET", url, mtls=False)
        expect(tpp, response, 200, what=f"fetching {url}", step="directory")
        keys = response.json()["keys"]
        click.echo(f"{label}: GET {url} -> {len(keys)} key(s)")
        for key in keys:
            leaf = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
            shown = {
                "kid": key["kid"],
                "use": key["use"],
                "kty": key["kty"],
                "x5t#S256": key.get("x5t#S256"),
                "x5c": [abbreviate(c, 16) for c in key["x5c"]],
                "(x5c[0] subject)": _dn(leaf.subject),
            }
            click.echo(pretty(shown))


@cli.command()
@pass_tpp
def ssa(tpp: TPP) -> None:
    """Ask the Directory for a software statement (the "Generate" button) and decode it."""
    url = tpp.directory(f"/api/software/{tpp.software_id}/ssa")
    response = tpp.http("POST", url, mtls=False)
    expect(tpp, response, 201, what="generating the SSA", step="directory")
    token = response.text.strip()
    write_file(tpp.path("ssa.jwt"), token + "\n")
    click.echo(f"POST {url} -> HTTP {response.status_code}, {response.headers['Content-Type']}")
    click.echo(f"ssa.jwt ({len(token)} characters): {abbreviate(token, 40)}")
    show_jwt(token)


def fetch_discovery(tpp: TPP) -> dict[str, Any]:
    url = tpp.need("bank_url") + "/.well-known/openid-configuration"
    response = tpp.http("GET", url, mtls=False)
    expect(tpp, response, 200, what="reading the bank's discovery document", step="discover")
    document = response.json()
    write_json(tpp.path("discovery.json"), document)
    return document


@cli.command()
@pass_tpp
def discover(tpp: TPP) -> None:
    """Read the bank's OpenID configuration (no client certificate needed)."""
    url = tpp.need("bank_url") + "/.well-known/openid-configuration"
    click.echo(f"GET {url}  (no client certificate)")
    click.echo(pretty(fetch_discovery(tpp)))


def registration_claims(tpp: TPP, options: dict[str, Any]) -> dict[str, Any]:
    """The registration request the TPP signs (OB DCR 3.x claims)."""
    software_statement = tpp.read("ssa.jwt", "ssa").strip()
    _, ssa_claims = decode_jwt(software_statement)
    transport = x509.load_pem_x509_certificate(tpp.read("transport.pem", "download").encode())
    now = _now()
    method = options["auth_method"]
    claims: dict[str, Any] = {
        "iss": tpp.software_id,
        "iat": now,
        "exp": now + REQUEST_LIFETIME,
        "aud": tpp.discovery()["issuer"],
        "jti": str(uuid.uuid4()),
        "software_id": tpp.software_id,
        "software_statement": software_statement,
        "redirect_uris": options.get("redirect_uris") or ssa_claims["software_redirect_uris"],
        "token_endpoint_auth_method": method,
        # client_credentials for the consents API, the code (and its refresh) for the
        # customer's consent journey; the code comes with an id_token (OIDC hybrid flow)
        "grant_types": list(GRANT_TYPES),
        "response_types": ["code id_token"],
        "scope": options["scope"],
        "application_type": "web",
        "id_token_signed_response_alg": ALG,
        "request_object_signing_alg": ALG,
    }
    if method == "tls_client_auth":
        claims["tls_client_auth_subject_dn"] = transport.subject.rfc4514_string()
    else:
        claims["token_endpoint_auth_signing_alg"] = ALG
    return claims


def sign_request(tpp: TPP, options: dict[str, Any]) -> str:
    return sign_jwt(registration_claims(tpp, options), tpp.signing_key(), alg=ALG)


@cli.command("request")
@click.option(
    "--auth-method",
    type=click.Choice(AUTH_METHODS),
    default="tls_client_auth",
    show_default=True,
    help="How the client will authenticate at the token endpoint.",
)
@click.option("--scope", default="openid accounts", show_default=True)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="Default: the SSA's software_redirect_uris.",
)
@pass_tpp
def build_request(tpp: TPP, auth_method: str, scope: str, redirect_uris: tuple[str, ...]) -> None:
    """Build the registration request JWT, sign it PS256 with the signing key, decode it."""
    options = {"auth_method": auth_method, "scope": scope, "redirect_uris": list(redirect_uris)}
    token = sign_request(tpp, options)
    tpp.config["request_options"] = options
    tpp.save()
    write_file(tpp.path("request.jwt"), token + "\n")
    click.echo(f"request.jwt ({len(token)} characters), signed {ALG} with signing.key:")
    show_jwt(token, abbreviate_claims=("software_statement",))
    click.echo(
        f"valid until {_when(_now() + REQUEST_LIFETIME)}; next: `{prog()} register` (or"
        f" `{prog()} explain` first)"
    )


def _registration_endpoint(tpp: TPP) -> str:
    return tpp.discovery()["registration_endpoint"]


#: what to run when the bank's explain report says a policy failed (by the policy's name)
POLICY_REMEDIES = {
    "request_body": "`{p} request` makes a well-formed one",
    "request_jwt": "`{p} request` makes a well-formed one",
    "software_statement": "get a fresh software statement: `{p} ssa`, then `{p} request`",
    "request_signature": "have the signing key published: `{p} upload-csr`, `{p} download`,"
    " then `{p} request`",
    "request_claims": "`{p} request` again (and `{p} discover` if the aud is wrong)",
    "redirect_uris": "`{p} request --redirect-uri URI` with URIs of the software statement",
    "token_endpoint_auth": "`{p} request --auth-method tls_client_auth|private_key_jwt`",
    "grant_types": "`{p} request` again",
    "scope": "`{p} request --scope ...` within the software's roles",
    "application_type": "`{p} request` again",
    "signing_algorithms": "`{p} request` again",
    "transport_certificate": "present this software's certificate: `{p} download` (or new"
    " ones: `{p} keys --force`, `{p} upload-csr`, `{p} download`)",
    "key_revocation": "get new keys and certificates: `{p} keys --force`, `{p} upload-csr`,"
    " `{p} download`, then `{p} request`",
}


@cli.command()
@click.option("--no-cert", is_flag=True, help="Leave out the transport certificate.")
@pass_tpp
def explain(tpp: TPP, no_cert: bool) -> dict[str, Any]:
    """Ask the bank how it would judge request.jwt, policy by policy (POST
    <registration_endpoint>/explain over mutual TLS): nothing is stored and the request's jti
    stays unused, so `register` can send the same file afterwards. Exit status 1 when the bank
    would refuse it."""
    p = prog()
    body = tpp.read("request.jwt", "request").strip()
    url = _registration_endpoint(tpp).rstrip("/") + "/explain"
    click.echo(
        f"POST {url}  Content-Type: application/jwt"
        + ("  (no client certificate)" if no_cert else "  (mutual TLS: transport.pem)")
    )
    response = tpp.http(
        "POST", url, mtls=not no_cert, data=body, headers={"Content-Type": "application/jwt"}
    )
    if response.status_code in (404, 405):
        click.echo(f"HTTP {response.status_code} {_phrase(response)}")
        raise tpp.fail(
            "the bank does not explain registrations",
            cause=f"POST {url} answered HTTP {response.status_code}: the bank has not enabled"
            " explain (OBDCR_EXPLAIN_ENDPOINT)",
            remedy=f"send the request and read the bank's refusal: `{p} register` (a bank"
            " turns explain on with OBDCR_EXPLAIN_ENDPOINT=True)",
        )
    if response.status_code != 200:
        show_response(response)
        expect(tpp, response, 200, what="explaining the request", step="explain", no_cert=no_cert)
    click.echo(f"HTTP {response.status_code} {_phrase(response)}")
    try:
        answer = response.json()
        report = answer["report"]
    except (ValueError, KeyError, TypeError):
        raise tpp.fail(
            "the bank's explain answer is not a report",
            cause=f"POST {url} answered {abbreviate(response.text, 60)!r}",
            remedy=f"send the request and read the bank's answer: `{p} register`",
        ) from None
    width = max([len("policy"), *(len(str(row.get("policy", ""))) for row in report)])
    click.echo(f"{'policy':<{width}}  {'verdict':<11}  detail")
    for row in report:
        line = f"{row.get('policy', '')!s:<{width}}  {row.get('verdict', '')!s:<11}"
        if row.get("detail"):
            line += f"  {row['detail']}"
        click.echo(line.rstrip())
        if row.get("clause") and row.get("verdict") == "failed":
            click.echo(f"{'':<{width}}  {'':<11}  see: {row['clause']}")
    if answer.get("registrable"):
        click.echo(f"registrable: yes (the jti is unused: `{p} register` sends this request)")
        return answer
    failed: dict[str, Any] = next((r for r in report if r.get("verdict") == "failed"), {})
    policy = str(failed.get("policy", ""))
    click.echo("registrable: no")
    raise tpp.fail(
        "the bank would refuse request.jwt",
        cause=f"{policy or 'a policy'}: {failed.get('detail') or 'failed'}",
        remedy=POLICY_REMEDIES.get(policy, "fix it, then `{p} request` and `{p} explain`").format(
            p=p
        ),
    )


@cli.command()
@click.option("--no-cert", is_flag=True, help="Leave out the transport certificate.")
@click.option(
    "--brief",
    is_flag=True,
    help="Only client_id, the auth method, scope and redirect_uris, on one line.",
)
@pass_tpp
def register(tpp: TPP, no_cert: bool, brief: bool) -> None:
    """POST request.jwt to the bank's registration endpoint over mutual TLS."""
    body = tpp.read("request.jwt", "request").strip()
    url = _registration_endpoint(tpp)
    click.echo(
        f"POST {url}  Content-Type: application/jwt"
        + ("  (no client certificate)" if no_cert else "  (mutual TLS: transport.pem)")
    )
    response = tpp.http(
        "POST", url, mtls=not no_cert, data=body, headers={"Content-Type": "application/jwt"}
    )
    registration = show_registration(response, brief=brief)
    expect(tpp, response, 201, what="registration", step="register", no_cert=no_cert)
    write_json(tpp.path("registration.json"), registration, secret=True)
    try:
        tpp.config["registered_jti"] = decode_jwt(body)[1].get("jti")
    except ValueError:
        pass
    tpp.save()
    click.echo(f"client_id {registration['client_id']}; next: `{prog()} token`")
    if "authorization_code" in (registration.get("grant_types") or []):
        page, _running = web_page(tpp)
        click.echo(f"and a customer's consent: open {page}/ in a browser (or `{prog()} consent`)")


def _registration(tpp: TPP) -> dict[str, Any]:
    registration = read_json(tpp.path("registration.json"))
    if registration is None:
        p = prog()
        raise tpp.fail(
            "not registered",
            cause="there is no registration.json here: not registered yet, or deleted",
            remedy=f"register: `{p} request`, then `{p} register`",
        )
    return registration


@cli.command()
@click.option("--scope", default="accounts", show_default=True)
@click.option("--no-cert", is_flag=True, help="Leave out the transport certificate.")
@pass_tpp
def token(tpp: TPP, scope: str, no_cert: bool) -> None:
    """Get an access token (client_credentials) with the registered auth method."""
    registration = _registration(tpp)
    discovery = tpp.discovery()
    method = registration["token_endpoint_auth_method"]
    form = {"grant_type": "client_credentials", "scope": scope}
    form.update(client_authentication(tpp, registration, discovery))
    click.echo(
        f"POST {discovery['token_endpoint']}  ({method}"
        + (", no client certificate)" if no_cert else ", mutual TLS)")
    )
    response = tpp.http("POST", discovery["token_endpoint"], mtls=not no_cert, data=form)
    body = show_response(response)
    expect(tpp, response, 200, what="the token request", step="token", no_cert=no_cert, scope=scope)
    write_json(tpp.path("token.json"), body, secret=True)
    granted = body.get("scope", "")
    expires_in = body.get("expires_in")
    tpp.config["token"] = {
        "scope_asked": scope,
        "scope_granted": granted,
        "obtained_at": int(time.time()),
        "expires_at": int(time.time()) + int(expires_in) if expires_in else None,
        "client_id": registration["client_id"],
    }
    tpp.save()
    if no_cert:
        click.echo("the bank issued the token without a certificate: it is not bound")
    else:
        click.echo(
            "the bank binds the token to the transport certificate (RFC 8705): x5t#S256 "
            + thumbprint(tpp.read("transport.pem", "download"))
        )
    if set(granted.split()) != set(scope.split()):
        click.echo(
            f"warning: the bank granted scope {granted!r}, not the {scope!r} asked for"
            f" (this client registered {registration.get('scope')!r})",
            err=True,
        )
    if expires_in:
        click.echo(f"expires {_when(time.time() + int(expires_in))}")


def client_authentication(
    tpp: TPP, registration: dict[str, Any], discovery: dict[str, Any]
) -> dict[str, str]:
    """The form fields that authenticate the client at the token endpoint, by its registered
    method: with tls_client_auth the certificate does it and the form names the client_id;
    with private_key_jwt a client assertion signed with the signing key (RFC 7523)."""
    if registration.get("token_endpoint_auth_method") == "private_key_jwt":
        now = _now()
        claims = {
            "iss": registration["client_id"],
            "sub": registration["client_id"],
            "aud": discovery["token_endpoint"],
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 300,
        }
        assertion = sign_jwt(claims, tpp.signing_key(), alg=ALG)
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    return {"client_id": registration["client_id"]}


def _access_token(tpp: TPP) -> str:
    saved = read_json(tpp.path("token.json"))
    if saved is None:
        raise tpp.missing("token.json", "token")
    return saved["access_token"]


# -- the customer's consent journey (OB Read/Write API v3.1 AISP, FAPI 1 Advanced) -------------
#
# The TPP asks the bank for an account-access-consent (client_credentials token, mTLS), sends
# the customer's browser to the bank's authorization endpoint with a signed request object
# naming the consent, and gets the browser back at its redirect URI with a code and an
# id_token in the fragment (OIDC hybrid flow, response_type "code id_token"). It checks the
# id_token, exchanges the code over mTLS for an access token bound to its certificate, and
# reads the accounts the customer chose. ``obdcr-tpp web`` (example_app.tpp_web) is the page
# that does it in a browser; ``consent`` and ``callback`` do the same by hand.

#: the AISP permissions a consent may ask for (OB Read/Write API v3.1, account-access-consents)
PERMISSIONS = (
    "ReadAccountsBasic",
    "ReadAccountsDetail",
    "ReadBalances",
    "ReadBeneficiariesBasic",
    "ReadBeneficiariesDetail",
    "ReadDirectDebits",
    "ReadProducts",
    "ReadStandingOrdersBasic",
    "ReadStandingOrdersDetail",
    "ReadTransactionsBasic",
    "ReadTransactionsCredits",
    "ReadTransactionsDebits",
    "ReadTransactionsDetail",
)
DEFAULT_PERMISSIONS = ("ReadAccountsBasic", "ReadAccountsDetail", "ReadBalances")
ACCOUNT_ACCESS_CONSENTS_PATH = "/open-banking/v3.1/aisp/account-access-consents"
ACCOUNTS_PATH = "/open-banking/v3.1/aisp/accounts"
#: days a new consent runs for (its ExpirationDateTime)
CONSENT_DAYS = 90
#: seconds a request object is valid for (the bank takes at most an hour between nbf and exp)
REQUEST_OBJECT_LIFETIME = 300
#: seconds an authorization started here waits for the browser to come back
AUTHORIZATION_LIFETIME = 600
#: seconds of clock difference tolerated when checking the id_token's exp and iat
ID_TOKEN_LEEWAY = 30
SCA_ACR = "urn:openbanking:psd2:sca"
#: what an id_token's ``c_hash``/``s_hash`` are made with, by the id_token's algorithm
HASHES = {"PS256": hashlib.sha256, "ES256": hashlib.sha256, "RS256": hashlib.sha256}


class InvalidAnswer(Failed):
    """The answer the browser brought back cannot be accepted (unknown state, another
    browser's, nothing in it): nothing is exchanged."""


class InvalidIdToken(InvalidAnswer):
    """The id_token the bank sent back does not hold (signature, issuer, audience, expiry,
    nonce, hashes, consent): nothing is exchanged."""


def consents_endpoint(tpp: TPP) -> str:
    discovery = tpp.discovery()
    return discovery.get("account_access_consents_endpoint") or (
        tpp.need("bank_url") + ACCOUNT_ACCESS_CONSENTS_PATH
    )


def accounts_endpoint(tpp: TPP) -> str:
    return tpp.discovery().get("accounts_endpoint") or (tpp.need("bank_url") + ACCOUNTS_PATH)


def _ob_headers(access_token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {access_token}",
        "x-fapi-interaction-id": str(uuid.uuid4()),
        "Accept": "application/json",
    }


def client_credentials_token(tpp: TPP, scope: str = "accounts") -> dict[str, Any]:
    """A client_credentials token (the TPP's own, no customer behind it), for the consents
    API; not kept in token.json (that is `token`'s)."""
    registration = _registration(tpp)
    discovery = tpp.discovery()
    form = {"grant_type": "client_credentials", "scope": scope}
    form.update(client_authentication(tpp, registration, discovery))
    response = tpp.http("POST", discovery["token_endpoint"], data=form)
    expect(tpp, response, 200, what="the token request", step="token", scope=scope)
    return response.json()


def create_consent(
    tpp: TPP,
    permissions: tuple[str, ...] | list[str] = DEFAULT_PERMISSIONS,
    *,
    days: int = CONSENT_DAYS,
    access_token: str | None = None,
) -> dict[str, Any]:
    """POST an account-access-consent (its ``Data``: ConsentId, Status AwaitingAuthorisation,
    Permissions, ExpirationDateTime)."""
    token_value = access_token or client_credentials_token(tpp)["access_token"]
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    body = {
        "Data": {
            "Permissions": list(permissions),
            "ExpirationDateTime": expires.replace(microsecond=0).isoformat(),
        },
        "Risk": {},
    }
    response = tpp.http("POST", consents_endpoint(tpp), json=body, headers=_ob_headers(token_value))
    expect(tpp, response, 201, what="creating the consent", step="consent")
    return response.json()["Data"]


def consent_status(tpp: TPP, consent_id: str) -> dict[str, Any]:
    """GET the consent: its Status (AwaitingAuthorisation, Authorised, Rejected, Revoked)."""
    token_value = client_credentials_token(tpp)["access_token"]
    url = f"{consents_endpoint(tpp)}/{consent_id}"
    response = tpp.http("GET", url, headers=_ob_headers(token_value))
    expect(tpp, response, 200, what="reading the consent", step="consent")
    return response.json()["Data"]


def delete_consent(tpp: TPP, consent_id: str) -> None:
    """DELETE the consent: the bank marks it Revoked, and its tokens open nothing any more."""
    token_value = client_credentials_token(tpp)["access_token"]
    url = f"{consents_endpoint(tpp)}/{consent_id}"
    response = tpp.http("DELETE", url, headers=_ob_headers(token_value))
    expect(tpp, response, 204, what="revoking the consent", step="consent")
    record = load_consent(tpp)
    if record and record.get("consent_id") == consent_id:
        record["status"] = "Revoked"
        write_json(tpp.path("consent.json"), record, secret=True)


def request_object_claims(
    tpp: TPP, consent_id: str, *, redirect_uri: str, state: str, nonce: str
) -> dict[str, Any]:
    """The authorization request as a request object (OIDC Core 6.1, RFC 9101): everything
    the bank acts on, signed, with the consent asked for as an essential id_token claim."""
    registration = _registration(tpp)
    now = _now()
    return {
        "iss": registration["client_id"],
        "aud": tpp.discovery()["issuer"],
        "client_id": registration["client_id"],
        "response_type": "code id_token",
        "redirect_uri": redirect_uri,
        "scope": "openid accounts",
        "state": state,
        "nonce": nonce,
        "iat": now,
        "nbf": now,
        "exp": now + REQUEST_OBJECT_LIFETIME,
        "jti": str(uuid.uuid4()),
        "claims": {
            "id_token": {
                "openbanking_intent_id": {"value": consent_id, "essential": True},
                "acr": {"essential": True, "values": [SCA_ACR]},
            }
        },
    }


def request_object_alg(tpp: TPP) -> str:
    return str(_registration(tpp).get("request_object_signing_alg") or ALG)


def sign_request_object(tpp: TPP, claims: dict[str, Any], *, key: jwk.JWK | None = None) -> str:
    """The request object, signed with the registered request_object_signing_alg by the
    signing key (its kid: the one the Directory publishes), or by ``key``."""
    alg = request_object_alg(tpp)
    signing_key = key if key is not None else tpp.signing_key()
    if alg.startswith("ES") != (signing_key.get("kty") == "EC"):
        raise tpp.fail(
            f"signing.key cannot sign {alg}",
            cause=f"the client registered request_object_signing_alg {alg}, and signing.key"
            f" is a {signing_key.get('kty')} key",
            remedy=f"register again with an {signing_key.get('kty')} algorithm (`{prog()}"
            " request`, `register`)",
        )
    return sign_jwt(claims, signing_key, alg=alg)


def authorize_url(tpp: TPP, claims: dict[str, Any], request_object: str) -> str:
    """The bank's authorization endpoint with the request object, and the parameters OIDC
    wants in the query too (the request object's values win at the bank)."""
    endpoint = tpp.discovery().get("authorization_endpoint") or (
        tpp.need("bank_url") + "/authorize"
    )
    query = {
        "client_id": claims["client_id"],
        "response_type": claims["response_type"],
        "scope": claims["scope"],
        "redirect_uri": claims["redirect_uri"],
        "state": claims["state"],
        "nonce": claims["nonce"],
        "request": request_object,
    }
    return f"{endpoint}?{urlencode(query)}"


def redirect_uri_of(tpp: TPP) -> str:
    """The redirect URI to use: the web page's (:func:`web_page`) if registered, else the
    first registered one."""
    uris = list(_registration(tpp).get("redirect_uris") or [])
    page = web_page(tpp)[0] + "/callback"
    return page if page in uris or not uris else uris[0]


#: the file ``web`` writes its URL to while it runs (and removes when it stops)
WEB_URL_FILE = "web.url"


def _answers(url: str) -> bool:
    """Whether something accepts connections at the URL's host and port."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=1).close()
    except (OSError, ValueError):
        return False
    return True


def _loopback_page(uri: str) -> str | None:
    """The page's URL of a redirect URI ``https://<loopback address>:<port>/callback``."""
    parts = urlsplit(uri)
    try:
        loopback = ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return None
    if parts.scheme != "https" or not loopback or parts.path != "/callback":
        return None
    return f"https://{parts.netloc}"


def web_page(tpp: TPP) -> tuple[str, bool]:
    """Where this working folder's web page is, and whether it runs now: the page a sandbox
    runs for this folder (``make serve``: ``<instance>/run/sandbox.json``), or the one
    `web` started (its ``web.url``); else the page of a registered loopback redirect URI;
    else ``make serve``'s default (port 7443)."""
    from .sandbox import running

    found = []
    if tpp.workdir.name == "tpp":  # a sandbox's TPP folder: <instance>/tpp
        info = running(tpp.workdir.parent) or {}
        found.append(info.get("tpp_url"))
    with contextlib.suppress(OSError):
        found.append(tpp.path(WEB_URL_FILE).read_text().strip())
    for url in found:
        if url and _answers(url):
            return url.rstrip("/"), True
    registration = read_json(tpp.path("registration.json")) or {}
    for uri in registration.get("redirect_uris") or []:
        page = _loopback_page(uri)
        if page:
            return page, False
    return DEFAULT_REDIRECT_URI.removesuffix("/callback"), False


def connect_hint(tpp: TPP) -> str:
    """How the customer connects: open the running page, or start it first."""
    url, runs = web_page(tpp)
    if runs:
        return f"open {url}/ in a browser and Connect"
    port = urlsplit(url).port
    option = f" --port {port}" if port != DEFAULT_WEB_PORT else ""
    return f"`{prog()} web{option}`, then open {url}/"


def start_authorization(
    tpp: TPP,
    consent_id: str,
    *,
    redirect_uri: str,
    origin: str,
    key: jwk.JWK | None = None,
) -> tuple[str, dict[str, Any]]:
    """A fresh state and nonce for a consent, remembered in authorizations.json (so the
    callback, in this process or another, knows them), and the URL to send the browser to.
    ``origin`` "web" binds it to the browser session that started it; "cli" does not (the
    person who ran `consent` opens the URL themselves)."""
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    claims = request_object_claims(
        tpp, consent_id, redirect_uri=redirect_uri, state=state, nonce=nonce
    )
    url = authorize_url(tpp, claims, sign_request_object(tpp, claims, key=key))
    pending = _pending(tpp)
    pending[state] = {
        "nonce": nonce,
        "consent_id": consent_id,
        "redirect_uri": redirect_uri,
        "origin": origin,
        "created_at": int(time.time()),
    }
    write_json(tpp.path("authorizations.json"), pending, secret=True)
    return url, claims


def _pending(tpp: TPP) -> dict[str, Any]:
    """The authorizations waiting for the browser, without the ones too old to come back."""
    pending = read_json(tpp.path("authorizations.json"), {}) or {}
    oldest = time.time() - AUTHORIZATION_LIFETIME
    return {s: a for s, a in pending.items() if a.get("created_at", 0) >= oldest}


def take_authorization(tpp: TPP, state: str) -> dict[str, Any]:
    """The authorization ``state`` names, forgotten at once (a state is answered once)."""
    pending = _pending(tpp)
    found = pending.pop(state, None) if state else None
    if found is None:
        raise InvalidAnswer(
            "the bank's answer names no authorization this TPP started",
            cause="its state is unknown here: answered already, older than"
            f" {AUTHORIZATION_LIFETIME // 60} minutes, or not started by this TPP",
            remedy=f"start again: connect on the TPP's page, or `{prog()} consent`",
            folder=tpp.workdir,
        )
    write_json(tpp.path("authorizations.json"), pending, secret=True)
    return found


def parse_redirect(url_or_fragment: str) -> dict[str, str]:
    """The parameters of the bank's answer: the fragment of the redirect URL (hybrid flow),
    else its query (an error some servers send there)."""
    parts = urlsplit(url_or_fragment.strip())
    text = parts.fragment or parts.query
    if not parts.scheme and not parts.fragment and not parts.query:
        text = url_or_fragment.strip().lstrip("#")
    return {k: v for k, v in parse_qsl(text, keep_blank_values=True)}


def _half_hash(value: str, alg: str) -> str:
    """OIDC Core 3.3.2.11: the left half of the hash of the ASCII value, base64url."""
    digest = HASHES[alg](value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).decode().rstrip("=")


def bank_jwks(tpp: TPP) -> jwk.JWKSet:
    url = tpp.discovery().get("jwks_uri") or (tpp.need("bank_url") + "/jwks")
    response = tpp.http("GET", url, mtls=False)
    expect(tpp, response, 200, what="reading the bank's id_token keys", step="discover")
    try:
        return jwk.JWKSet.from_json(response.text)
    except (ValueError, TypeError, jwk.InvalidJWKValue):
        raise tpp.fail(
            "the bank's jwks_uri is not a JWK set",
            cause=f"GET {url} answered {abbreviate(response.text, 40)!r}",
            remedy=f"read the bank's endpoints again: `{prog()} discover`",
        ) from None


def verify_id_token(
    tpp: TPP,
    id_token: str,
    *,
    nonce: str,
    consent_id: str,
    code: str | None = None,
    state: str | None = None,
) -> dict[str, Any]:
    """The id_token's claims once it holds (OIDC Core 3.3.2.12, FAPI 1 Advanced 5.2.2.1, OB
    security profile): signed with the client's registered id_token_signed_response_alg by a
    key of the bank's jwks_uri; iss the bank; aud this client; not expired; the nonce sent;
    c_hash of the code and s_hash of the state; openbanking_intent_id the consent asked for.
    Else :class:`InvalidIdToken` saying which."""
    registration = _registration(tpp)
    expected_alg = str(registration.get("id_token_signed_response_alg") or ALG)
    p = prog()

    def invalid(why: str) -> InvalidIdToken:
        return InvalidIdToken(
            "the id_token is not valid: nothing was exchanged",
            cause=why,
            remedy=f"start again (connect on the TPP's page, or `{p} consent`); if it"
            " persists, the bank is not the one this TPP registered with",
            folder=tpp.workdir,
        )

    try:
        token = jws.JWS()
        token.deserialize(id_token)
        header = token.jose_header
    except (jws.InvalidJWSObject, ValueError, TypeError):
        raise invalid("it is not a compact JWS") from None
    if not isinstance(header, dict) or header.get("alg") != expected_alg:
        alg = header.get("alg") if isinstance(header, dict) else None
        raise invalid(
            f"it is signed {alg}, not {expected_alg} (the client's id_token_signed_response_alg)"
        )
    keys = bank_jwks(tpp)
    kid = header.get("kid")
    candidates = [keys.get_key(kid)] if kid else list(keys)
    verified = False
    for key in candidates:
        if key is None:
            continue
        try:
            token.verify(key, alg=expected_alg)
        except jws.InvalidJWSSignature:
            continue
        verified = True
        break
    if not verified:
        raise invalid(
            "its signature does not verify with the bank's keys (jwks_uri)"
            + (f": no key {kid}" if kid and keys.get_key(kid) is None else "")
        )
    try:
        claims = json.loads(token.payload)
    except ValueError:
        raise invalid("its payload is not JSON") from None
    if not isinstance(claims, dict):
        raise invalid("its payload is not a JSON object")
    issuer = tpp.discovery()["issuer"]
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    now = time.time()
    problems = [
        (claims.get("iss") != issuer, f"iss is {claims.get('iss')!r}, not the bank's {issuer!r}"),
        (
            registration["client_id"] not in audiences,
            f"aud is {audience!r}, not this client ({registration['client_id']})",
        ),
        (
            not isinstance(claims.get("exp"), int | float) or claims["exp"] + ID_TOKEN_LEEWAY < now,
            f"it expired (exp {claims.get('exp')!r})",
        ),
        (
            not isinstance(claims.get("iat"), int | float) or claims["iat"] - ID_TOKEN_LEEWAY > now,
            f"iat {claims.get('iat')!r} is missing or in the future",
        ),
        (claims.get("nonce") != nonce, "its nonce is not the one this TPP sent"),
        (
            claims.get("openbanking_intent_id") != consent_id,
            f"openbanking_intent_id is {claims.get('openbanking_intent_id')!r}, not the consent"
            f" asked for ({consent_id})",
        ),
        (
            code is not None and claims.get("c_hash") != _half_hash(code, expected_alg),
            "c_hash is not the hash of the code it came with (the code was swapped?)",
        ),
        (
            state is not None and claims.get("s_hash") != _half_hash(state, expected_alg),
            "s_hash is not the hash of the state it came with",
        ),
    ]
    for wrong, why in problems:
        if wrong:
            raise invalid(why)
    return claims


def _token_grant(tpp: TPP, form: dict[str, str], *, what: str) -> dict[str, Any]:
    registration = _registration(tpp)
    discovery = tpp.discovery()
    form = {**form, **client_authentication(tpp, registration, discovery)}
    response = tpp.http("POST", discovery["token_endpoint"], data=form)
    expect(tpp, response, 200, what=what, step="token")
    return response.json()


def exchange_code(tpp: TPP, code: str, *, redirect_uri: str) -> dict[str, Any]:
    """The authorization_code grant over mTLS with the registered auth method."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    return _token_grant(tpp, form, what="exchanging the code")


def complete_authorization(
    tpp: TPP, answer: dict[str, str], *, session_state: str | None = None
) -> dict[str, Any]:
    """The bank's answer (the redirect's parameters) for an authorization started here: the
    state known (and, for one started on the web page, this browser's); an error shown as
    the bank gave it (the customer denied, say: :class:`ConsentDenied`); else the id_token
    checked, the code exchanged, the tokens kept in consent.json. Returns that record."""
    state = answer.get("state", "")
    pending = take_authorization(tpp, state)
    if pending.get("origin") == "web" and session_state != state:
        raise InvalidAnswer(
            "this browser did not start that authorization",
            cause="its state belongs to another browser session (a forged or stolen redirect?)",
            remedy="start again from the TPP's page, in this browser",
            folder=tpp.workdir,
        )
    if answer.get("error"):
        error, description = answer["error"], answer.get("error_description", "")
        denied = ConsentDenied if error == "access_denied" else Failed
        failure = denied(
            f"the bank answered {error}" + (f": {description}" if description else ""),
            cause="the customer denied access at the bank"
            if error == "access_denied"
            else "the bank did not authorise the request",
            remedy=f"ask the customer again: connect on the TPP's page, or `{prog()} consent`",
            folder=tpp.workdir,
        )
        if isinstance(failure, ConsentDenied):
            failure.consent_id = pending["consent_id"]
        else:
            failure.upstream = True
        raise failure
    code, id_token = answer.get("code", ""), answer.get("id_token", "")
    if not code or not id_token:
        raise InvalidAnswer(
            "the bank's answer has no code and id_token",
            cause="the redirect carried neither an error nor code and id_token",
            remedy="start again; the whole redirect URL (with its #fragment) is needed",
            folder=tpp.workdir,
        )
    claims = verify_id_token(
        tpp,
        id_token,
        nonce=pending["nonce"],
        consent_id=pending["consent_id"],
        code=code,
        state=state,
    )
    tokens = exchange_code(tpp, code, redirect_uri=pending["redirect_uri"])
    if "id_token" in tokens:  # the token endpoint's id_token: the same checks, no hashes
        verify_id_token(
            tpp, tokens["id_token"], nonce=pending["nonce"], consent_id=pending["consent_id"]
        )
    return save_tokens(tpp, tokens, consent_id=pending["consent_id"], claims=claims)


class ConsentDenied(Failed):
    """The customer said no at the bank (``access_denied``); ``consent_id`` the consent."""

    consent_id: str | None = None


def save_tokens(
    tpp: TPP, tokens: dict[str, Any], *, consent_id: str, claims: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Keep the consent's tokens in consent.json (owner-only; never printed)."""
    record = load_consent(tpp) or {}
    if record.get("consent_id") != consent_id:
        record = {"consent_id": consent_id}
    expires_in = tokens.get("expires_in")
    record.update(
        status="Authorised",
        client_id=_registration(tpp)["client_id"],
        access_token=tokens["access_token"],
        refresh_token=tokens.get("refresh_token") or record.get("refresh_token"),
        token_type=tokens.get("token_type", "Bearer"),
        scope=tokens.get("scope"),
        cnf=tokens.get("cnf") or {"x5t#S256": thumbprint(tpp.read("transport.pem", "download"))},
        obtained_at=int(time.time()),
        expires_at=int(time.time()) + int(expires_in) if expires_in else None,
    )
    if claims is not None:
        record["id_token"] = {
            k: claims[k] for k in ("iss", "sub", "aud", "acr", "auth_time", "exp") if k in claims
        }
    write_json(tpp.path("consent.json"), record, secret=True)
    return record


def load_consent(tpp: TPP) -> dict[str, Any] | None:
    record = read_json(tpp.path("consent.json"))
    return record if isinstance(record, dict) else None


def consented(tpp: TPP) -> dict[str, Any]:
    """consent.json, or a :class:`Failed` that says to connect first."""
    record = load_consent(tpp)
    if not record or not record.get("access_token"):
        p = prog()
        raise tpp.fail(
            "no access token from a customer's consent yet",
            cause="account data needs the customer's consent, and no customer has connected"
            " (`token`'s client_credentials token opens the consents API only)",
            remedy=f"connect through the TPP's web page first ({connect_hint(tpp)}), or"
            f" `{p} consent` and open the URL it prints",
        )
    return record


def refresh_consent_token(tpp: TPP) -> dict[str, Any]:
    """The refresh_token grant: a new access token for the same consent, bound to the same
    certificate."""
    record = consented(tpp)
    if not record.get("refresh_token"):
        raise tpp.fail(
            "no refresh token for this consent",
            cause="the bank issued no refresh_token with the access token",
            remedy="ask the customer again: connect on the TPP's page",
        )
    tokens = _token_grant(
        tpp,
        {"grant_type": "refresh_token", "refresh_token": record["refresh_token"]},
        what="refreshing the token",
    )
    return save_tokens(tpp, tokens, consent_id=record["consent_id"])


def read_accounts(tpp: TPP, *, balances: bool = True) -> list[dict[str, Any]]:
    """The accounts the consent opens, each with its ``Balance`` list (GET /accounts, then
    /accounts/{AccountId}/balances), with the consent's token over mTLS."""
    record = consented(tpp)
    url = accounts_endpoint(tpp)
    response = tpp.http("GET", url, headers=_ob_headers(record["access_token"]))
    expect(tpp, response, 200, what="the accounts API", step="accounts")
    found = list(response.json().get("Data", {}).get("Account", []))
    if balances:
        for account in found:
            account_url = f"{url}/{account['AccountId']}/balances"
            answer = tpp.http("GET", account_url, headers=_ob_headers(record["access_token"]))
            expect(tpp, answer, 200, what="the balances API", step="accounts")
            account["Balance"] = answer.json().get("Data", {}).get("Balance", [])
    return found


def show_accounts(found: list[dict[str, Any]]) -> None:
    for account in found:
        name = account.get("Nickname") or account.get("AccountSubType", "")
        click.echo(f"{account.get('AccountId')}  {name}  ({account.get('Currency', '')})")
        for balance in account.get("Balance", []):
            amount = balance.get("Amount", {})
            click.echo(
                f"    {balance.get('Type', 'balance')}: {amount.get('Amount')}"
                f" {amount.get('Currency', '')} {balance.get('CreditDebitIndicator', '')}".rstrip()
            )


@cli.command()
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    type=click.Choice(PERMISSIONS),
    default=DEFAULT_PERMISSIONS,
    show_default=True,
    help="What the TPP asks the customer for (repeat).",
)
@click.option("--days", type=click.IntRange(1, 365), default=CONSENT_DAYS, show_default=True)
@click.option(
    "--redirect-uri", help="Where the bank sends the browser back [default: the web page's]."
)
@pass_tpp
def consent(
    tpp: TPP, permissions: tuple[str, ...], days: int, redirect_uri: str | None
) -> dict[str, Any]:
    """Create an account-access-consent (client_credentials token, mTLS) and print the bank's
    authorize URL for the customer to open in a browser."""
    p = prog()
    click.echo(f"POST {consents_endpoint(tpp)}  (mutual TLS, a client_credentials token)")
    data = create_consent(tpp, permissions, days=days)
    click.echo(f"ConsentId {data['ConsentId']}  Status {data.get('Status')}")
    click.echo(f"  Permissions {', '.join(data.get('Permissions', permissions))}")
    click.echo(f"  ExpirationDateTime {data.get('ExpirationDateTime')}")
    uri = redirect_uri or redirect_uri_of(tpp)
    url, claims = start_authorization(tpp, data["ConsentId"], redirect_uri=uri, origin="cli")
    click.echo(
        f"request object signed {request_object_alg(tpp)} with signing.key: aud"
        f" {claims['aud']}, redirect_uri {uri}, valid {REQUEST_OBJECT_LIFETIME // 60} minutes"
    )
    click.echo("open in a browser (the customer signs in at the bank and chooses accounts):")
    click.echo(url)
    page, runs = web_page(tpp)
    serves = (
        "the TPP's page there finishes the journey"
        if runs and uri == f"{page}/callback"
        else f"`{p} web` serves that page"
    )
    click.echo(
        f"the bank sends the browser back to {uri}: {serves}; without it, copy the whole"
        f" address the browser shows, then `{p} callback 'ADDRESS'`"
    )
    return {**data, "authorize_url": url, "state": claims["state"]}


@cli.command()
@click.argument("address")
@pass_tpp
def callback(tpp: TPP, address: str) -> dict[str, Any]:
    """Finish an authorization started with `consent`: ADDRESS is where the bank sent the
    browser back (redirect URI, #code, id_token, state). The id_token is checked, the code
    exchanged over mutual TLS; the tokens go to consent.json (never printed)."""
    p = prog()
    answer = parse_redirect(address)
    record = complete_authorization(tpp, answer)
    claims = record.get("id_token", {})
    click.echo(
        f"id_token valid: iss {claims.get('iss')}, sub {claims.get('sub')}, acr {claims.get('acr')}"
    )
    click.echo(
        f"code exchanged: access token (scope {record.get('scope')!r}) bound to cnf"
        f" {json.dumps(record.get('cnf'))}, refresh token kept in consent.json"
    )
    click.echo(f"next: `{p} accounts`")
    return record


@cli.command()
@click.option("--no-cert", is_flag=True, help="Leave out the transport certificate.")
@click.option("--account-id", help="One account instead of the list.")
@click.option(
    "--client-credentials",
    is_flag=True,
    help="Use token.json's client_credentials token instead (the bank refuses it: account"
    " data needs the customer's consent).",
)
@pass_tpp
def accounts(tpp: TPP, no_cert: bool, account_id: str | None, client_credentials: bool) -> None:
    """Call the accounts API with the token the customer's consent gave (consent.json), over
    mutual TLS; the balances too when listing."""
    url = accounts_endpoint(tpp)
    if client_credentials:
        token_value = _access_token(tpp)
        what = "token.json's client_credentials token"
    else:
        token_value = consented(tpp)["access_token"]
        what = "the consent's token"
    if account_id:
        url += f"/{account_id}"
    click.echo(f"GET {url}  ({what}" + (", no client certificate)" if no_cert else ", mutual TLS)"))
    response = tpp.http("GET", url, mtls=not no_cert, headers=_ob_headers(token_value))
    body = show_response(response)
    expect(tpp, response, 200, what="the accounts API", step="accounts", no_cert=no_cert)
    if account_id or not isinstance(body, dict):
        return
    for account in body.get("Data", {}).get("Account", []):
        balances = f"{url}/{account['AccountId']}/balances"
        click.echo(f"GET {balances}")
        answer = tpp.http("GET", balances, mtls=not no_cert, headers=_ob_headers(token_value))
        show_response(answer)
        expect(tpp, answer, 200, what="the balances API", step="accounts", no_cert=no_cert)


@cli.command()
@pass_tpp
def refresh(tpp: TPP) -> None:
    """A new access token for the consent (refresh_token grant, mutual TLS): bound to the same
    certificate as the first."""
    record = refresh_consent_token(tpp)
    click.echo(
        f"new access token for consent {record['consent_id']}: scope {record.get('scope')!r},"
        f" cnf {json.dumps(record.get('cnf'))}"
        + (f", expires {_when(record['expires_at'])}" if record.get("expires_at") else "")
    )


@cli.command("revoke-consent")
@pass_tpp
def revoke_consent(tpp: TPP) -> None:
    """Revoke the consent at the bank (DELETE, client_credentials token): consent.json's tokens
    are kept, to show the API refusing them."""
    record = consented(tpp)
    url = f"{consents_endpoint(tpp)}/{record['consent_id']}"
    click.echo(f"DELETE {url}  (mutual TLS, a client_credentials token)")
    delete_consent(tpp, record["consent_id"])
    click.echo(f"consent {record['consent_id']} Revoked; `{prog()} accounts` is refused now")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=int, default=DEFAULT_WEB_PORT, show_default=True, help="0: a free port."
)
@click.option(
    "--cert",
    "cert_file",
    type=click.Path(exists=True, dir_okay=False),
    help="HTTPS certificate chain [default: issued by the sandbox CA of <workdir>/../directory].",
)
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--url-file", type=click.Path(dir_okay=False), hidden=True)
@click.option("--exit-with-parent", is_flag=True, hidden=True)
@pass_tpp
def web(
    tpp: TPP,
    host: str,
    port: int,
    cert_file: str | None,
    key_file: str | None,
    url_file: str | None,
    exit_with_parent: bool,
) -> None:
    """Serve the TPP's web page over HTTPS (its redirect URI is <URL>/callback): connect the
    customer's accounts, see them, refresh the token, revoke the consent. Ctrl-C stops it."""
    from .serving import serve_until_stopped, tls_context
    from .tpp_web import create_tpp_web_app, web_certificate

    if (cert_file is None) != (key_file is None):
        raise click.UsageError("give --cert and --key together (or neither)")
    if cert_file is None or key_file is None:
        cert_file, key_file = (str(path) for path in web_certificate(tpp, host))
    # the hints of the other commands (`status`, `accounts`) name the page where it runs
    own_url_file = url_file is None
    try:
        serve_until_stopped(
            name="tpp-web",
            title="the TPP's web page",
            host=host,
            port=port,
            ssl_context=tls_context(cert_file, key_file),
            make_app=lambda url: create_tpp_web_app(tpp.workdir, redirect_uri=f"{url}/callback"),
            url_file=str(tpp.path(WEB_URL_FILE)) if own_url_file else url_file,
            parent_pid=os.getppid() if exit_with_parent else None,
        )
    finally:
        if own_url_file:
            tpp.path(WEB_URL_FILE).unlink(missing_ok=True)


@cli.group()
def registration() -> None:
    """Read, update or delete the registration (GET/PUT/DELETE registration_client_uri)."""


def _management_headers(tpp: TPP, use_registration_token: bool) -> dict[str, str]:
    if use_registration_token:
        token_value = _registration(tpp)["registration_access_token"]
    else:
        token_value = _access_token(tpp)
    return {"Authorization": f"Bearer {token_value}"}


#: what ``--brief`` shows of a registration, on one line (never its registration_access_token)
BRIEF_FIELDS = ("client_id", "token_endpoint_auth_method", "scope", "redirect_uris")


def show_registration(response: requests.Response, *, brief: bool) -> Any:
    """Print a registration response; ``brief``: the status line and, on one line, the
    fields that matter (:data:`BRIEF_FIELDS`), the rest (the software statement's claims, the
    registration_access_token...) counted, not shown."""
    if not brief or response.status_code not in (200, 201):
        return show_response(response)
    body = response.json()
    try:
        _, ssa_claims = decode_jwt(body.get("software_statement", ""))
    except ValueError:
        ssa_claims = {}
    shown = {k: body[k] for k in BRIEF_FIELDS if k in body}
    folded = sum(1 for k in body if k in ssa_claims and k not in shown)
    others = len(body) - len(shown) - folded
    click.echo(f"HTTP {response.status_code} {HTTPStatus(response.status_code).phrase}")
    click.echo(json.dumps(shown))
    click.echo(
        f"(and {folded} claims of the software statement and {others} more fields, left out:"
        " --brief)"
    )
    return body


_brief_option = click.option(
    "--brief",
    is_flag=True,
    help="Only client_id, the auth method, scope and redirect_uris, on one line.",
)

_token_option = click.option(
    "--registration-token",
    "use_registration_token",
    is_flag=True,
    help="Use the registration_access_token instead of the client_credentials access token.",
)


@registration.command("get")
@_token_option
@_brief_option
@pass_tpp
def registration_get(tpp: TPP, use_registration_token: bool, brief: bool) -> None:
    """GET the registration."""
    url = _registration(tpp)["registration_client_uri"]
    click.echo(f"GET {url}  (mutual TLS)")
    response = tpp.http("GET", url, headers=_management_headers(tpp, use_registration_token))
    show_registration(response, brief=brief)
    expect(tpp, response, 200, what="reading the registration", step="registration")


@registration.command("update")
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="New redirect URIs (default: as in the last request).",
)
@_token_option
@_brief_option
@pass_tpp
def registration_update(
    tpp: TPP, redirect_uris: tuple[str, ...], use_registration_token: bool, brief: bool
) -> None:
    """PUT a newly signed registration request (fresh jti, iat, exp)."""
    current = _registration(tpp)
    options = dict(tpp.config.get("request_options") or {})
    options.setdefault("auth_method", current["token_endpoint_auth_method"])
    options.setdefault("scope", current.get("scope", "openid accounts"))
    if redirect_uris:
        options["redirect_uris"] = list(redirect_uris)
    body = sign_request(tpp, options)
    url = current["registration_client_uri"]
    click.echo(f"PUT {url}  Content-Type: application/jwt  (mutual TLS)")
    headers = {
        **_management_headers(tpp, use_registration_token),
        "Content-Type": "application/jwt",
    }
    response = tpp.http("PUT", url, data=body, headers=headers)
    updated = show_registration(response, brief=brief)
    expect(tpp, response, 200, what="updating the registration", step="registration")
    tpp.config["request_options"] = options
    tpp.save()
    # the registration access token is returned once, at registration: keep it
    keep = {k: current[k] for k in ("registration_access_token",) if k in current}
    write_json(tpp.path("registration.json"), {**updated, **keep}, secret=True)


@registration.command("delete")
@_token_option
@pass_tpp
def registration_delete(tpp: TPP, use_registration_token: bool) -> None:
    """DELETE the registration (the bank also revokes its tokens)."""
    p = prog()
    url = _registration(tpp)["registration_client_uri"]
    click.echo(f"DELETE {url}  (mutual TLS)")
    response = tpp.http("DELETE", url, headers=_management_headers(tpp, use_registration_token))
    show_response(response)
    expect(tpp, response, 204, what="deleting the registration", step="registration")
    tpp.path("registration.json").unlink(missing_ok=True)
    click.echo("removed registration.json (token.json is kept, to show the bank refusing it)")
    # request.jwt was registered: its jti is used, so it cannot simply be sent again
    click.echo(f"to register again: `{p} request` (a fresh request), then `{p} register`")


@cli.command()
@click.option("--signing", is_flag=True, help="Revoke the signing certificate instead.")
@click.option(
    "--reason",
    type=click.Choice(list(REVOCATION_REASONS)),
    default="unspecified",
    show_default=True,
    help="The CRL reason code.",
)
@pass_tpp
def revoke(tpp: TPP, signing: bool, reason: str) -> dict[str, Any]:
    """Revoke this TPP's transport certificate (or its signing certificate) at the Directory."""
    cert_type = "signing" if signing else "transport"
    issued = tpp.config.get("certificates", {}).get(cert_type)
    if not issued:
        raise tpp.fail(
            f"no {cert_type} certificate issued yet",
            cause=f"the Directory has issued no {cert_type} certificate for this working folder",
            remedy=f"nothing to revoke; `{prog()} status` shows what has been done",
        )
    url = tpp.directory(f"/api/software/{tpp.software_id}/certificates/{issued['kid']}")
    click.echo(f"DELETE {url}?reason={reason}")
    response = tpp.http("DELETE", url, mtls=False, params={"reason": reason})
    record = show_response(response)
    expect(tpp, response, 200, what=f"revoking the {cert_type} certificate", step="directory")
    issued.update(status="revoked", revoked_at=record.get("revoked_at"))
    tpp.save()
    for line in revocation_consequences(record, tpp.need("directory_url")):
        click.echo(line)
    click.echo(
        textwrap.fill(
            f"{cert_type}.pem is of no use any more: to carry on, make new keys and"
            " certificates (keys --force, upload-csr, download), then request and register"
            " again.",
            92,
        )
    )
    return record


# -- reading the working folder's files -------------------------------------------------------


@cli.command()
@click.argument("name")
@click.option("--password", default="", help="The password of a .p12.")
@pass_tpp
def decode(tpp: TPP, name: str, password: str) -> None:
    """Print a file of the working folder readably: a JWT (ssa.jwt, request.jwt), a certificate
    (transport.pem, signing.pem, the CA bundle), a CSR, a key (never its private part), a
    .p12 or a JSON file. NAME is a file of the working folder, or a path."""
    path = _find(tpp, name)
    data = path.read_bytes()
    click.echo(f"{path}")
    if path.suffix == ".p12":
        _show_p12(tpp, data, password)
    elif data.lstrip().startswith(b"-----BEGIN"):
        _show_pem(tpp, data)
    elif path.suffix == ".json":
        _show_json(data)
    elif data.strip().count(b".") == 2 and b" " not in data.strip():
        _show_jwt_file(tpp, data.decode().strip())
    else:
        try:
            _show_certificate(tpp, x509.load_der_x509_certificate(data))
        except ValueError:
            raise tpp.fail(
                f"{path.name} is not a JWT, PEM, DER certificate, .p12 or JSON file",
                cause=f"{path} holds {len(data)} bytes of something else",
                remedy=f"decode one of: {', '.join(_decodable(tpp)) or 'nothing here yet'}",
            ) from None


def _decodable(tpp: TPP) -> list[str]:
    return sorted(n for n in ARTEFACTS if tpp.path(n).exists())


def _find(tpp: TPP, name: str) -> Path:
    for candidate in (tpp.path(name), Path(name)):
        if candidate.is_file():
            return candidate
    there = _decodable(tpp)
    step = ARTEFACTS.get(Path(name).name)
    raise tpp.fail(
        f"no {name} in {tpp.workdir}",
        cause=f"`{step}` has not made it here yet" if step else f"no such file: {name}",
        remedy=(f"run `{prog()} {step}`; " if step else "")
        + f"files here to decode: {', '.join(there) or 'none yet'}",
    )


def _show_jwt_file(tpp: TPP, token: str) -> None:
    header, claims = show_jwt(token, abbreviate_claims=("software_statement",))
    if "software_statement" in claims:
        click.echo("(software_statement: the SSA; `decode ssa.jwt` shows its claims)")
    for claim in TIME_CLAIMS:
        if isinstance(claims.get(claim), int | float):
            expired = claim == "exp" and claims[claim] < time.time()
            click.echo(f"{claim:<4} {_when(claims[claim])}" + ("  EXPIRED" if expired else ""))
    if claims.get("jti") and claims.get("jti") == tpp.config.get("registered_jti"):
        click.echo(
            f"jti  {claims['jti']} was registered: the bank refuses it again (`{prog()} request`"
            " makes a fresh one)"
        )
    kid = header.get("kid")
    issued = tpp.config.get("certificates", {}).get("signing", {})
    if kid and kid == issued.get("kid"):
        click.echo(f"kid  {kid}: the signing certificate's (signing.pem)")


def _show_pem(tpp: TPP, data: bytes) -> None:
    blocks = re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", data, flags=re.S)
    for match in re.finditer(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", data, re.S):
        kind, block = match.group(1).decode(), match.group(0)
        if kind == "CERTIFICATE":
            _show_certificate(tpp, x509.load_pem_x509_certificate(block))
        elif kind in ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"):
            csr = x509.load_pem_x509_csr(block)
            click.echo("certificate signing request")
            click.echo(f"  subject    {_dn(csr.subject)}")
            click.echo(f"  key        {_key_text(csr.public_key())}")
            click.echo(f"  signature  {'valid' if csr.is_signature_valid else 'INVALID'}")
        elif kind.endswith("PRIVATE KEY"):
            key = serialization.load_pem_private_key(block, password=None)
            click.echo(
                f"private key: {_key_text(key.public_key())} (the private part is not shown)"
            )
            _key_matches(tpp, key.public_key())
        elif kind == "PUBLIC KEY":
            click.echo(f"public key: {_key_text(serialization.load_pem_public_key(block))}")
        else:
            click.echo(f"a PEM block of type {kind}")
    if len(blocks) > 1:
        click.echo(f"({len(blocks)} PEM blocks)")


def _key_text(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__


def _key_matches(tpp: TPP, public_key: Any) -> None:
    """Say which certificate of the working folder certifies this key, if any."""
    for name in ("transport.pem", "signing.pem"):
        try:
            certificate = x509.load_pem_x509_certificate(tpp.path(name).read_bytes())
        except (OSError, ValueError):
            continue
        if certificate.public_key() == public_key:
            click.echo(f"  certified by {name}")
            return


def _show_certificate(tpp: TPP, certificate: x509.Certificate) -> None:
    now = time.time()
    after = certificate.not_valid_after_utc.timestamp()
    before = certificate.not_valid_before_utc.timestamp()
    state = "EXPIRED" if after < now else "NOT YET VALID" if before > now else "valid"
    click.echo("certificate")
    click.echo(f"  subject     {_dn(certificate.subject)}")
    click.echo(f"  issuer      {_dn(certificate.issuer)}")
    click.echo(f"  serial      {certificate.serial_number:x}")
    click.echo(f"  not before  {_when(before)}")
    click.echo(f"  not after   {_when(after)}  {state}")
    click.echo(f"  key         {_key_text(certificate.public_key())}")
    extensions = {e.oid: e.value for e in certificate.extensions}
    constraints = extensions.get(ExtensionOID.BASIC_CONSTRAINTS)
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        click.echo("  CA          yes (issues certificates)")
    usage = extensions.get(ExtensionOID.KEY_USAGE)
    if isinstance(usage, x509.KeyUsage):
        flags = [
            label
            for name, label in (
                ("digital_signature", "digitalSignature"),
                ("content_commitment", "nonRepudiation"),
                ("key_encipherment", "keyEncipherment"),
                ("key_cert_sign", "keyCertSign"),
                ("crl_sign", "cRLSign"),
            )
            if getattr(usage, name)
        ]
        click.echo(f"  key usage   {', '.join(flags)}")
    eku = extensions.get(ExtensionOID.EXTENDED_KEY_USAGE)
    if isinstance(eku, x509.ExtendedKeyUsage):
        names = {
            ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
            ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
            ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
        }
        shown = ", ".join(names.get(oid, oid.dotted_string) for oid in eku)
        click.echo(f"  ext. usage  {shown}")
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER):
        click.echo(f"  organizationIdentifier {attribute.value!s} (eIDAS/OBWAC)")
    san = extensions.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if isinstance(san, x509.SubjectAlternativeName):
        click.echo(f"  alt. names  {', '.join(str(n.value) for n in san)}")
    points = extensions.get(ExtensionOID.CRL_DISTRIBUTION_POINTS)
    if isinstance(points, x509.CRLDistributionPoints):
        for point in points:
            for name in point.full_name or []:
                click.echo(f"  CRL         {name.value}")
    access = extensions.get(ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    if isinstance(access, x509.AuthorityInformationAccess):
        for description in access:
            click.echo(f"  OCSP        {description.access_location.value}")
    click.echo(f"  x5t#S256    {thumbprint(pem(certificate))}")
    for cert_type in CERT_TYPES:
        try:
            key = serialization.load_pem_private_key(
                tpp.path(f"{cert_type}.key").read_bytes(), None
            )
        except (OSError, ValueError):
            continue
        if key.public_key() == certificate.public_key():
            click.echo(f"  its key     {cert_type}.key")


def _show_json(data: bytes) -> None:
    try:
        document = json.loads(data)
    except ValueError:
        click.echo(data.decode(errors="replace"))
        return
    secrets = ("access_token", "registration_access_token", "client_secret", "private_key")
    if isinstance(document, dict):
        document = {
            k: abbreviate(v, 12)
            if isinstance(v, str) and (k in secrets or k in SHORTENED or k == "ssa")
            else v
            for k, v in document.items()
        }
    click.echo(pretty(document))


def _show_p12(tpp: TPP, data: bytes, password: str) -> None:
    try:
        bundle = pkcs12.load_pkcs12(data, password.encode() or None)
    except ValueError:
        raise tpp.fail(
            "cannot open the .p12",
            cause="it is protected by a password other than the one given",
            remedy=f"`{prog()} decode transport.p12 --password ...` (the one given to `p12`)",
        ) from None
    click.echo(
        f"PKCS#12 bundle: {'a key' if bundle.key else 'no key'}, "
        f"{1 if bundle.cert else 0} certificate, {len(bundle.additional_certs)} CA certificate(s)"
    )
    if bundle.cert is not None:
        _show_certificate(tpp, bundle.cert.certificate)


# -- the official OB conformance tool ------------------------------------------------------------


@cli.command("conformance-config")
@click.option(
    "--aud",
    help="The aud of the tool's requests: the bank's issuer [default], or a value of its"
    " OBDCR_AUDIENCES such as the bank's OB organisation id.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Where to write it [default: config.json in the working folder].",
)
@click.option("--environment", default="sandbox", show_default=True, help="For the report.")
@click.option("--brand", default="AnyBank sandbox", show_default=True, help="For the report.")
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="Default: the SSA's software_redirect_uris.",
)
@click.option("--spec-version", type=click.Choice(["3.2", "3.3"]), default="3.3", show_default=True)
@pass_tpp
def conformance_config(
    tpp: TPP,
    aud: str | None,
    out: str | None,
    environment: str,
    brand: str,
    redirect_uris: tuple[str, ...],
    spec_version: str,
) -> dict[str, Any]:
    """Write the config.json of Open Banking's DCR conformance tool (conformance-dcr) from this
    working folder: the SSA, the signing key and its kid, the transport certificate and key,
    the sandbox CA bundle one certificate per entry."""
    p = prog()
    ssa_token = tpp.read("ssa.jwt", "ssa").strip()
    _, ssa_claims = decode_jwt(ssa_token)
    signing_pem = tpp.read("signing.key", "keys")
    signing = serialization.load_pem_private_key(signing_pem.encode(), password=None)
    if not isinstance(signing, rsa.RSAPrivateKey):
        raise tpp.fail(
            "the conformance tool signs with an RSA key only",
            cause=f"signing.key holds {_key_text(signing.public_key())}",
            remedy=f"`{p} keys --force` (RSA keys), `{p} upload-csr`, `{p} download`, `{p} ssa`",
        )
    kid = tpp.config.get("certificates", {}).get("signing", {}).get("kid")
    if not kid:
        raise tpp.missing("signing.pem", "upload-csr")
    transport_cert, transport_key = tpp.transport_cert()
    issuer = tpp.discovery()["issuer"]
    bundle = Path(tpp.ca_file).read_text()
    roots = [
        match.group(0) + "\n"
        for match in re.finditer(
            r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", bundle, flags=re.S
        )
    ]
    config = {
        "spec_version": spec_version,
        "environment": environment,
        "brand": brand,
        "wellknown_endpoint": issuer + "/.well-known/openid-configuration",
        "aud": aud or issuer,
        "issuer": tpp.software_id,
        "ssa": ssa_token,
        "redirect_uris": list(redirect_uris) or ssa_claims.get("software_redirect_uris", []),
        "kid": kid,
        "private_key": signing_pem,
        "transport_cert": Path(transport_cert).read_text(),
        "transport_key": Path(transport_key).read_text(),
        "transport_root_cas": roots,
        "get_implemented": True,
        "put_implemented": True,
        "delete_implemented": True,
    }
    target = Path(out) if out else tpp.path("config.json")
    write_file(target, json.dumps(config, indent=2) + "\n", secret=True)
    click.echo(f"wrote {target.resolve()} (it holds private keys: owner-only)")
    for key in ("spec_version", "wellknown_endpoint", "aud", "issuer", "kid", "redirect_uris"):
        click.echo(f"  {key:<19} {config[key]}")
    click.echo(f"  {'transport_root_cas':<19} {len(roots)} certificate(s) from {tpp.ca_file}")
    mount = shlex.quote(f"{target.resolve()}:/config.json:ro")
    cas = shlex.quote(f"{tpp.ca_file}:/sandbox-ca.pem:ro")
    click.echo("run the tool (Linux, the bank on loopback):")
    click.echo(
        f"  docker run --rm -it --network host -v {mount} -v {cas}"
        " -e SSL_CERT_FILE=/sandbox-ca.pem openbanking/conformance-dcr:v1.3.1"
        " -config-path=/config.json"
    )
    return config


def main(args: list[str] | None = None) -> Any:
    """The ``obdcr-tpp`` console script (and ``python -m example_app.tpp``)."""
    return cli.main(args=args, prog_name=program_name(PROG, "python -m example_app.tpp"))


if __name__ == "__main__":
    from example_app.tpp import main as _main

    _main()
