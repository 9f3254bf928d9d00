"""AnyBank's accounts API (OB Read/Write API v3.1, AISP): the sandbox customers' accounts
and balances, shown to a TPP only through a customer's consent.

``GET /open-banking/v3.1/aisp/accounts``, ``/accounts/<AccountId>`` and
``/accounts/<AccountId>/balances`` need, over mutual TLS, a certificate-bound access token of
the authorization-code grant whose consent is Authorised and not expired; they show the
accounts the customer chose, nothing else:

* a client_credentials token: 403 ``UK.OBIE.Resource.ConsentMismatch`` (account data needs the
  customer's consent);
* the consent revoked, rejected or expired: 403 ``UK.OBIE.Resource.InvalidConsentStatus``;
* an account the customer did not choose: 404, and left out of the list;
* ``ReadAccountsBasic`` without ``ReadAccountsDetail``: the accounts without their scheme and
  number (``Account``); balances need ``ReadBalances``.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, Response, g, jsonify

from flask_obdcr import InvalidToken

from .bank_store import AUTHORISED, BankStore, Consent
from .ob_api import ob_error, ob_response

__all__ = ["ACCOUNTS", "ACCOUNTS_PATH", "BALANCES", "accounts_blueprint"]

ACCOUNTS_PATH = "/open-banking/v3.1/aisp/accounts"
#: when the sandbox's balances were last "updated"
BALANCE_DATE = "2025-01-06T09:00:00+00:00"

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

#: each account's balance (``OBReadBalance1``), one ``InterimAvailable`` per account
BALANCES: dict[str, dict[str, Any]] = {
    "22289": {
        "AccountId": "22289",
        "Amount": {"Amount": "1230.00", "Currency": "GBP"},
        "CreditDebitIndicator": "Credit",
        "Type": "InterimAvailable",
        "DateTime": BALANCE_DATE,
    },
    "31820": {
        "AccountId": "31820",
        "Amount": {"Amount": "5400.50", "Currency": "GBP"},
        "CreditDebitIndicator": "Credit",
        "Type": "InterimAvailable",
        "DateTime": BALANCE_DATE,
    },
    "42281": {
        "AccountId": "42281",
        "Amount": {"Amount": "310.27", "Currency": "EUR"},
        "CreditDebitIndicator": "Debit",
        "Type": "InterimAvailable",
        "DateTime": BALANCE_DATE,
    },
}
ACCOUNT_IDS = frozenset(account["AccountId"] for account in ACCOUNTS)


def _consent_mismatch(message: str) -> Response:
    return ob_error(403, "UK.OBIE.Resource.ConsentMismatch", message)


def accounts_blueprint(dcr: Any, store: BankStore) -> Blueprint:
    bp = Blueprint("accounts", __name__)

    def consent_of_token() -> Consent | Response:
        """The Authorised consent the request's token serves, or the refusal."""
        link = store.token_link(g.obdcr_token.token_hash)
        if link is None:
            return _consent_mismatch(
                "This access token was issued with client_credentials: account data needs the"
                " customer's consent (an access token of the authorization-code grant)."
            )
        if link.revoked:  # its authorization code was replayed (RFC 6749 section 4.1.2)
            error = InvalidToken("The access token has been revoked.")
            response = jsonify(error.to_dict())
            response.status_code = error.status
            response.headers.update(error.headers)
            response.headers["Cache-Control"] = "no-store"
            return response
        consent = store.consent(link.consent_id)
        if consent is None or consent.status != AUTHORISED:
            status = "unknown" if consent is None else consent.status
            return ob_error(
                403,
                "UK.OBIE.Resource.InvalidConsentStatus",
                f"The consent behind this access token is {status}, not Authorised.",
            )
        if consent.is_expired(store.clock()):
            return ob_error(
                403,
                "UK.OBIE.Resource.InvalidConsentStatus",
                "The consent behind this access token has expired.",
            )
        return consent

    def shown(account: dict[str, Any], consent: Consent) -> dict[str, Any]:
        account = copy.deepcopy(account)
        if "ReadAccountsDetail" not in consent.permissions:
            account.pop("Account", None)  # Basic: no scheme, number or name
        return account

    def readable_accounts(consent: Consent) -> list[dict[str, Any]] | Response:
        if not {"ReadAccountsBasic", "ReadAccountsDetail"} & set(consent.permissions):
            return _consent_mismatch("The consent does not include ReadAccountsBasic.")
        return [shown(a, consent) for a in ACCOUNTS if a["AccountId"] in consent.accounts]

    @bp.get(ACCOUNTS_PATH)
    @dcr.require_token("accounts")
    def accounts() -> Response:
        consent = consent_of_token()
        if isinstance(consent, Response):
            return consent
        found = readable_accounts(consent)
        if isinstance(found, Response):
            return found
        return ob_response({"Account": found})

    @bp.get(f"{ACCOUNTS_PATH}/<account_id>")
    @dcr.require_token("accounts")
    def account(account_id: str) -> Response:
        consent = consent_of_token()
        if isinstance(consent, Response):
            return consent
        found = readable_accounts(consent)
        if isinstance(found, Response):
            return found
        one = [a for a in found if a["AccountId"] == account_id]
        if not one:
            return ob_error(404, "UK.OBIE.Resource.NotFound", f"No account {account_id[:40]}.")
        return ob_response({"Account": one})

    @bp.get(f"{ACCOUNTS_PATH}/<account_id>/balances")
    @dcr.require_token("accounts")
    def balances(account_id: str) -> Response:
        consent = consent_of_token()
        if isinstance(consent, Response):
            return consent
        if account_id not in consent.accounts:
            return ob_error(404, "UK.OBIE.Resource.NotFound", f"No account {account_id[:40]}.")
        if "ReadBalances" not in consent.permissions:
            return _consent_mismatch("The consent does not include ReadBalances.")
        return ob_response({"Balance": [copy.deepcopy(BALANCES[account_id])]})

    return bp
