"""The sandbox Directory's HTTP API and published documents (the routes are listed in
:mod:`example_app.directory`), and its portal (:mod:`~example_app.directory.portal`): ``GET /``
sends a browser there. ``POST /api/software/<software_id>/certificates/transport``
takes ``?profile=eidas`` for an eIDAS/OBWAC-shaped transport certificate
(:meth:`DirectoryState.sign_csr`)."""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from flask import Flask, Response, jsonify, redirect, request, url_for
from werkzeug.exceptions import HTTPException

from .portal import portal_blueprint
from .state import CRL_PATH, JWKS_MAX_AGE, OCSP_PATH, DirectoryError, DirectoryState

__all__ = ["create_directory_app"]

#: an OCSP request about one certificate is a few hundred bytes
MAX_OCSP_REQUEST_BYTES = 16 * 1024
#: any request body (a CSR, a JSON form) is refused above this: 413
MAX_BODY_BYTES = 1024 * 1024
OCSP_RESPONSE_TYPE = "application/ocsp-response"
#: the portal's session cookie: its own name, because cookies do not tell ports apart and the
#: bank on the same loopback address has a session of its own
SESSION_COOKIE = "obdcr_directory_portal"


def create_directory_app(
    state: DirectoryState | str | os.PathLike[str], *, base_url: str | None = None
) -> Flask:
    """The Directory's HTTP API and published documents, backed by ``state``.

    ``base_url`` (the URL the service is reached at) goes into the SSAs' JWKS URLs and the
    certificates' CRL and OCSP URLs; without it, ``state.base_url`` (set it once the server is
    bound), or else the first request's URL.
    """
    if not isinstance(state, DirectoryState):
        state = DirectoryState.open(state)
    if base_url is not None:
        state.base_url = base_url
    app = Flask("example_app.directory")
    app.extensions["sandbox_directory"] = state
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # the portal's CSRF tokens live in the session; the key is kept in the state folder, so a
    # restart does not void the forms open in a browser
    app.secret_key = state.portal_secret_key()
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_SECURE=True,  # the Directory is served over HTTPS only
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.register_blueprint(portal_blueprint())

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
        # a browser (HTML preferred to JSON) is sent to the portal; API clients get JSON
        wanted = request.accept_mimetypes.best_match(["application/json", "text/html"])
        if wanted == "text/html":
            response = redirect(url_for("portal.index"), 303)
            response.headers["Vary"] = "Accept"
            return response
        response = jsonify(
            {
                "service": "Sandbox Open Banking Directory",
                "issuer": state.sandbox.issuer,
                "jwks_uri": f"{url}/openbanking.jwks",
                "ca_bundle": f"{url}/ca.pem",
                "crl": f"{url}{CRL_PATH}",
                "ocsp": f"{url}{OCSP_PATH}",
                "organisations": f"{url}/api/organisations",
                "organisation_count": len(state.registry["organisations"]),
                "software_count": len(state.registry["software"]),
                "portal": f"{url}/portal/",
            }
        )
        response.headers["Vary"] = "Accept"
        return response

    @app.get("/ca.pem")
    def ca_bundle():
        return Response(state.ca_bundle.read_text(), mimetype="application/x-pem-file")

    @app.get("/openbanking.jwks")
    def directory_jwks():
        return key_set(state.sandbox.jwks())

    @app.get("/logos/<software_id>.svg")
    def logo(software_id: str):
        # a bank's consent page shows it in the customer's browser: an image, nothing active
        response = Response(state.logo_svg(software_id), mimetype="image/svg+xml")
        response.headers["Content-Security-Policy"] = "default-src 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "max-age=300"
        return response

    # -- the issuing CA's CRL and OCSP responder -------------------------------------------

    @app.get(CRL_PATH)
    def crl():
        response = Response(state.crl(), mimetype="application/pkix-crl")
        response.headers["Cache-Control"] = "no-cache"  # a new one after every revocation
        return response

    @app.post(OCSP_PATH)
    def ocsp_post():
        if request.mimetype != "application/ocsp-request":
            raise DirectoryError(
                415, "invalid_request", "an OCSP request is sent as application/ocsp-request."
            )
        if (request.content_length or 0) > MAX_OCSP_REQUEST_BYTES:
            raise DirectoryError(413, "invalid_request", "the OCSP request is too large.")
        return _ocsp(state, request.get_data())

    @app.get(f"{OCSP_PATH}/<path:encoded>")
    def ocsp_get(encoded: str):
        # RFC 6960 appendix A.1: the base64 of the DER request, URL-escaped (Werkzeug has
        # unescaped it; a "/" of the base64 alphabet arrives as a path separator)
        try:
            der = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            der = b""
        return _ocsp(state, der[:MAX_OCSP_REQUEST_BYTES])

    # -- organisations and software --------------------------------------------------------

    @app.post("/api/organisations")
    def add_organisation():
        data = body_json()
        organisation = state.add_organisation(
            data.get("org_name", ""),
            authority_id=data.get("authority_id") or "OBGBR",
            registration_id=data.get("registration_id"),
        )
        return jsonify(organisation), 201

    def organisation_view(org_id: str) -> dict[str, Any]:
        organisation = dict(state.organisation(org_id))
        organisation["software"] = [s["software_id"] for s in state.software_of(org_id)]
        return organisation

    @app.get("/api/organisations/<org_id>")
    def get_organisation(org_id: str):
        return jsonify(organisation_view(org_id))

    @app.patch("/api/organisations/<org_id>")
    def change_organisation(org_id: str):
        data = body_json()
        if set(data) != {"org_status"}:
            raise DirectoryError(
                400, "invalid_request", 'only org_status may be changed: {"org_status": ...}.'
            )
        state.set_org_status(org_id, data["org_status"])
        return jsonify(organisation_view(org_id))

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
        base = public_base_url()  # the certificate names the CRL and OCSP URLs under it
        profile = request.args.get("profile", "ob")
        record = state.sign_csr(software_id, cert_type, request.get_data(), profile=profile)
        return jsonify(_public(record, base, software_id)), 201

    @app.get("/api/software/<software_id>/certificates/<kid>.pem")
    def download_certificate(software_id: str, kid: str):
        record = state.certificate(software_id, kid)
        response = Response(record["pem"], mimetype="application/x-pem-file")
        response.headers["Content-Disposition"] = f'attachment; filename="{kid}.pem"'
        return response

    @app.delete("/api/software/<software_id>/certificates/<kid>")
    def revoke_certificate(software_id: str, kid: str):
        reason = request.args.get("reason", "unspecified")
        record = state.revoke(software_id, kid, reason=reason)
        return jsonify(_public(record, public_base_url(), software_id))

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


def _ocsp(state: DirectoryState, der: bytes) -> Response:
    response = Response(state.ocsp_response(der), mimetype=OCSP_RESPONSE_TYPE)
    response.headers["Cache-Control"] = "no-cache"
    return response


def _public(record: dict[str, Any], base_url: str, software_id: str) -> dict[str, Any]:
    """A certificate record as the API shows it (with its download URL)."""
    shown = {k: v for k, v in record.items() if k != "pem"}
    shown["pem_url"] = f"{base_url}/api/software/{software_id}/certificates/{record['kid']}.pem"
    return shown


def _software_view(software: dict[str, Any], base_url: str) -> dict[str, Any]:
    view = {k: v for k, v in software.items() if k != "certificates"}
    sid, org = software["software_id"], software["org_id"]
    view["software_jwks_endpoint"] = f"{base_url}/{org}/{sid}.jwks"
    view["software_jwks_revoked_endpoint"] = f"{base_url}/{org}/revoked/{sid}.jwks"
    view["certificates"] = [_public(r, base_url, sid) for r in software["certificates"]]
    return view
