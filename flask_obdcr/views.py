"""The DCR blueprint: thin adapters from HTTP to :mod:`flask_obdcr.registration`."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from flask import Blueprint, Response, current_app, g, json, request
from werkzeug.exceptions import HTTPException

from .errors import RegistrationError, RequestTooLarge
from .explain import explain, registrable
from .log import get_logger
from .management import authorize_management
from .signals import (
    client_deleted,
    client_registered,
    client_updated,
    registration_rejected,
    registration_request_refused,
)
from .state import EXTENSION_KEY, DCRState

logger = get_logger()

blueprint = Blueprint("obdcr", __name__)
#: POST /register/explain, registered beside ``blueprint`` only with OBDCR_EXPLAIN_ENDPOINT
explain_blueprint = Blueprint("obdcr_explain", __name__)

#: the name refusals of the body itself go by in the log, as the pipeline's first policy
BODY_CHECK = "request_body"
#: ``flask.g`` attribute holding the body read, so that a refusal's signal can carry it
_BODY_READ = "_obdcr_body_read"


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
        raise RequestTooLarge(f"The request body is larger than {limit} bytes.", policy=BODY_CHECK)
    body = request.stream.read(limit + 1)
    setattr(g, _BODY_READ, body)
    return body


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


@explain_blueprint.post("/register/explain")
def explain_registration() -> Response:
    """What POST /register would make of this request, policy by policy (docs/architecture.md,
    "Contract: explain"): ``{"report": [...], "registrable": bool}``, always 200.

    Sandboxes only, and off unless OBDCR_EXPLAIN_ENDPOINT is True: the report holds the
    detail every refusal withholds on the wire (which key, which value, which certificate
    subject), and it is an oracle: anyone who can reach it may try requests until one would
    pass, without a trace in the store or the replay cache. It stores nothing and consumes no
    jti (the same body can be registered afterwards), sends no signal, and reads the body
    with the limits of POST /register and the request's own client certificate (mTLS), as
    POST /register does. Acceptable for a workshop sandbox; never for a bank's production.
    """
    state = _state()
    body = read_body(state.settings.max_request_bytes)
    report = explain(
        state.registrar, body, request.content_type, state.certificates.loader(request.environ)
    )
    ok = registrable(report)
    failed = next((row["policy"] for row in report if row["verdict"] == "failed"), None)
    logger.info(
        "DCR explained a registration request, nothing stored: %s",
        "registrable" if ok else f"not registrable, first failed check {failed}",
    )
    return json_response({"report": report, "registrable": ok}, 200)


@explain_blueprint.route(
    "/register/explain", methods=["GET", "PUT", "PATCH", "DELETE"], endpoint="explain_405"
)
def explain_method_not_allowed() -> Response:
    return _method_not_allowed("POST")


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
    _log_refusal(error)
    registration_rejected.send(app, error=error, code=error.error, policy=error.policy)
    if registration_request_refused.has_receivers_for(app):
        # what the request carried, for receivers such as the console's refusal list: the
        # body as already read (never read again, never more), the certificate only parsed
        registration_request_refused.send(
            app,
            error=error,
            body=g.get(_BODY_READ),
            content_type=request.content_type,
            certificate=_presented_certificate(),
        )
    return json_response(error.to_dict(), error.status, error.headers)


def _presented_certificate() -> x509.Certificate | None:
    """The client certificate the refused request presented, unverified; None when it
    presented none or something that is not a certificate."""
    try:
        return _state().certificates.from_environ(request.environ)
    except RegistrationError:
        return None


@explain_blueprint.errorhandler(RegistrationError)
def explain_error(error: RegistrationError) -> Response:
    # a body too large to explain: refused as POST /register would, but no registration was
    # attempted, so no registration_rejected signal
    _log_refusal(error)
    return json_response(error.to_dict(), error.status, error.headers)


def _log_refusal(error: RegistrationError) -> None:
    # every refusal names the check that made it: a pipeline policy, "jti_replay",
    # "request_body", "management", "client_store"; an error raised without a name (by a
    # user's hook, say) goes by the endpoint that refused it
    logger.warning(
        "DCR %s %s refused by %s: %s (%s)",
        request.method,
        request.path,
        error.policy or request.endpoint or "-",
        error.error,
        error.detail,
    )


@blueprint.errorhandler(HTTPException)
@explain_blueprint.errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    # werkzeug's own 4xx (e.g. MAX_CONTENT_LENGTH, a broken chunked body) as JSON, not HTML
    status = error.code or 400
    # the OB DCR OpenAPI lists four error codes for a 400: a body werkzeug could not read is
    # a client-metadata problem like any other unreadable request
    body_error = status in (400, 413, 415)
    code = "invalid_client_metadata" if body_error else "invalid_request"
    if status < 500:  # a 500 is no refusal: Flask has logged the exception already
        logger.warning(
            "DCR %s %s refused by %s: %s (%s)",
            request.method,
            request.path,
            BODY_CHECK if body_error else "http",
            code,
            f"{status} {error.name}",
        )
    return json_response({"error": code, "error_description": error.name}, status)
