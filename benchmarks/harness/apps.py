"""The WSGI apps the servers under test run, as factories without arguments.

gunicorn calls ``'benchmarks.harness.apps:bank()'``; granian's ``--factory`` calls
``benchmarks.harness.apps:bank`` with no arguments at all, so every factory reads its instance
folder from the environment (``OBDCR_BENCH_INSTANCE``, set by :mod:`benchmarks.harness.servers`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .common import CERT_HEADER, INSTANCE_ENV


def instance_folder() -> Path:
    try:
        return Path(os.environ[INSTANCE_ENV])
    except KeyError:
        raise SystemExit(f"{INSTANCE_ENV} is not set: the instance folder of the app") from None


def bank() -> Any:
    """AnyBank behind an (imagined) TLS-terminating nginx: the client certificate arrives in
    ``X-SSL-Client-Cert``, honoured from 127.0.0.1 only; its configuration is the instance
    folder's ``anybank.json``."""
    from example_app.wsgi import behind_nginx

    return behind_nginx(
        header=CERT_HEADER, trusted_proxies=["127.0.0.1"], instance_path=instance_folder()
    )


def _with_proxy_fix(app: Any) -> Any:
    """The same ProxyFix as the bank behind its proxy: every Flask target pays for it alike."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    # Flask's documented way to add WSGI middleware replaces the wsgi_app method
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=0, x_proto=1, x_host=1, x_port=1)
    return app


def noop() -> Any:
    """The stack without the work: the server + Flask (+ the same ProxyFix) and a ``POST
    /register`` that reads the body and answers 201 with a small JSON document. What it
    reaches is the ceiling for any Flask endpoint on this machine."""
    from flask import Flask, request

    app = Flask("noop")

    @app.get("/")
    def index() -> Any:
        return {"service": "no-op"}

    @app.post("/register")
    def register() -> Any:
        request.get_data()
        return {"client_id": str(uuid.uuid4())}, 201

    @app.post("/token")
    def token() -> Any:
        # the form read, a token string and the answer a token endpoint gives: nothing checked
        request.form.get("grant_type")
        return _token_answer(secrets.token_urlsafe(32))

    return _with_proxy_fix(app)


def _token_answer(access_token: str) -> Any:
    from flask import jsonify

    response = jsonify(
        access_token=access_token, token_type="Bearer", expires_in=3600, scope="accounts"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


class _Table:
    """One SQLite table (WAL, ``synchronous=NORMAL``, as the extension's stores set them), one
    connection per thread and process, the table made on first use."""

    schema = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(self.schema)
            local.conn, local.pid = conn, os.getpid()
        return conn


class ClientTable(_Table):
    """The registered clients of the floor and of the Authlib peer, written the same way."""

    schema = "CREATE TABLE IF NOT EXISTS clients (client_id TEXT PRIMARY KEY, body TEXT)"

    def insert(self, client_id: str, body: str) -> None:
        self.connection().execute("INSERT INTO clients VALUES (?, ?)", (client_id, body))


def floor() -> Any:
    """The least any Flask DCR server must do per registration, and nothing more: the same
    server, Flask and ProxyFix as the bank; ``POST /register`` splits the request JWT,
    verifies its PS256 signature with the software's key (loaded once: no JWKS lookup, no
    SSA, no certificate, no claim checked), inserts the decoded claims into SQLite and
    answers 201 with them. The request signature is the one public-key operation no cache
    can skip (every request JWT is new), and the insert the one write no durable store can
    skip; a conforming server does all of this and more."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from flask import Flask, Response, request
    from jwcrypto import jwk

    folder = instance_folder()
    public = jwk.JWK(**json.loads((folder / "software-key.json").read_text()))
    key = public.get_op_key("verify")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
    clients = ClientTable(folder / "floor.db")
    app = Flask("floor")

    @app.get("/")
    def index() -> Any:
        return {"service": "floor"}

    @app.post("/register")
    def register() -> Any:
        token = request.get_data().decode("ascii")
        signing_input, _, signature = token.rpartition(".")
        key.verify(
            base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
            signing_input.encode("ascii"),
            pss,
            hashes.SHA256(),
        )
        payload = signing_input.partition(".")[2]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["client_id"] = client_id = str(uuid.uuid4())
        body = json.dumps(claims)
        clients.insert(client_id, body)
        return Response(body, status=201, mimetype="application/json")

    return _with_proxy_fix(app)


class TokenTable(_Table):
    """Issued tokens, as ``SQLiteTokenStore`` keeps them (hashed, the client, scope, times and
    the certificate thumbprint)."""

    schema = (
        "CREATE TABLE IF NOT EXISTS tokens (token_hash TEXT PRIMARY KEY, client_id TEXT,"
        " scope TEXT, issued_at INTEGER, expires_at INTEGER, x5t_s256 TEXT)"
    )

    def insert(self, *row: Any) -> None:
        self.connection().execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)", row)


#: the token floor's client secret (client_secret_basic): what the benchmark registers
TOKEN_FLOOR_SECRET = "token-floor-secret"


def token_floor() -> Any:
    """The least a Flask token endpoint binding its tokens and keeping them durably must do
    (:func:`_token_floor`), the tokens in SQLite."""
    return _token_floor(durable=True)


def token_floor_in_memory() -> Any:
    """The same as :func:`token_floor`, the tokens kept in a dict of the process, as
    node-oidc-provider keeps them: what the durable write costs, by difference."""
    return _token_floor(durable=False)


def _token_floor(*, durable: bool) -> Any:
    """The least any Flask token endpoint must do per client_credentials request that binds
    its token to the certificate and keeps it, and nothing more: the same server,
    Flask and ProxyFix as the bank; ``POST /token`` reads the form, loads the certificate
    from ``X-SSL-Client-Cert`` (trusted, as node trusts the proxy: no chain, no revocation)
    and takes its SHA-256 thumbprint, authenticates the client the cheapest way its method
    allows (private_key_jwt: the assertion's PS256 signature with the software's key, loaded
    once, and its jti added to a set of this process; client_secret_basic: one constant-time
    comparison; tls_client_auth: the client_id present), then makes a token string, keeps it
    hashed (``durable``: inserted into SQLite; else in a dict of the process) and answers. No
    client lookup, no claim checked, no audience, no expiry: a conforming server does all of
    this and more."""
    from urllib.parse import unquote

    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from flask import Flask, abort, request
    from jwcrypto import jwk

    folder = instance_folder()
    public = jwk.JWK(**json.loads((folder / "software-key.json").read_text()))
    key = public.get_op_key("verify")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
    table = TokenTable(folder / "token-floor.db")
    kept: dict[str, tuple[Any, ...]] = {}
    seen: set[str] = set()
    app = Flask("token_floor")

    @app.get("/")
    def index() -> Any:
        return {"service": "token floor"}

    @app.post("/register")
    def register() -> Any:  # what the benchmark's set-up asks: any client is one
        return {"client_id": str(uuid.uuid4()), "client_secret": TOKEN_FLOOR_SECRET}, 201

    @app.post("/token")
    def token() -> Any:
        form = request.form
        pem = request.headers.get(CERT_HEADER)
        if not pem:
            abort(401)
        certificate = x509.load_pem_x509_certificate(unquote(pem).encode("ascii"))
        thumbprint = base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA256()))
        assertion = form.get("client_assertion")
        if assertion:
            signing_input, _, signature = assertion.rpartition(".")
            try:
                key.verify(
                    base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                    signing_input.encode("ascii"),
                    pss,
                    hashes.SHA256(),
                )
            except InvalidSignature:
                abort(401)
            payload = signing_input.partition(".")[2]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            client_id = claims["sub"]
            if claims["jti"] in seen:
                abort(401)
            seen.add(claims["jti"])
        elif request.authorization is not None:
            client_id = request.authorization.username or ""
            secret = (request.authorization.password or "").encode()
            if not hmac.compare_digest(secret, TOKEN_FLOOR_SECRET.encode()):
                abort(401)
        else:
            client_id = form["client_id"]
        access_token = secrets.token_urlsafe(32)
        now = int(time.time())
        token_hash = hashlib.sha256(access_token.encode()).hexdigest()
        row = (client_id, "accounts", now, now + 3600, thumbprint.rstrip(b"=").decode("ascii"))
        if durable:
            table.insert(token_hash, *row)
        else:
            kept[token_hash] = row
        return _token_answer(access_token)

    return _with_proxy_fix(app)


def authlib_peer() -> Any:
    """Authlib's own RFC 7591 registration endpoint (:mod:`benchmarks.harness.authlib_peer`)."""
    from .authlib_peer import create_app

    return _with_proxy_fix(create_app(instance_folder()))


#: the file of the protected API's settings in its instance folder (the bank's OBDCR_* keys)
API_CONFIG = "api.json"
#: what both GETs of the protected API answer
ACCOUNTS = {"Data": {"Account": [{"AccountId": "22289", "Currency": "GBP"}]}}


def protected_api() -> Any:
    """A resource server beside its authorization server, for ``require_token`` over HTTP: the
    same extension, store and settings as the bank (the instance folder's ``api.json``: the
    sandbox Directory trusted, the certificate in ``X-SSL-Client-Cert`` from 127.0.0.1), the
    same ProxyFix, and only what the comparison needs:

    * ``POST /register`` (the extension's) and ``POST /token`` (Authlib's
      ``AuthorizationServer`` wired by ``dcr.configure_authorization_server``, tokens bound to
      the certificate and stored with the clients);
    * ``GET /accounts``: a small JSON document behind ``@dcr.require_token("accounts")``;
    * ``GET /accounts-open``: the same view without the decorator (nothing checked).

    The example bank itself checks the client certificate before every non-public view
    (``_require_client_certificate``), so its own GETs have no unchecked twin; this app has
    only the decorator's work between the two."""
    from authlib.integrations.flask_oauth2 import AuthorizationServer
    from flask import Flask

    from flask_obdcr import OpenBankingDCR

    folder = instance_folder()
    app = Flask("bench_api", instance_path=str(folder))
    app.config.update(json.loads((folder / API_CONFIG).read_text()))
    dcr = OpenBankingDCR(app)
    server = AuthorizationServer(app, query_client=dcr.query_client, save_token=dcr.save_token)
    dcr.configure_authorization_server(server)

    @app.get("/")
    def index() -> Any:
        return {"service": "require_token API"}

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    def accounts() -> Any:
        return ACCOUNTS

    app.add_url_rule("/accounts", "accounts", dcr.require_token("accounts")(accounts))
    app.add_url_rule("/accounts-open", "accounts_open", accounts)
    return _with_proxy_fix(app)
