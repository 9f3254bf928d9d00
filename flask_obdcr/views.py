"""The DCR blueprint: thin adapters from HTTP to :mod:`flask_obdcr.registration`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, json, request
from werkzeug.exceptions import HTTPException

from .errors import RegistrationError, RequestTooLarge
from .log import get_logger
from .management import authorize_management
from .signals import client_deleted, client_registered, client_updated, registration_rejected
from .state import EXTENSION_KEY, DCRState

logger = get_logger()

blueprint = Blueprint("obdcr", __name__)


def _state() -> DCRState:
    return current_app.extensions[EXTENSION_KEY]


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    response = current_app.response_class(
        json.dumps(body), status=status, mimetype="application/json"
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    response.headers.update(headers or {})
    return response


def read_body(limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of the body: enough to tell that it is too large
    without ever buffering an attacker's gigabyte."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    return request.stream.read(limit + 1)


@blueprint.post("/register")
def register() -> Response:
    state = _state()
    body = read_body(state.settings.max_request_bytes)
    registration = state.registrar.register(
        body, request.content_type, state.certificates.loader(request.environ)
    )
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    logger.info(
        "registered client %s for software %s (org %s), certificate bound by %s",
        registration.client.client_id,
        registration.client.software_id,
        registration.client.org_id,
        registration.context.certificate_binding,
    )
    client_registered.send(app, client=registration.client, context=registration.context)
    return json_response(_with_client_uri(state, registration.response), 201)


def _with_client_uri(state: DCRState, body: dict[str, Any]) -> dict[str, Any]:
    # RFC 7592: where the client reads, updates and deletes its registration (from the
    # configuration, never from the Host header)
    body["registration_client_uri"] = state.urls.registration_client_uri(body["client_id"])
    return body


@blueprint.route("/register/<client_id>", methods=["GET", "PUT", "DELETE"], endpoint="manage")
def manage(client_id: str) -> Response:
    state = _state()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    client = authorize_management(
        state, client_id, request.headers.get("Authorization"), request.environ
    )
    if request.method == "GET":
        return json_response(_with_client_uri(state, client.to_response()), 200)
    if request.method == "PUT":
        body = read_body(state.settings.max_request_bytes)
        registration = state.registrar.update(
            client, body, request.content_type, state.certificates.loader(request.environ)
        )
        logger.info("updated client %s", client.client_id)
        client_updated.send(
            app, client=registration.client, previous=client, context=registration.context
        )
        return json_response(_with_client_uri(state, registration.response), 200)
    state.registrar.delete(client)
    logger.info("deleted client %s", client.client_id)
    client_deleted.send(app, client=client)
    # no body, so no Content-Type (Flask's default would say text/html)
    response = current_app.response_class(status=204)
    del response.headers["Content-Type"]
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/register", methods=["GET", "PUT", "PATCH", "DELETE"], endpoint="register_405")
def register_method_not_allowed() -> Response:
    return _method_not_allowed("POST")


@blueprint.route("/register/<client_id>", methods=["POST", "PATCH"], endpoint="manage_405")
def manage_method_not_allowed(client_id: str) -> Response:
    return _method_not_allowed("GET, PUT, DELETE")


def _method_not_allowed(allow: str) -> Response:
    # Flask's own 405 is an HTML page; DCR clients get JSON like every other answer here
    body = {"error": "invalid_request", "error_description": f"Use {allow} on this endpoint."}
    return json_response(body, 405, {"Allow": allow})


@blueprint.errorhandler(RegistrationError)
def registration_error(error: RegistrationError) -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    logger.warning(
        "DCR %s %s refused by %s: %s (%s)",
        request.method,
        request.path,
        error.policy or "-",
        error.error,
        error.detail,
    )
    registration_rejected.send(app, error=error, code=error.error, policy=error.policy)
    return json_response(error.to_dict(), error.status, error.headers)


@blueprint.errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    # werkzeug's own 4xx (e.g. MAX_CONTENT_LENGTH, a broken chunked body) as JSON, not HTML
    status = error.code or 400
    # the OB DCR OpenAPI lists four error codes for a 400: a body werkzeug could not read is
    # a client-metadata problem like any other unreadable request
    code = "invalid_client_metadata" if status in (400, 413, 415) else "invalid_request"
    return json_response({"error": code, "error_description": error.name}, status)
