"""AnyBank's pages for its customers: the browser side of the consent journey.

``GET /authorize`` checks the TPP's request (:meth:`~example_app.authorize.Journey.verify_request`)
and keeps it in the customer's session; ``/sign-in`` authenticates a sandbox customer;
``/consent`` shows what the TPP asks for and the customer's accounts, and sends the customer
back to the TPP with the answer. None of them needs a client certificate (a browser has
none); every form is a POST with a CSRF token kept in the session; a refused request is a
page that says why, never a redirect to a URI the bank has not verified.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from .accounts import ACCOUNTS
from .authorize import AuthorizationRefused, Journey, PendingAuthorization
from .consents import permission_words
from .ob_api import ob_date
from .pages import csrf_context, csrf_ok, secure_page_headers

__all__ = ["CUSTOMERS", "Customer", "customer_blueprint"]

#: the session keys: the authorization in progress, the signed-in customer, the CSRF token
PENDING_KEY = "anybank_authorization"
CSRF_KEY = "anybank_csrf"
#: how long a customer has, from the TPP's request to their decision
PENDING_LIFETIME = 600
#: the most the session cookie's name and value may take once /authorize keeps the request:
#: browsers drop a cookie over 4096 bytes without a word, and signing in and the operator
#: console add a few hundred bytes to the same session later
SESSION_COOKIE_BUDGET = 3800


@dataclass(frozen=True)
class Customer:
    user: str
    password: str
    name: str
    accounts: tuple[str, ...]


#: the sandbox's customers: made-up people with made-up passwords, for demonstrations only
CUSTOMERS: dict[str, Customer] = {
    customer.user: customer
    for customer in (
        Customer("mits", "sandbox", "Ms A. N. Customer", ("22289", "31820", "42281")),
        Customer("sam", "sandbox", "Mr S. A. Mple", ("31820",)),
    )
}


def _check_password(user: str, password: str) -> Customer | None:
    customer = CUSTOMERS.get(user)
    expected = customer.password if customer is not None else "-" * 16
    # compared whatever the user name, so that a wrong user takes as long as a wrong password
    matches = hmac.compare_digest(expected.encode(), password.encode())
    return customer if customer is not None and matches else None


def _session_cookie_size(**changes: Any) -> int:
    """The bytes of the session cookie's name and value with ``changes`` made; 0 when the
    app keeps its sessions elsewhere than in a signed cookie."""
    interface = current_app.session_interface
    serializer = getattr(interface, "get_signing_serializer", lambda app: None)(current_app)
    if serializer is None:
        return 0
    value = serializer.dumps({**session, **changes})
    name = interface.get_cookie_name(current_app)
    return len(name.encode()) + 1 + len(str(value).encode())


def _page(template: str, *, status: int = 200, **values: Any) -> Response:
    return Response(render_template(template, **values), status=status, mimetype="text/html")


def _error(
    message: str, status: int = 400, *, title: str = "This request cannot go on"
) -> Response:
    return _page("bank/error.html", status=status, title=title, message=message)


def customer_blueprint(journey: Journey) -> Blueprint:
    bp = Blueprint("customer", __name__)

    @bp.after_request
    def page_headers(response: Response) -> Response:
        # pages about a customer's money: never cached, never framed, no referrer to the TPP.
        # No form-action: browsers apply it to the redirect after a POST too, and the consent
        # form's answer is a redirect to the TPP
        return secure_page_headers(
            response,
            "default-src 'none'; style-src 'self'; img-src 'self' https:;"
            " frame-ancestors 'none'; base-uri 'none'",
        )

    @bp.context_processor
    def common() -> dict[str, Any]:
        return csrf_context(CSRF_KEY)

    def pending() -> tuple[PendingAuthorization, dict[str, Any]] | Response:
        """The authorization in progress, or the page that says there is none."""
        record = session.get(PENDING_KEY)
        if not isinstance(record, dict):
            record = {}
        found = PendingAuthorization.from_session(record.get("request"))
        if found is None:
            return _error(
                "There is no request from a TPP in progress. Start again from the TPP's app.",
                title="Nothing to authorise",
            )
        if not isinstance(record.get("until"), int) or time.time() > record["until"]:
            session.pop(PENDING_KEY, None)
            return _error(
                "This request took too long to complete. Start again from the TPP's app.",
                title="Time is up",
            )
        return found, record

    def tpp(client_id: str) -> dict[str, Any]:
        """What the pages say about the TPP: the SSA's names and logo."""
        stored = journey.dcr.store.get(client_id)
        ssa = stored.ssa_claims if stored is not None else {}
        logo = ssa.get("software_logo_uri")
        return {
            "name": ssa.get("software_client_name") or client_id,
            "org_name": ssa.get("org_name") or "an unnamed organisation",
            "logo": logo if isinstance(logo, str) and logo.startswith("https://") else None,
        }

    @bp.get("/authorize")
    def authorize() -> Response:
        try:
            args = request.args
        except UnicodeDecodeError:  # Werkzeug decodes a query string's raw bytes strictly
            return _error(
                "The address of this request is not valid: its query string is not UTF-8."
                " Start again from the TPP's app."
            )
        try:
            verified = journey.verify_request(args)
        except AuthorizationRefused as refused:
            current_app.logger.info("authorization request refused: %r", refused.message)
            return _error(refused.message, refused.status)
        record = {"request": verified.to_session(), "until": int(time.time()) + PENDING_LIFETIME}
        if _session_cookie_size(**{PENDING_KEY: record}) > SESSION_COOKIE_BUDGET:
            # the browser would drop the cookie, and the next page say nothing is in progress
            return _error(
                "The TPP's request is too long for this bank to keep while you sign in (its"
                " state or nonce is too long). Ask the TPP to send a shorter one."
            )
        session[PENDING_KEY] = record
        return redirect(url_for(".sign_in"), 303)

    @bp.route("/sign-in", methods=["GET", "POST"])
    def sign_in() -> Response:
        found = pending()
        if isinstance(found, Response):
            return found
        authorization, record = found
        values: dict[str, Any] = {
            "tpp": tpp(authorization.client_id),
            "customers": sorted(CUSTOMERS),
        }
        if request.method == "GET":
            return _page("bank/sign_in.html", **values)
        if not csrf_ok(CSRF_KEY):
            return _error("The form has expired or was not sent by this page. Start again.")
        customer = _check_password(
            request.form.get("user", "").strip(), request.form.get("password", "")
        )
        if customer is None:
            return _page(
                "bank/sign_in.html",
                status=401,
                error="The user name or password is wrong.",
                user=request.form.get("user", "")[:64],
                **values,
            )
        record.update(customer=customer.user, auth_time=int(time.time()))
        session[PENDING_KEY] = record
        session[CSRF_KEY] = secrets.token_urlsafe(32)  # a new token once signed in
        return redirect(url_for(".consent"), 303)

    @bp.route("/consent", methods=["GET", "POST"])
    def consent() -> Response:
        found = pending()
        if isinstance(found, Response):
            return found
        authorization, record = found
        customer = CUSTOMERS.get(str(record.get("customer")))
        if customer is None:
            return redirect(url_for(".sign_in"), 303)
        stored = journey.store.consent(authorization.consent_id)
        if stored is None:
            return _error("The consent of this request is unknown to this bank.")
        accounts = [a for a in ACCOUNTS if a["AccountId"] in customer.accounts]
        values: dict[str, Any] = {
            "tpp": tpp(authorization.client_id),
            "customer": customer,
            "permissions": permission_words(list(stored.permissions)),
            "expires": ob_date(stored.expires_at).replace("T", " ").replace("+00:00", " UTC"),
            "accounts": accounts,
        }
        if request.method == "GET":
            return _page("bank/consent.html", **values)
        if not csrf_ok(CSRF_KEY):
            return _error("The form has expired or was not sent by this page. Start again.")
        decision = request.form.get("decision")
        if decision not in ("approve", "deny"):
            return _error("Choose Approve or Deny.")
        chosen = request.form.getlist("account")
        if decision == "approve":
            if not chosen:
                return _page(
                    "bank/consent.html", status=400, error="Choose at least one account.", **values
                )
            if not set(chosen) <= set(customer.accounts):
                return _error("That is not one of your accounts.")
        session.pop(PENDING_KEY, None)  # one decision per request
        try:
            if decision == "deny":
                return journey.deny(authorization)
            return journey.approve(
                authorization,
                customer=customer.user,
                auth_time=int(record.get("auth_time") or time.time()),
                accounts=[a for a in customer.accounts if a in chosen],
            )
        except AuthorizationRefused as refused:
            return _error(refused.message, refused.status)

    return bp
