"""The AISP account-access-consents API (OB Read/Write API v3.1) of AnyBank.

A TPP asks for a consent with a client_credentials token (scope ``accounts``) over mutual TLS,
sends the customer to ``/authorize`` with its ConsentId in the request object, and reads or
revokes it later::

    POST   /open-banking/v3.1/aisp/account-access-consents          -> 201 AwaitingAuthorisation
    GET    /open-banking/v3.1/aisp/account-access-consents/<id>     -> 200 (its own only)
    DELETE /open-banking/v3.1/aisp/account-access-consents/<id>     -> 204, Revoked

Which accounts the customer chose is the bank's to know: never in these answers. The consents
live in :class:`~example_app.bank_store.BankStore`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from .bank_store import REVOKED, BankStore, Consent
from .ob_api import ob_date, ob_error, ob_response, parse_ob_date

__all__ = [
    "CONSENTS_PATH",
    "PERMISSIONS",
    "consents_blueprint",
    "permission_words",
]

CONSENTS_PATH = "/open-banking/v3.1/aisp/account-access-consents"
CONSENT_ID_PREFIX = "urn-anybank-intent-"
#: the largest consent request read (a few permissions and dates fit in far less)
MAX_BODY_BYTES = 16 * 1024

#: OB Read/Write API v3.1 account-access permissions, and what the consent page says of each
PERMISSIONS: Mapping[str, str] = {
    "ReadAccountsBasic": "See your accounts' names, types and currencies",
    "ReadAccountsDetail": "See your account numbers and sort codes",
    "ReadBalances": "See your account balances",
    "ReadBeneficiariesBasic": "See the people and companies you pay",
    "ReadBeneficiariesDetail": "See the account details of the people and companies you pay",
    "ReadDirectDebits": "See your Direct Debits",
    "ReadOffers": "See offers the bank has made to you",
    "ReadPAN": "See your card numbers",
    "ReadParty": "See the account holders' names and addresses",
    "ReadPartyPSU": "See your own name and address",
    "ReadProducts": "See which products your accounts are",
    "ReadScheduledPaymentsBasic": "See your scheduled payments",
    "ReadScheduledPaymentsDetail": "See your scheduled payments with the payees' details",
    "ReadStandingOrdersBasic": "See your standing orders",
    "ReadStandingOrdersDetail": "See your standing orders with the payees' details",
    "ReadStatementsBasic": "See your statements",
    "ReadStatementsDetail": "See your statements in full",
    "ReadTransactionsBasic": "See your transactions",
    "ReadTransactionsCredits": "See money coming into your accounts",
    "ReadTransactionsDebits": "See money going out of your accounts",
    "ReadTransactionsDetail": "See your transactions in full",
}


def permission_words(permissions: tuple[str, ...] | list[str]) -> list[str]:
    """The consent page's sentence for each permission, in the order asked."""
    return [PERMISSIONS.get(name, name) for name in permissions]


def consent_data(consent: Consent) -> dict[str, Any]:
    """``Data`` of a consent answer: status and what was asked, never the chosen accounts."""
    data: dict[str, Any] = {
        "ConsentId": consent.consent_id,
        "Status": consent.status,
        "CreationDateTime": ob_date(consent.created_at),
        "StatusUpdateDateTime": ob_date(consent.status_updated_at),
        "Permissions": list(consent.permissions),
        "ExpirationDateTime": ob_date(consent.expires_at),
    }
    if consent.transaction_from is not None:
        data["TransactionFromDateTime"] = consent.transaction_from
    if consent.transaction_to is not None:
        data["TransactionToDateTime"] = consent.transaction_to
    return data


class BadConsentRequest(Exception):
    def __init__(self, code: str, message: str, path: str) -> None:
        super().__init__(message)
        self.code, self.message, self.path = code, message, path


def _invalid(message: str, path: str) -> BadConsentRequest:
    return BadConsentRequest("UK.OBIE.Field.Invalid", message, path)


def _parse_request(body: Any, now: float) -> dict[str, Any]:
    """The consent asked for, from an ``OBReadConsent1`` body; :class:`BadConsentRequest`."""
    if not isinstance(body, dict):
        raise _invalid("The body must be a JSON object with Data and Risk.", "$")
    data = body.get("Data")
    if not isinstance(data, dict):
        raise BadConsentRequest("UK.OBIE.Field.Missing", "Data is missing.", "Data")
    if not isinstance(body.get("Risk"), dict):
        raise BadConsentRequest(
            "UK.OBIE.Field.Missing", "Risk is missing (send {} when there is none).", "Risk"
        )
    permissions = data.get("Permissions")
    if not isinstance(permissions, list) or not permissions:
        raise BadConsentRequest(
            "UK.OBIE.Field.Missing", "Data.Permissions must list at least one permission.",
            "Data.Permissions",
        )  # fmt: skip
    unknown = [p for p in permissions if not isinstance(p, str) or p not in PERMISSIONS]
    if unknown:
        shown = ", ".join(repr(p)[:60] for p in unknown[:5])
        raise _invalid(f"Unknown permission(s): {shown}.", "Data.Permissions")
    if len(set(permissions)) != len(permissions):
        raise _invalid("A permission is listed twice.", "Data.Permissions")
    if "ExpirationDateTime" not in data:
        raise BadConsentRequest(
            "UK.OBIE.Field.Missing", "Data.ExpirationDateTime is missing.",
            "Data.ExpirationDateTime",
        )  # fmt: skip
    expires = parse_ob_date(data["ExpirationDateTime"])
    if expires is None:
        raise BadConsentRequest(
            "UK.OBIE.Field.InvalidDate",
            "Data.ExpirationDateTime must be an ISO 8601 date-time with a time zone.",
            "Data.ExpirationDateTime",
        )
    if expires <= now:
        raise BadConsentRequest(
            "UK.OBIE.Field.InvalidDate", "Data.ExpirationDateTime is in the past.",
            "Data.ExpirationDateTime",
        )  # fmt: skip
    window: dict[str, str] = {}
    epochs: dict[str, float] = {}
    for name in ("TransactionFromDateTime", "TransactionToDateTime"):
        if name in data:
            epoch = parse_ob_date(data[name])
            if epoch is None:
                raise BadConsentRequest(
                    "UK.OBIE.Field.InvalidDate",
                    f"Data.{name} must be an ISO 8601 date-time with a time zone.",
                    f"Data.{name}",
                )
            window[name], epochs[name] = data[name], epoch
    if len(epochs) == 2 and epochs["TransactionFromDateTime"] > epochs["TransactionToDateTime"]:
        raise BadConsentRequest(
            "UK.OBIE.Field.InvalidDate",
            "Data.TransactionFromDateTime is after Data.TransactionToDateTime.",
            "Data.TransactionFromDateTime",
        )
    return {
        "permissions": permissions,
        "expires_at": int(expires),
        "transaction_from": window.get("TransactionFromDateTime"),
        "transaction_to": window.get("TransactionToDateTime"),
    }


def consents_blueprint(dcr: Any, store: BankStore) -> Blueprint:
    """The consents API, every call behind a certificate-bound client_credentials token with
    scope ``accounts`` (``dcr.require_token``)."""
    bp = Blueprint("consents", __name__)

    def consent_url(consent_id: str) -> str:
        return str(dcr.urls.under_mtls_base(f"{CONSENTS_PATH}/{consent_id}"))

    def client_credentials_only() -> Response | None:
        # an authorization-code token speaks for one customer's consent, not for the TPP
        if store.token_link(g.obdcr_token.token_hash) is not None:
            return ob_error(
                403,
                "UK.OBIE.Resource.ConsentMismatch",
                "Consents are managed with a client_credentials token, not a customer's token.",
            )
        return None

    def managed_consent(consent_id: str) -> Consent | Response:
        """The consent a client_credentials token of its own client names, or the refusal."""
        refused = client_credentials_only()
        if refused is not None:
            return refused
        consent = store.consent(consent_id)
        # another client's consent is answered as an unknown one: nothing leaks about it
        if consent is None or consent.client_id != g.obdcr_token.client_id:
            return ob_error(
                404, "UK.OBIE.Resource.NotFound", f"No consent {consent_id[:80]} for this client."
            )
        return consent

    @bp.post(CONSENTS_PATH)
    @dcr.require_token("accounts")
    def create() -> Response:
        refused = client_credentials_only()
        if refused is not None:
            return refused
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return ob_error(413, "UK.OBIE.Field.Invalid", "The body is too large.", path="$")
        body = request.get_json(silent=True)
        try:
            asked = _parse_request(body, store.clock())
        except BadConsentRequest as bad:
            return ob_error(400, bad.code, bad.message, path=bad.path)
        consent_id = f"{CONSENT_ID_PREFIX}{uuid.uuid4()}"
        consent = store.add_consent(consent_id, client_id=g.obdcr_token.client_id, **asked)
        current_app.logger.info(
            "consent %s created for client %s", consent_id, g.obdcr_token.client_id
        )
        return ob_response(
            consent_data(consent), status=201, self_url=consent_url(consent_id), meta={}, risk={}
        )

    @bp.get(f"{CONSENTS_PATH}/<consent_id>")
    @dcr.require_token("accounts")
    def read(consent_id: str) -> Response:
        consent = managed_consent(consent_id)
        if isinstance(consent, Response):
            return consent
        return ob_response(
            consent_data(consent), self_url=consent_url(consent_id), meta={}, risk={}
        )

    @bp.delete(f"{CONSENTS_PATH}/<consent_id>")
    @dcr.require_token("accounts")
    def delete(consent_id: str) -> Response:
        consent = managed_consent(consent_id)
        if isinstance(consent, Response):
            return consent
        if consent.status != REVOKED:
            store.revoke_consent(consent_id)
            current_app.logger.info("consent %s revoked by its client", consent_id)
        return Response(status=204, headers={"Cache-Control": "no-store"})

    return bp
