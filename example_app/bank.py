"""AnyBank: an authorization server, consents and accounts API with Open Banking DCR.

``create_app(config=None, *, instance_path=None)`` builds it:

* ``POST /register``, ``GET|PUT|DELETE /register/<client_id>``: OpenBankingDCR, clients (and
  tokens) in SQLite in the instance folder (``obdcr.db``);
* ``POST /token``: an Authlib authorization server, over mutual TLS with the client's
  registered auth method (``tls_client_auth``, ``private_key_jwt`` or a client secret):
  ``client_credentials``, ``authorization_code`` (single-use codes, an id_token and a refresh
  token) and ``refresh_token``; access tokens are bound to the client certificate (RFC 8705);
* ``POST|GET|DELETE /open-banking/v3.1/aisp/account-access-consents[/<ConsentId>]``: the AISP
  consents (:mod:`example_app.consents`), with a client_credentials token;
* ``GET /authorize``, ``/sign-in``, ``/consent``: the customer's pages of the consent journey
  (:mod:`example_app.customer`, :mod:`example_app.authorize`): a request object signed by the
  TPP, a sandbox customer's sign-in, the accounts they choose; back to the TPP's redirect URI
  with ``code``, ``id_token`` and ``state`` in the fragment;
* ``GET /open-banking/v3.1/aisp/accounts`` (``/<AccountId>``, ``/<AccountId>/balances``): the
  accounts a customer consented to, for a certificate-bound token of the authorization-code
  grant (:mod:`example_app.accounts`); a client_credentials token gets 403;
* ``GET /.well-known/openid-configuration`` (discovery), ``GET /jwks`` (the id_token keys)
  and the customer's pages need no client certificate. Every other call without a valid
  transport certificate gets ``401 invalid_client``, whatever the endpoint would have said.

The instance folder keeps, besides ``obdcr.db``: ``anybank.db`` (consents, authorization
codes and refresh tokens, hashed: :mod:`example_app.bank_store`), ``anybank-secret.key`` (the
session key, unless the configuration gives ``SECRET_KEY``) and the id_token signing keys
(:mod:`example_app.bank_keys`), each made once, owner-only.

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

import json
import os
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
from .accounts import ACCOUNTS, ACCOUNTS_PATH, accounts_blueprint
from .authorize import Journey, install_grants
from .bank_keys import ID_TOKEN_ALGS, IdTokenKeys, secret_key
from .bank_store import BankStore
from .consents import CONSENTS_PATH, consents_blueprint
from .customer import customer_blueprint
from .operator import BROWSER_ENDPOINTS, install_console
from .pages import CookieOnDemandSessions

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
PUBLIC_ENDPOINTS = (
    frozenset(
        {
            "index",
            "discovery",
            "static",
            "jwks",
            # the customer's browser pages of the consent journey (a browser has no certificate)
            "customer.authorize",
            "customer.sign_in",
            "customer.consent",
        }
    )
    | BROWSER_ENDPOINTS
)  # the operator console and its sign-in (a sandbox operator's browser)
#: endpoints that judge an access token: a revoked certificate there is invalid_token
TOKEN_ENDPOINTS = frozenset(
    {
        "accounts.accounts",
        "accounts.account",
        "accounts.balances",
        "consents.create",
        "consents.read",
        "consents.delete",
        "obdcr.manage",
    }
)
SCOPES = ("openid", "accounts")
#: the journey's records (consents, codes, refresh tokens), in the instance folder
DATABASE_FILE = "anybank.db"


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
        # a sandbox: the TPP's own page on this machine (https://127.0.0.1:<port>/callback)
        # may be a registered redirect URI (warned at start too)
        "OBDCR_LOOPBACK_REDIRECT_URIS": True,
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
    _customer_sessions(app, config or {})

    # SQLite in the instance folder: obdcr.db; organisations' status from the sandbox Directory
    dcr = OpenBankingDCR(app, directory_status=directory_status(app.config))
    # the authorization-code grant issues a refresh token with its access token
    app.config.setdefault("OAUTH2_REFRESH_TOKEN_GENERATOR", True)
    store = BankStore(os.path.join(app.instance_path, DATABASE_FILE), clock=dcr.clock)
    keys = IdTokenKeys(app.instance_path)
    authorization_server = AuthorizationServer(app, query_client=dcr.query_client)
    journey = Journey(dcr, authorization_server, store, keys)
    authorization_server.init_app(app, save_token=journey.save_token)
    dcr.configure_authorization_server(authorization_server)
    install_grants(authorization_server)
    app.extensions["anybank"] = {
        "dcr": dcr,
        "authorization_server": authorization_server,
        "directory_status": dcr.directory_status,
        "journey": journey,
        "store": store,
    }

    app.before_request(_require_client_certificate)
    app.register_blueprint(customer_blueprint(journey))
    app.register_blueprint(consents_blueprint(dcr, store))
    app.register_blueprint(accounts_blueprint(dcr, store))

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
        issuer = dcr.urls.issuer
        metadata = {
            "issuer": dcr.settings.issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "jwks_uri": f"{issuer}/jwks",
            "scopes_supported": list(SCOPES),
            **dcr.discovery_metadata(),
            # the OB AISP journey: the hybrid flow, answered in the fragment (FAPI 1 Advanced)
            "response_types_supported": ["code id_token"],
            "response_modes_supported": ["fragment"],
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            "request_object_signing_alg_values_supported": list(ID_TOKEN_ALGS),
            "id_token_signing_alg_values_supported": list(ID_TOKEN_ALGS),
            "request_parameter_supported": True,
            "claims_parameter_supported": True,
            "accounts_endpoint": dcr.urls.under_mtls_base(ACCOUNTS_PATH),
            # not a standard key: where this example's TPP asks for a consent
            "account_access_consents_endpoint": dcr.urls.under_mtls_base(CONSENTS_PATH),
        }
        response = jsonify(metadata)
        response.headers["Cache-Control"] = "max-age=300"
        return response

    @app.get("/jwks")
    def jwks():
        response = jsonify(keys.jwks())
        response.headers["Cache-Control"] = "max-age=300"
        return response

    @app.post("/token")
    def token():
        try:
            request.args  # noqa: B018 - Werkzeug decodes the raw query strictly; Authlib reads it
        except UnicodeDecodeError:
            response = jsonify(
                error="invalid_request", error_description="The query string is not UTF-8."
            )
            response.status_code = 400
            response.headers["Cache-Control"] = "no-store"
            return response
        return authorization_server.create_token_response()

    # the operator console at /console, behind a sandbox operator's sign-in
    install_console(app, dcr)
    return app


def _customer_sessions(app: Flask, config: Mapping[str, Any]) -> None:
    """The customer's session cookie: signed with ``SECRET_KEY`` when the configuration gives
    one, else with a key made once in the instance folder; named for this bank (the TPP's
    page on the same loopback host has a cookie of its own), HTTPS only, not sent cross-site."""
    if not app.config.get("SECRET_KEY"):
        app.secret_key = secret_key(app.instance_path)
    app.session_interface = CookieOnDemandSessions()  # API calls carry no cookie
    if "SESSION_COOKIE_NAME" not in config:
        app.config["SESSION_COOKIE_NAME"] = "anybank_session"
    app.config.update(
        SESSION_COOKIE_SECURE=True, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax"
    )


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
