"""AnyBank: an authorization server and accounts API with Open Banking DCR.

``create_app(config=None, *, instance_path=None)`` builds it:

* ``POST /register``, ``GET|PUT|DELETE /register/<client_id>``: OpenBankingDCR, clients (and
  tokens) in SQLite in the instance folder (``obdcr.db``);
* ``POST /token``: an Authlib authorization server, ``client_credentials`` with
  ``tls_client_auth``, ``private_key_jwt`` or a client secret; tokens are bound to the
  client certificate (RFC 8705);
* ``GET /open-banking/v3.1/aisp/accounts`` (and ``/accounts/<AccountId>``): a small fixed
  data set, for a certificate-bound token with scope ``accounts``;
* ``GET /.well-known/openid-configuration``: discovery, the only endpoint (with ``/``) that
  needs no client certificate. Every other call without a valid transport certificate gets
  ``401 invalid_client``, whatever the endpoint would have said.

Configuration, later wins: :func:`default_config` (a sandbox Directory at
``https://127.0.0.1:8443``, the bank at ``https://127.0.0.1:9443``, the sandbox CA bundle at
``<instance>/directory/ca-bundle.pem``: the ``make serve`` layout), then
``<instance>/anybank.json`` if it exists (``python -m example_app.bank serve`` writes it), then
``config``. ``flask obdcr revalidate`` reads organisations' status from the sandbox Directory's
API (``ANYBANK_DIRECTORY_URL``, see :func:`directory_status`) while the bank trusts that
Directory. Any ``OBDCR_*`` key given overrides the default, e.g. to trust another Directory::

    app = create_app({
        "OBDCR_ISSUER": "https://as.anybank.example",
        "OBDCR_TRUSTED_DIRECTORIES": {"OpenBanking Ltd": "https://keystore.example/ob.jwks"},
        "OBDCR_JWKS_ALLOWED_HOSTS": ["keystore.example"],
        "OBDCR_HTTP_VERIFY": True,
        "OBDCR_TRANSPORT_CA_FILE": "/etc/anybank/ob-transport-cas.pem",
    })

``python -m example_app.bank serve`` runs it over HTTPS with Werkzeug's server (see
:mod:`example_app.serving`; for gunicorn and nginx see :mod:`example_app.wsgi`).
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import click
from authlib.integrations.flask_oauth2 import AuthorizationServer
from flask import Flask, current_app, jsonify, request

from flask_obdcr import InvalidClient, InvalidToken, OpenBankingDCR, RegistrationError
from flask_obdcr.config import KNOWN_AUTH_METHODS
from flask_obdcr.jwks import HTTPFetcher
from flask_obdcr.revalidation import HTTPDirectoryStatus

from ._util import read_json, write_json

__all__ = [
    "ACCOUNTS",
    "CONFIG_FILE",
    "DEFAULT_DIRECTORY_URL",
    "DEFAULT_ISSUER",
    "create_app",
    "default_config",
    "directory_status",
    "sandbox_config",
]

DEFAULT_ISSUER = "https://127.0.0.1:9443"
DEFAULT_DIRECTORY_URL = "https://127.0.0.1:8443"
DIRECTORY_ISSUER = "OpenBanking Ltd"
#: the sandbox Directory whose organisation API tells re-validation an organisation's status
#: (``GET <url>/api/organisations/<org_id>``): not an OBDCR_* key, the example's own
DIRECTORY_URL_KEY = "ANYBANK_DIRECTORY_URL"
#: read from the instance folder, if present, between the defaults and ``config``
CONFIG_FILE = "anybank.json"
#: the settings ``serve --audience/--auth-method`` chose, kept across restarts
KEPT = ("OBDCR_AUDIENCES", "OBDCR_TOKEN_ENDPOINT_AUTH_METHODS")
#: endpoints reachable without a client certificate
PUBLIC_ENDPOINTS = frozenset({"index", "discovery", "static"})
#: endpoints that judge an access token: a revoked certificate there is invalid_token
TOKEN_ENDPOINTS = frozenset({"accounts", "account", "obdcr.manage"})
SCOPES = ("openid", "accounts")
ACCOUNTS_PATH = "/open-banking/v3.1/aisp/accounts"

#: the accounts API's fixed data set, in the OB Read/Write API v3.1 shape
ACCOUNTS: list[dict[str, Any]] = [
    {
        "AccountId": "22289",
        "Currency": "GBP",
        "AccountType": "Personal",
        "AccountSubType": "CurrentAccount",
        "Nickname": "Bills",
        "Account": [
            {
                "SchemeName": "UK.OBIE.SortCodeAccountNumber",
                "Identification": "80200110203345",
                "Name": "Ms A. N. Customer",
                "SecondaryIdentification": "00021",
            }
        ],
    },
    {
        "AccountId": "31820",
        "Currency": "GBP",
        "AccountType": "Personal",
        "AccountSubType": "Savings",
        "Nickname": "Rainy day",
        "Account": [
            {
                "SchemeName": "UK.OBIE.SortCodeAccountNumber",
                "Identification": "80200110203348",
                "Name": "Ms A. N. Customer",
            }
        ],
    },
    {
        "AccountId": "42281",
        "Currency": "EUR",
        "AccountType": "Business",
        "AccountSubType": "CurrentAccount",
        "Nickname": "Euro trading",
        "Account": [
            {
                "SchemeName": "UK.OBIE.IBAN",
                "Identification": "GB29NWBK60161331926819",
                "Name": "AnyBank Demo Trading Ltd",
            }
        ],
    },
]


def sandbox_config(*, issuer: str, directory_url: str, ca_file: str) -> dict[str, Any]:
    """The ``OBDCR_*`` settings for a bank at ``issuer`` trusting the sandbox Directory at
    ``directory_url``, whose CA bundle ``ca_file`` verifies both its HTTPS certificate and
    the TPPs' transport certificates; with the sandbox-only explain endpoint on."""
    directory_url = directory_url.rstrip("/")
    return {
        "OBDCR_ISSUER": issuer.rstrip("/"),
        "OBDCR_TRUSTED_DIRECTORIES": {DIRECTORY_ISSUER: f"{directory_url}/openbanking.jwks"},
        "OBDCR_JWKS_ALLOWED_HOSTS": [urlsplit(directory_url).hostname],
        "OBDCR_HTTP_VERIFY": os.fspath(ca_file),
        "OBDCR_TRANSPORT_CA_FILE": os.fspath(ca_file),
        # a sandbox: POST /register/explain tells a TPP why a request would be refused (the
        # extension logs a warning at start that it is on; never in production)
        "OBDCR_EXPLAIN_ENDPOINT": True,
        DIRECTORY_URL_KEY: directory_url,
    }


def directory_status(config: Mapping[str, Any]) -> HTTPDirectoryStatus | None:
    """Where ``flask obdcr revalidate`` reads an organisation's status: the sandbox Directory's
    ``GET /api/organisations/<org_id>`` (``{"org_status": ...}``), fetched over HTTPS with the
    bank's ``OBDCR_HTTP_VERIFY`` and ``OBDCR_HTTP_TIMEOUT``. Only when the bank trusts that
    Directory (its ``/openbanking.jwks`` is the trusted JWKS of "OpenBanking Ltd"); a bank
    configured for another Directory gets None: organisations' status is not checked."""
    url = str(config.get(DIRECTORY_URL_KEY) or "").rstrip("/")
    trusted = config.get("OBDCR_TRUSTED_DIRECTORIES") or {}
    if not url or trusted.get(DIRECTORY_ISSUER) != f"{url}/openbanking.jwks":
        return None
    timeout = float(config.get("OBDCR_HTTP_TIMEOUT") or 10)
    connect = min(3.05, timeout / 2)
    fetcher = HTTPFetcher(
        allowed_hosts=[urlsplit(url).hostname or ""],
        verify=config.get("OBDCR_HTTP_VERIFY", True),
        timeout=(connect, timeout - connect),
    )
    return HTTPDirectoryStatus(f"{url}/api/organisations/{{org_id}}", fetcher)


def default_config(instance_path: str) -> dict[str, Any]:
    """The defaults: the ``make serve`` layout (bank instance folder with the Directory's state
    in ``directory/``). Tokens live ``OBDCR_ACCESS_TOKEN_LIFETIME`` (an hour by default)."""
    return sandbox_config(
        issuer=DEFAULT_ISSUER,
        directory_url=DEFAULT_DIRECTORY_URL,
        ca_file=os.path.join(instance_path, "directory", "ca-bundle.pem"),
    )


def create_app(
    config: Mapping[str, Any] | None = None, *, instance_path: str | os.PathLike[str] | None = None
) -> Flask:
    """The AnyBank app. ``instance_path`` defaults to Flask's (``./instance`` in a checkout)."""
    app = Flask(
        "example_app.bank",
        instance_path=os.path.abspath(instance_path) if instance_path is not None else None,
    )
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(default_config(app.instance_path))
    app.config.from_file(os.path.join(app.instance_path, CONFIG_FILE), load=json.load, silent=True)
    if config:
        app.config.update(config)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    _sandbox_directory_if_missing(app)

    # SQLite in the instance folder: obdcr.db; organisations' status from the sandbox Directory
    dcr = OpenBankingDCR(app, directory_status=directory_status(app.config))
    authorization_server = AuthorizationServer(
        app, query_client=dcr.query_client, save_token=dcr.save_token
    )
    dcr.configure_authorization_server(authorization_server)
    app.extensions["anybank"] = {
        "dcr": dcr,
        "authorization_server": authorization_server,
        "directory_status": dcr.directory_status,
    }

    app.before_request(_require_client_certificate)

    # every URL this bank publishes comes from its configuration, never from the Host header
    @app.get("/")
    def index():
        return jsonify(
            {
                "service": "AnyBank (sandbox)",
                "issuer": dcr.settings.issuer,
                "discovery": f"{dcr.urls.issuer}/.well-known/openid-configuration",
            }
        )

    @app.get("/.well-known/openid-configuration")
    def discovery():
        metadata = {
            "issuer": dcr.settings.issuer,
            "scopes_supported": list(SCOPES),
            **dcr.discovery_metadata(),
            # this bank serves the client_credentials grant only
            "grant_types_supported": ["client_credentials"],
            "accounts_endpoint": dcr.urls.under_mtls_base(ACCOUNTS_PATH),
        }
        response = jsonify(metadata)
        response.headers["Cache-Control"] = "max-age=300"
        return response

    @app.post("/token")
    def token():
        return authorization_server.create_token_response()

    @app.get(ACCOUNTS_PATH)
    @dcr.require_token("accounts")
    def accounts():
        return _ob_response({"Account": copy.deepcopy(ACCOUNTS)})

    @app.get(f"{ACCOUNTS_PATH}/<account_id>")
    @dcr.require_token("accounts")
    def account(account_id: str):
        found = [a for a in ACCOUNTS if a["AccountId"] == account_id]
        if not found:
            return _ob_error(404, "UK.OBIE.Resource.NotFound", f"No account {account_id}.")
        return _ob_response({"Account": copy.deepcopy(found)})

    return app


def _sandbox_directory_if_missing(app: Flask) -> None:
    """In a fresh checkout (``make serve`` never run), the default layout names a sandbox CA
    bundle that is not there yet: make the sandbox Directory's PKI in the instance folder, as
    ``make serve`` would, so that ``flask obdcr ...`` works from the first command."""
    default_bundle = os.path.join(app.instance_path, "directory", "ca-bundle.pem")
    if app.config.get("OBDCR_TRANSPORT_CA_FILE") == default_bundle and not os.path.exists(
        default_bundle
    ):
        from .directory import DirectoryState

        DirectoryState.open(os.path.dirname(default_bundle), create=True)


def _require_client_certificate():
    """Refuse every call but the public ones without a valid transport certificate."""
    if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS:
        return None  # a 404/405 stays a 404/405
    dcr: OpenBankingDCR = current_app.extensions["anybank"]["dcr"]
    # a revoked certificate is answered as the endpoint itself would: invalid_token where a
    # token is what the endpoint checks (docs/architecture.md, "Contract: revocation")
    revoked_error = InvalidToken if request.endpoint in TOKEN_ENDPOINTS else InvalidClient
    try:
        dcr.client_certificate(revoked_error=revoked_error)
    except RegistrationError as exc:
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        response.headers["Cache-Control"] = "no-store"
        return response
    return None


def _interaction_id() -> str:
    incoming = request.headers.get("x-fapi-interaction-id", "")
    try:
        return str(uuid.UUID(incoming))
    except ValueError:
        return str(uuid.uuid4())


def _ob_response(data: dict[str, Any]):
    dcr: OpenBankingDCR = current_app.extensions["anybank"]["dcr"]
    self_url = dcr.urls.under_mtls_base(request.path)  # configured base, not the Host header
    body = {"Data": data, "Links": {"Self": self_url}, "Meta": {"TotalPages": 1}}
    response = jsonify(body)
    response.headers["x-fapi-interaction-id"] = _interaction_id()
    response.headers["Cache-Control"] = "no-store"
    return response


def _ob_error(status: int, code: str, message: str):
    body = {
        "Code": str(status),
        "Id": str(uuid.uuid4()),
        "Message": message,
        "Errors": [{"ErrorCode": code, "Message": message}],
    }
    response = jsonify(body)
    response.status_code = status
    response.headers["x-fapi-interaction-id"] = _interaction_id()
    return response


def access_token_record(app: Flask, token: str):
    """The bank's record of an access token (client, scope, ``cnf`` binding), or None."""
    with app.app_context():
        return app.extensions["obdcr"].tokens.find(token)


# -- serving with Werkzeug -----------------------------------------------------------------------


@click.group(help="AnyBank, the example bank.")
def cli() -> None:
    pass


@cli.command()
@click.option(
    "--instance",
    "instance_path",
    default="instance",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The bank's instance folder.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9443, show_default=True, help="0: a free port.")
@click.option(
    "--directory-url",
    default=DEFAULT_DIRECTORY_URL,
    show_default=True,
    help="The sandbox Directory this bank trusts.",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Sandbox CA bundle [default: <instance>/directory/ca-bundle.pem].",
)
@click.option(
    "--cert",
    "cert_file",
    type=click.Path(exists=True, dir_okay=False),
    help="HTTPS certificate chain [default: issued by the sandbox PKI].",
)
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--url-file",
    type=click.Path(dir_okay=False),
    help="Write the bank's URL here once it is listening.",
)
@click.option(
    "--revocation-cache-seconds",
    type=click.IntRange(1, 86400),
    help="OBDCR_REVOCATION_CACHE_SECONDS [default: the extension's, 300].",
)
@click.option(
    "--audience",
    "audiences",
    multiple=True,
    help="OBDCR_AUDIENCES: another aud the bank accepts, e.g. its OB organisation id (repeat;"
    " kept in <instance>/anybank.json for later starts).",
)
@click.option(
    "--auth-method",
    "auth_methods",
    multiple=True,
    type=click.Choice(KNOWN_AUTH_METHODS),
    help="OBDCR_TOKEN_ENDPOINT_AUTH_METHODS: what a TPP may register (repeat; kept for later"
    " starts) [default: all four].",
)
@click.option("--exit-with-parent", is_flag=True, help="Stop when the parent process ends.")
def serve(
    instance_path,
    host,
    port,
    directory_url,
    ca_file,
    cert_file,
    key_file,
    url_file,
    revocation_cache_seconds,
    audiences,
    auth_methods,
    exit_with_parent,
):
    """Serve AnyBank over HTTPS (client certificates asked for, not required) until stopped.

    Writes the effective OBDCR_* settings to <instance>/anybank.json, so that
    `flask --app example_app obdcr clients list` run with the same instance folder sees the
    same bank."""
    from .serving import serve_until_stopped, server_hosts, tls_context

    parent = os.getppid() if exit_with_parent else None
    instance_path = os.path.abspath(instance_path)
    ca_file = os.path.abspath(ca_file or os.path.join(instance_path, "directory", "ca-bundle.pem"))
    if not os.path.isfile(ca_file):
        raise click.ClickException(
            f"no sandbox CA bundle at {ca_file}: start the Directory first"
            " (python -m example_app.directory serve) or pass --ca"
        )
    if cert_file is None or key_file is None:
        from .directory import DirectoryState

        directory_state = os.path.dirname(ca_file)
        directory = DirectoryState.open(directory_state, create=False)
        cert_file, key_file = directory.issue_server_certificate(
            os.path.join(instance_path, "tls"),
            name="bank",
            hosts=server_hosts(host),
        )

    config_file = os.path.join(instance_path, CONFIG_FILE)
    # what an operator chose at an earlier start stays chosen (the conformance set-up, say)
    kept = {
        key: value for key, value in (read_json(config_file, None) or {}).items() if key in KEPT
    }
    if audiences:
        kept["OBDCR_AUDIENCES"] = list(audiences)
    if auth_methods:
        kept["OBDCR_TOKEN_ENDPOINT_AUTH_METHODS"] = list(auth_methods)

    def make_app(url: str):
        config = sandbox_config(issuer=url, directory_url=directory_url, ca_file=ca_file)
        config.update(kept)
        if revocation_cache_seconds is not None:
            config["OBDCR_REVOCATION_CACHE_SECONDS"] = revocation_cache_seconds
        write_json(config_file, config)
        return create_app(config, instance_path=instance_path)

    serve_until_stopped(
        name="anybank",
        title="AnyBank",
        host=host,
        port=port,
        ssl_context=tls_context(cert_file, key_file, client_ca_file=ca_file),
        make_app=make_app,
        url_file=url_file,
        parent_pid=parent,
    )


if __name__ == "__main__":
    from example_app.bank import cli as _cli

    _cli()
