"""A red-team pass over the browser-facing surface: the bank's consent journey pages, its
operator console and sign-in, and the console's settings page.

Each test here is the regression test of a defect the pass found (a 500 on a malformed
request, a refusal that a browser turns into a misleading page, a secret shown, a decision
taken for a TPP the bank has suspended); the attacks that found nothing are in the pass's
report, not here. The last two are strict expected failures: their defects lie in files this
pass did not change (the fix is in its report), and they turn red once fixed, to drop the
mark. The bank is ``example_app.bank.create_app`` with the sandbox Directory's key sets on
loopback, as in tests/test_consent_journey.py, whose fixtures, TPP and browser helpers these
tests reuse.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import xml.etree.ElementTree as ElementTree

import pytest
import test_consent_journey as journey
from flask import Flask
from flask.testing import FlaskClient
from test_consent_journey import ISSUER, REDIRECT_URI, TPP, Browser, register

from example_app.bank_store import BankStore
from example_app.directory import DirectoryError, DirectoryState, create_directory_app
from example_app.operator import SANDBOX_PASSWORD, SANDBOX_USER
from flask_obdcr.console import console_blueprint
from flask_obdcr.console.settings import redact_url

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
#: what browsers keep of one cookie, name and value together (RFC 6265 section 6.1's minimum,
#: Chromium's and Firefox's maximum): a longer cookie is dropped without a word
BROWSER_COOKIE_LIMIT = 4096
#: a query string whose bytes are not UTF-8 (``é`` in Latin-1), as a WSGI server hands it on:
#: the environ's strings carry the request's bytes as Latin-1 (PEP 3333)
NOT_UTF8_QUERY = "q=caf\xe9&next=/console/"

# the consent journey's sandbox (a Directory, its key sets on loopback, the bank and its store):
# pytest makes a module-scoped fixture anew for each module that holds it, so these tests have
# a bank of their own
directory = journey.directory
jwks_server = journey.jwks_server
bank = journey.bank
store = journey.store


@pytest.fixture
def tpp(bank, directory, jwks_server) -> TPP:
    """A newly registered TPP for each test: a suspension stays with the test that made it."""
    software = directory.register_software(
        roles=["AISP"], client_name="Budget Buddy", redirect_uris=[REDIRECT_URI]
    )
    return register(bank, directory, software, "tls_client_auth")


def signed_in_operator(app: Flask) -> FlaskClient:
    """A browser signed in to the bank's operator console."""
    http = app.test_client()
    page = http.get("/console-login", base_url=ISSUER).get_data(as_text=True)
    found = CSRF.search(page)
    assert found is not None, page
    signed_in = http.post(
        "/console-login",
        base_url=ISSUER,
        data={"csrf_token": found[1], "user": SANDBOX_USER, "password": SANDBOX_PASSWORD},
    )
    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)
    return http


# -- a query string that is not UTF-8 --------------------------------------------------------
#
# Werkzeug decodes request.args strictly: raw bytes that are not UTF-8 in the environ's
# QUERY_STRING raise UnicodeDecodeError, a 500. Browsers percent-encode (%E9 is decoded
# leniently); of the servers here, Werkzeug's re-encodes such bytes and gunicorn and granian
# refuse the request line, but a WSGI server hands them on as PEP 3333 says (Latin-1 strings).


@pytest.mark.parametrize(
    ("path", "signed_in", "status"),
    [
        ("/authorize", False, 400),
        ("/console-login", False, 200),  # the sign-in page, the garbled next ignored
        ("/console/", False, 303),  # to the sign-in page, as any console page
        ("/console/settings", False, 303),
        ("/console/", True, 400),  # the search (q) cannot be read: a plain 400
    ],
    ids=["authorize", "operator-sign-in", "console-signed-out", "settings-signed-out", "search"],
)
def test_a_query_string_that_is_not_utf8_is_answered_not_a_500(
    bank, store, path, signed_in, status
):
    http = signed_in_operator(bank) if signed_in else bank.test_client()
    consents_before = bank_store_rows(store)
    response = http.get(path, base_url=ISSUER, environ_overrides={"QUERY_STRING": NOT_UTF8_QUERY})
    assert response.status_code == status, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    if status == 303:
        assert response.headers["Location"].startswith("/console-login?next=/console/")
    elif path == "/authorize":
        assert response.mimetype == "text/html"
        assert "Location" not in response.headers
        assert "not UTF-8" in text
        with http.session_transaction() as session:
            assert "anybank_authorization" not in session  # nothing pending
    elif path == "/console-login":
        assert response.mimetype == "text/html"
        assert 'name="next" value="/console/"' in text  # the console's first page
    else:
        assert response.mimetype == "text/plain"
        assert "not UTF-8" in text
    assert bank_store_rows(store) == consents_before


def bank_store_rows(store: BankStore) -> list[tuple[str, str]]:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT consent_id, status FROM consents ORDER BY consent_id").fetchall()


# -- a request too large for the customer's session cookie ------------------------------------


def test_a_request_too_large_to_keep_is_refused_with_its_reason(bank, tpp):
    """The verified request is kept in the customer's session cookie until they decide; a state
    (or nonce) long enough to push that cookie past what a browser keeps would be dropped by
    the browser, and the next page would say that no request is in progress. The bank says
    why instead, and sets no cookie a browser would drop."""
    consent_id = tpp.create_consent()
    claims = tpp.request_claims(consent_id, state=secrets.token_urlsafe(3000))
    browser = Browser(bank)
    response = browser.get(tpp.authorize_query(claims))
    for cookie in response.headers.getlist("Set-Cookie"):
        name_and_value = cookie.split(";", 1)[0]
        assert len(name_and_value.encode()) <= BROWSER_COOKIE_LIMIT, len(name_and_value)
    assert response.status_code == 400, response.headers
    assert "Location" not in response.headers
    assert "too long" in browser.page
    assert tpp.consent_status(consent_id) == "AwaitingAuthorisation"
    # and the same TPP's request of an ordinary size goes on to the sign-in page
    assert browser.get(tpp.authorize_query(tpp.request_claims(consent_id))).status_code == 303


# -- a decision for a TPP suspended meanwhile --------------------------------------------------


def test_approve_is_refused_once_the_operator_has_suspended_the_tpp(bank, tpp):
    """/authorize refuses a suspended TPP; a TPP suspended while its customer signs in and
    chooses must not get the consent Authorised, nor a code and id_token, afterwards."""
    consent_id = tpp.create_consent()
    browser = Browser(bank)
    browser.start(tpp.authorize_query(tpp.request_claims(consent_id)))
    assert browser.sign_in().status_code == 303

    operator = signed_in_operator(bank)
    confirm = operator.get(f"/console/clients/{tpp.client_id}/suspend", base_url=ISSUER)
    token = CSRF.search(confirm.get_data(as_text=True))
    assert token is not None
    suspended = operator.post(
        f"/console/clients/{tpp.client_id}/suspend",
        base_url=ISSUER,
        data={"csrf_token": token[1]},
    )
    assert suspended.status_code == 303

    decided = browser.decide("approve", ("22289",))
    assert decided.status_code == 400, decided.headers
    assert "Location" not in decided.headers
    assert "suspended" in browser.page
    assert bank.extensions["anybank"]["store"].consent(consent_id).status == (
        "AwaitingAuthorisation"
    )


# -- the console's settings page: a database password that URL parsing cannot find ------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://obdcr:hun/ter2@db.example:5432/obdcr",
        "postgresql://obdcr:hun?ter2@db.example:5432/obdcr",
        "postgresql://obdcr:hun#ter2@db.example:5432/obdcr",
        "postgresql+psycopg://obdcr:a/b?c#hunter2@db.example/obdcr",
    ],
    ids=["slash", "question-mark", "hash", "all-three"],
)
def test_settings_never_show_a_password_with_url_delimiters(ob_app_factory, url):
    """SQLAlchemy reads a password up to the ``@`` (``[^@]*``), ``/``, ``?`` and ``#``
    included; urlsplit ends the authority at the first of them, so the password was left in
    the path, the query or the (dropped) fragment, and shown."""
    assert "hun" not in redact_url(url) and "ter2" not in redact_url(url)
    assert redact_url(url).endswith("***@db.example:5432/obdcr") or redact_url(url).endswith(
        "***@db.example/obdcr"
    )
    app = ob_app_factory(SECRET_KEY="k", OBDCR_DATABASE_URL=url)
    app.register_blueprint(console_blueprint(lambda: True), url_prefix="/console")
    page = app.test_client().get("/console/settings")
    assert page.status_code == 200
    storage = page.get_data(as_text=True).split("Storage", 1)[1]
    assert "OBDCR_DATABASE_URL" in storage
    assert "hun" not in storage and "ter2" not in storage and "obdcr:" not in storage


# -- defects found in the bank's token view and the Directory's names -------------------------


def test_token_endpoint_answers_a_query_string_that_is_not_utf8(bank, tpp):
    response = tpp.call(
        "POST",
        "/token",
        data={"grant_type": "client_credentials", "client_id": tpp.client_id, "scope": "accounts"},
        environ_overrides={"QUERY_STRING": NOT_UTF8_QUERY},
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_request"


def test_a_software_name_with_a_control_character_is_refused_or_drawn_well_formed(tmp_path):
    state = DirectoryState.open(tmp_path / "directory")
    organisation = state.add_organisation("Sandbox TPP Ltd")
    try:
        software = state.add_software(
            organisation["org_id"],
            client_name="Budget\x01Buddy",
            roles=["AISP"],
            redirect_uris=["https://tpp.example.com/callback"],
        )
    except DirectoryError as refused:
        assert refused.status == 400
        assert state.software_of(organisation["org_id"]) == []
        return
    app = create_directory_app(state, base_url="https://127.0.0.1:18443")
    logo = app.test_client().get(f"/logos/{software['software_id']}.svg")
    assert logo.status_code == 200
    ElementTree.fromstring(logo.get_data())  # what the consent page's <img> must parse
