"""The shape of AnyBank's Open Banking Read/Write API v3.1 answers: the ``Data``/``Links``/
``Meta`` body, the OB error body, ``x-fapi-interaction-id`` and dates."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from flask import Response, current_app, jsonify, request

__all__ = ["interaction_id", "ob_date", "ob_error", "ob_response", "parse_ob_date"]


def interaction_id() -> str:
    """The caller's ``x-fapi-interaction-id`` when it is a UUID, else a new one (FAPI)."""
    incoming = request.headers.get("x-fapi-interaction-id", "")
    try:
        return str(uuid.UUID(incoming))
    except ValueError:
        return str(uuid.uuid4())


def _self_url() -> str:
    dcr = current_app.extensions["anybank"]["dcr"]
    return str(dcr.urls.under_mtls_base(request.path))  # configured base, not the Host header


def ob_response(
    data: dict[str, Any],
    *,
    status: int = 200,
    self_url: str | None = None,
    meta: dict[str, Any] | None = None,
    risk: dict[str, Any] | None = None,
) -> Response:
    """``{"Data": ..., ["Risk": ...,] "Links": {"Self": ...}, "Meta": ...}``, not cached."""
    body: dict[str, Any] = {"Data": data}
    if risk is not None:
        body["Risk"] = risk
    body["Links"] = {"Self": self_url or _self_url()}
    body["Meta"] = {"TotalPages": 1} if meta is None else meta
    response = jsonify(body)
    response.status_code = status
    response.headers["x-fapi-interaction-id"] = interaction_id()
    response.headers["Cache-Control"] = "no-store"
    return response


def ob_error(status: int, code: str, message: str, *, path: str | None = None) -> Response:
    """The OB error body (``OBErrorResponse1``): one error, ``code`` from the OB list."""
    error: dict[str, Any] = {"ErrorCode": code, "Message": message}
    if path is not None:
        error["Path"] = path
    body = {"Code": str(status), "Id": str(uuid.uuid4()), "Message": message, "Errors": [error]}
    response = jsonify(body)
    response.status_code = status
    response.headers["x-fapi-interaction-id"] = interaction_id()
    response.headers["Cache-Control"] = "no-store"
    return response


def ob_date(epoch: float) -> str:
    """An OB ISODateTime: seconds, with the UTC offset (``2024-05-01T12:00:00+00:00``)."""
    return datetime.fromtimestamp(int(epoch), tz=timezone.utc).isoformat(timespec="seconds")


def parse_ob_date(value: Any) -> float | None:
    """The epoch of an ISO 8601 date-time with a time zone; None when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # a local time means nothing to a bank in another zone
        return None
    return parsed.timestamp()
