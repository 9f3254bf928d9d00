"""The DCR blueprint: thin adapters from HTTP to :mod:`flask_obdcr.registration`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, json, request
from werkzeug.exceptions import HTTPException

from .certificates import client_certificate_from_environ
from .errors import RegistrationError, RequestTooLarge
from .signals import client_registered, registration_rejected

if TYPE_CHECKING:
    from .extension import DCRState

logger = logging.getLogger("flask_obdcr")

blueprint = Blueprint("obdcr", __name__)


def _state() -> DCRState:
    return current_app.extensions["obdcr"]


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


def certificate_loader(state: DCRState):
    settings = state.settings
    environ = request.environ

    def load():
        return client_certificate_from_environ(
            environ, header=settings.client_cert_header, trusted_proxies=settings.trusted_proxies
        )

    return load


@blueprint.post("/register")
def register() -> Response:
    state = _state()
    body = read_body(state.settings.max_request_bytes)
    registration = state.registrar.register(body, request.content_type, certificate_loader(state))
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    logger.info(
        "registered client %s for software %s (org %s), certificate bound by %s",
        registration.client.client_id,
        registration.client.software_id,
        registration.client.org_id,
        registration.context.certificate_binding,
    )
    client_registered.send(app, client=registration.client, context=registration.context)
    return json_response(registration.response, 201)


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
    code = "invalid_client_metadata" if status == 413 else "invalid_request"
    return json_response({"error": code, "error_description": error.name}, status)
