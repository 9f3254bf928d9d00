"""The Python peer: Authlib's own RFC 7591 registration endpoint in a Flask app.

What a Flask shop would wire by hand instead of flask-obdcr: Authlib's
``ClientRegistrationEndpoint`` (:mod:`authlib.oauth2.rfc7591`) with the RFC 7591 and OpenID
Connect client metadata checks against the server's metadata, and a software statement
(RFC 7591 section 2.3) whose PS256 signature is verified with the Directory's published keys
(``directory-jwks.json`` in the instance folder, read once). Nothing else: no Open Banking
rule (roles, redirect URIs against the SSA, the software's keys, the request's own signature,
the transport certificate and its binding), no replay cache, open registration (no initial
access token, as node-oidc-provider here). The client is stored as one JSON row in SQLite,
the same way as the floor app (:class:`benchmarks.harness.apps.ClientTable`).

The request is JSON (``application/json``): the client metadata plus ``software_statement``,
as RFC 7591 has it (Open Banking's signed request JWT is not something Authlib reads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc7591 import ClientMetadataClaims, ClientRegistrationEndpoint
from authlib.oidc.registration import ClientMetadataClaims as OIDCClientMetadataClaims
from flask import Flask
from joserfc.jwk import KeySet

from .apps import ClientTable

#: what the peer's server supports: Authlib validates the requested metadata against it
SERVER_METADATA: dict[str, Any] = {
    "scopes_supported": ["openid", "accounts", "payments"],
    "response_types_supported": ["code id_token", "code"],
    "grant_types_supported": [
        "authorization_code",
        "client_credentials",
        "refresh_token",
        "implicit",
    ],
    "token_endpoint_auth_methods_supported": ["private_key_jwt", "tls_client_auth"],
    "token_endpoint_auth_signing_alg_values_supported": ["PS256", "ES256"],
    "id_token_signing_alg_values_supported": ["PS256", "ES256"],
    "request_object_signing_alg_values_supported": ["PS256", "ES256"],
}


class _OpenRegistration:
    """The credential of an open registration endpoint (no initial access token)."""


def create_app(folder: Path) -> Flask:
    """The peer: ``POST /register`` (JSON metadata with a software statement) -> 201."""
    directory_keys = KeySet.import_key_set(json.loads((folder / "directory-jwks.json").read_text()))
    clients = ClientTable(folder / "authlib-peer.db")
    open_registration = _OpenRegistration()

    class Registration(ClientRegistrationEndpoint):
        software_statement_alg_values_supported = ["PS256"]

        def authenticate_token(self, request: Any) -> Any:
            return open_registration

        def resolve_public_key(self, request: Any) -> Any:
            return directory_keys

        def get_server_metadata(self) -> dict[str, Any]:
            return SERVER_METADATA

        def generate_client_info(self, request: Any) -> dict[str, Any]:
            info = super().generate_client_info(request)
            # private_key_jwt and tls_client_auth clients have no secret: none is made,
            # stored or sent back
            info.pop("client_secret", None)
            info.pop("client_secret_expires_at", None)
            return info

        def save_client(
            self, client_info: dict[str, Any], client_metadata: dict[str, Any], request: Any
        ) -> dict[str, Any]:
            record = {**client_metadata, **client_info}
            clients.insert(client_info["client_id"], json.dumps(record))
            return record

    app = Flask("authlib_peer")
    # registration only: no token endpoint here, so neither a client lookup nor a token store
    server = AuthorizationServer(app, query_client=lambda client_id: None, save_token=None)
    server.register_endpoint(
        Registration(claims_classes=[ClientMetadataClaims, OIDCClientMetadataClaims])
    )

    @app.get("/")
    def index() -> Any:
        return {"service": "authlib-peer"}

    @app.post("/register")
    def register() -> Any:
        return server.create_endpoint_response(Registration.ENDPOINT_NAME)

    return app
