"""The TPP's side, one step per command: ``python -m example_app.tpp [--workdir DIR] COMMAND``.

Everything the TPP has (keys, CSRs, certificates, the SSA, requests, the registration, the
token) is a file in its working directory (``--workdir``, or ``$TPP_WORKDIR``, default
``instance/tpp``), so the steps can be run one at a time and inspected in between::

    init          remember the Directory, the bank, the sandbox CA bundle, org_id, software_id
    keys          transport and signing keys and CSRs (and the equivalent openssl commands)
    upload-csr    send the CSRs to the Directory, which issues the certificates
    download      fetch the issued certificates (PEM)
    p12           bundle transport certificate and key as transport.p12 (openssl pkcs12 -export)
    jwks          show the keys the Directory publishes for the software
    ssa           get a software statement from the Directory and show it decoded
    discover      read the bank's /.well-known/openid-configuration (no client certificate)
    request       build and sign (PS256) the registration request JWT and show it decoded
    register      POST it to the bank over mutual TLS (application/jwt)
    token         client_credentials token over mutual TLS
    accounts      call the bank's accounts API with the token
    registration  get | update | delete the registration (RFC 7592 over mutual TLS)
    revoke        revoke the transport (or, with --signing, the signing) certificate at the
                  Directory, and say when the bank will notice

Every HTTPS call verifies the server with the sandbox CA bundle; calls to the bank present the
transport certificate (``requests``' ``cert=(transport.pem, transport.key)``) unless
``--no-cert`` is given, which shows the bank refusing them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import textwrap
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

import click
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from jwcrypto import jwk

from flask_obdcr.testing import sign_jwt
from flask_obdcr.testing.pki import generate_key, key_pem, ob_subject

from ._util import abbreviate, decode_jwt, pretty, read_json, write_file, write_json
from .directory import REVOCATION_REASONS
from .directory.commands import revocation_consequences

__all__ = ["TPP", "cli", "registration_claims", "sign_request"]

CERT_TYPES = ("transport", "signing")
AUTH_METHODS = ("tls_client_auth", "private_key_jwt")
ALG = "PS256"
TIMEOUT = 10
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Failed(click.ClickException):
    """A step that did not work (an HTTP error, a missing earlier step); exit status 1."""


class TPP:
    """The TPP's working directory: ``tpp.json`` plus one file per artefact."""

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = Path(workdir).resolve()
        self.config: dict[str, Any] = read_json(self.workdir / "tpp.json", {}) or {}

    def path(self, name: str) -> Path:
        return self.workdir / name

    def save(self) -> None:
        write_json(self.path("tpp.json"), self.config)

    def need(self, key: str) -> Any:
        if key not in self.config:
            raise Failed(f"{key} is not known yet: run `python -m example_app.tpp init` first")
        return self.config[key]

    def read(self, name: str, step: str) -> str:
        try:
            return self.path(name).read_text()
        except FileNotFoundError:
            raise Failed(f"no {name} in {self.workdir}: run `{step}` first") from None

    @property
    def ca_file(self) -> str:
        return self.need("ca_file")

    @property
    def software_id(self) -> str:
        return self.need("software_id")

    @property
    def org_id(self) -> str:
        return self.need("org_id")

    def directory(self, path: str) -> str:
        return self.need("directory_url").rstrip("/") + path

    def transport_cert(self) -> tuple[str, str]:
        for name, step in (("transport.pem", "download"), ("transport.key", "keys")):
            if not self.path(name).exists():
                raise Failed(f"no {name} in {self.workdir}: run `{step}` first")
        return str(self.path("transport.pem")), str(self.path("transport.key"))

    def http(self, method: str, url: str, *, mtls: bool = True, **kwargs: Any) -> requests.Response:
        """One HTTPS call, the server verified with the sandbox CA bundle; with ``mtls`` the
        transport certificate is presented."""
        if mtls:
            kwargs["cert"] = self.transport_cert()
        try:
            return requests.request(method, url, verify=self.ca_file, timeout=TIMEOUT, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise Failed(f"TLS with {url} failed: {exc}") from None
        except requests.exceptions.ConnectionError as exc:
            raise Failed(f"cannot reach {url}: {exc}") from None

    def discovery(self) -> dict[str, Any]:
        document = read_json(self.path("discovery.json"))
        if document is None:
            document = fetch_discovery(self)
        return document

    def signing_key(self) -> jwk.JWK:
        key = jwk.JWK.from_pem(self.read("signing.key", "keys").encode())
        kid = self.config.get("certificates", {}).get("signing", {}).get("kid")
        if not kid:
            raise Failed("the signing certificate has no kid yet: run `upload-csr` first")
        return jwk.JWK(**{**key.export_private(as_dict=True), "kid": kid})


#: long values shortened when a response is printed (never in the saved files)
SHORTENED = ("software_statement",)


def show_response(response: requests.Response) -> Any:
    """Print the status line, a few headers and the (pretty) body; returns the parsed JSON
    (or the text)."""
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = response.reason
    click.echo(f"HTTP {response.status_code} {phrase}")
    headers: tuple[str, ...] = ("Cache-Control", "WWW-Authenticate", "x-fapi-interaction-id")
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


def expect(response: requests.Response, *statuses: int, what: str) -> None:
    if response.status_code not in statuses:
        error = ""
        try:
            error = " " + response.json().get("error", "")
        except (ValueError, AttributeError):
            pass
        raise Failed(f"{what}: the server answered HTTP {response.status_code}{error}")


def thumbprint(pem_text: str) -> str:
    """RFC 8705 ``x5t#S256``: base64url SHA-256 of the certificate's DER."""
    der = x509.load_pem_x509_certificate(pem_text.encode()).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


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
    default="instance/tpp",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The TPP's files.",
)
@click.pass_context
def cli(ctx: click.Context, workdir: str) -> None:
    """The TPP's command line for the AnyBank sandbox."""
    ctx.obj = TPP(workdir)


pass_tpp = click.make_pass_decorator(TPP)


@cli.command()
@click.option("--directory", "directory_url", required=True, help="The Directory's URL.")
@click.option("--bank", "bank_url", required=True, help="The bank's URL (its issuer).")
@click.option(
    "--ca",
    "ca_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The sandbox CA bundle.",
)
@click.option("--org-id", required=True)
@click.option("--software-id", required=True)
@pass_tpp
def init(tpp: TPP, directory_url, bank_url, ca_file, org_id, software_id) -> None:
    """Remember where the Directory and the bank are, and who this TPP is."""
    tpp.config.update(
        directory_url=directory_url.rstrip("/"),
        bank_url=bank_url.rstrip("/"),
        ca_file=os.path.abspath(ca_file),
        org_id=org_id,
        software_id=software_id,
    )
    tpp.save()
    click.echo(f"TPP working directory: {tpp.workdir}")
    click.echo(pretty(tpp.config))


@cli.command()
@click.option("--force", is_flag=True, help="Replace existing keys.")
@pass_tpp
def keys(tpp: TPP, force: bool) -> None:
    """Generate the transport and signing keys (RSA 2048) and their CSRs."""
    subject = ob_subject(tpp.software_id, tpp.org_id)
    slashed = f"/C=GB/O=OpenBanking/OU={tpp.org_id}/CN={tpp.software_id}"
    if not force and any(tpp.path(f"{t}.key").exists() for t in CERT_TYPES):
        raise Failed(f"keys exist in {tpp.workdir}; use --force to replace them")
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


@cli.command("upload-csr")
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(CERT_TYPES),
    default=CERT_TYPES,
    show_default=True,
)
@pass_tpp
def upload_csr(tpp: TPP, types: tuple[str, ...]) -> None:
    """Upload the CSRs; the Directory issues the certificates and publishes the keys."""
    certificates = tpp.config.setdefault("certificates", {})
    for cert_type in types:
        csr = tpp.read(f"{cert_type}.csr", "keys")
        url = tpp.directory(f"/api/software/{tpp.software_id}/certificates/{cert_type}")
        response = tpp.http(
            "POST", url, mtls=False, data=csr, headers={"Content-Type": "application/pkcs10"}
        )
        click.echo(f"{cert_type} CSR -> POST {url}")
        record = show_response(response)
        expect(response, 201, what=f"uploading the {cert_type} CSR")
        certificates[cert_type] = {"kid": record["kid"], "pem_url": record["pem_url"]}
        tpp.save()


@cli.command()
@pass_tpp
def download(tpp: TPP) -> None:
    """Download the issued certificates as transport.pem and signing.pem."""
    certificates = tpp.config.get("certificates", {})
    for cert_type in CERT_TYPES:
        if cert_type not in certificates:
            raise Failed(f"no {cert_type} certificate issued yet: run `upload-csr` first")
        response = tpp.http("GET", certificates[cert_type]["pem_url"], mtls=False)
        expect(response, 200, what=f"downloading the {cert_type} certificate")
        write_file(tpp.path(f"{cert_type}.pem"), response.text)
        certificate = x509.load_pem_x509_certificate(response.content)
        click.echo(f"{cert_type}.pem (kid {certificates[cert_type]['kid']})")
        click.echo(f"  subject   {certificate.subject.rfc4514_string()}")
        click.echo(f"  issuer    {certificate.issuer.rfc4514_string()}")
        click.echo(f"  not after {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        click.echo(f"  x5t#S256  {thumbprint(response.text)}")


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
        raise Failed(f"{key_path} holds a {type(key).__name__}, not an RSA or EC key")
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
        expect(response, 200, what=f"fetching {url}")
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
                "(x5c[0] subject)": leaf.subject.rfc4514_string(),
            }
            click.echo(pretty(shown))


@cli.command()
@pass_tpp
def ssa(tpp: TPP) -> None:
    """Ask the Directory for a software statement (the "Generate" button) and decode it."""
    url = tpp.directory(f"/api/software/{tpp.software_id}/ssa")
    response = tpp.http("POST", url, mtls=False)
    expect(response, 201, what="generating the SSA")
    token = response.text.strip()
    write_file(tpp.path("ssa.jwt"), token + "\n")
    click.echo(f"POST {url} -> HTTP {response.status_code}, {response.headers['Content-Type']}")
    click.echo(f"ssa.jwt ({len(token)} characters): {abbreviate(token, 40)}")
    show_jwt(token)


def fetch_discovery(tpp: TPP) -> dict[str, Any]:
    url = tpp.need("bank_url") + "/.well-known/openid-configuration"
    response = tpp.http("GET", url, mtls=False)
    expect(response, 200, what="reading the bank's discovery document")
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
    now = int(time.time())
    method = options["auth_method"]
    claims: dict[str, Any] = {
        "iss": tpp.software_id,
        "iat": now,
        "exp": now + 300,
        "aud": tpp.discovery()["issuer"],
        "jti": str(uuid.uuid4()),
        "software_id": tpp.software_id,
        "software_statement": software_statement,
        "redirect_uris": options.get("redirect_uris") or ssa_claims["software_redirect_uris"],
        "token_endpoint_auth_method": method,
        "grant_types": ["client_credentials"],
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


def _registration_endpoint(tpp: TPP) -> str:
    return tpp.discovery()["registration_endpoint"]


@cli.command()
@click.option("--no-cert", is_flag=True, help="Leave out the transport certificate.")
@pass_tpp
def register(tpp: TPP, no_cert: bool) -> None:
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
    registration = show_response(response)
    expect(response, 201, what="registration")
    write_json(tpp.path("registration.json"), registration, secret=True)


def _registration(tpp: TPP) -> dict[str, Any]:
    registration = read_json(tpp.path("registration.json"))
    if registration is None:
        raise Failed("not registered: run `register` first")
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
    if method == "private_key_jwt":
        now = int(time.time())
        claims = {
            "iss": registration["client_id"],
            "sub": registration["client_id"],
            "aud": discovery["token_endpoint"],
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 300,
        }
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = sign_jwt(claims, tpp.signing_key(), alg=ALG)
    else:
        form["client_id"] = registration["client_id"]
    click.echo(
        f"POST {discovery['token_endpoint']}  ({method}"
        + (", no client certificate)" if no_cert else ", mutual TLS)")
    )
    response = tpp.http("POST", discovery["token_endpoint"], mtls=not no_cert, data=form)
    body = show_response(response)
    expect(response, 200, what="the token request")
    write_json(tpp.path("token.json"), body, secret=True)
    click.echo(
        "the bank binds the token to the transport certificate (RFC 8705): x5t#S256 "
        + thumbprint(tpp.read("transport.pem", "download"))
    )


def _access_token(tpp: TPP) -> str:
    saved = read_json(tpp.path("token.json"))
    if saved is None:
        raise Failed("no access token: run `token` first")
    return saved["access_token"]


@cli.command()
@click.option("--no-cert", is_flag=True, help="Leave out the transport certificate.")
@click.option("--account-id", help="One account instead of the list.")
@pass_tpp
def accounts(tpp: TPP, no_cert: bool, account_id: str | None) -> None:
    """Call the accounts API with the access token over mutual TLS."""
    url = tpp.discovery().get("accounts_endpoint") or (
        tpp.need("bank_url") + "/open-banking/v3.1/aisp/accounts"
    )
    if account_id:
        url += f"/{account_id}"
    click.echo(f"GET {url}" + ("  (no client certificate)" if no_cert else "  (mutual TLS)"))
    headers = {
        "Authorization": f"Bearer {_access_token(tpp)}",
        "x-fapi-interaction-id": str(uuid.uuid4()),
        "Accept": "application/json",
    }
    response = tpp.http("GET", url, mtls=not no_cert, headers=headers)
    show_response(response)
    expect(response, 200, what="the accounts API")


@cli.group()
def registration() -> None:
    """Read, update or delete the registration (GET/PUT/DELETE registration_client_uri)."""


def _management_headers(tpp: TPP, use_registration_token: bool) -> dict[str, str]:
    if use_registration_token:
        token_value = _registration(tpp)["registration_access_token"]
    else:
        token_value = _access_token(tpp)
    return {"Authorization": f"Bearer {token_value}"}


def show_registration(response: requests.Response, *, brief: bool) -> Any:
    """Print a registration response; ``brief`` leaves out the software statement's claims
    (which the bank returns flattened beside the registered metadata)."""
    if not brief or response.status_code != 200:
        return show_response(response)
    body = response.json()
    try:
        _, ssa_claims = decode_jwt(body.get("software_statement", ""))
    except ValueError:
        ssa_claims = {}
    own = {"software_id"}
    shown = {k: v for k, v in body.items() if k not in ssa_claims or k in own}
    shown["software_statement"] = abbreviate(body.get("software_statement", ""))
    folded = len(body) - len(shown) + 1
    click.echo(f"HTTP {response.status_code} {HTTPStatus(response.status_code).phrase}")
    click.echo(pretty(shown))
    click.echo(f"(and {folded} claims of the software statement, left out: --brief)")
    return body


_brief_option = click.option(
    "--brief", is_flag=True, help="Leave out the software statement's claims."
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
    expect(response, 200, what="reading the registration")


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
    expect(response, 200, what="updating the registration")
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
    url = _registration(tpp)["registration_client_uri"]
    click.echo(f"DELETE {url}  (mutual TLS)")
    response = tpp.http("DELETE", url, headers=_management_headers(tpp, use_registration_token))
    show_response(response)
    expect(response, 204, what="deleting the registration")
    tpp.path("registration.json").unlink(missing_ok=True)
    click.echo("removed registration.json (token.json is kept, to show the bank refusing it)")


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
        raise Failed(f"no {cert_type} certificate issued yet: run `upload-csr` first")
    url = tpp.directory(f"/api/software/{tpp.software_id}/certificates/{issued['kid']}")
    click.echo(f"DELETE {url}?reason={reason}")
    response = tpp.http("DELETE", url, mtls=False, params={"reason": reason})
    record = show_response(response)
    expect(response, 200, what=f"revoking the {cert_type} certificate")
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


def main(args: list[str] | None = None) -> Any:
    return cli.main(args=args, prog_name="python -m example_app.tpp")


if __name__ == "__main__":
    from example_app.tpp import main as _main

    _main()
