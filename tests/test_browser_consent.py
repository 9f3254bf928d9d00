"""The customer's consent journey in a real browser: Chromium over HTTPS against a running
sandbox (the Directory, AnyBank and the TPP's web page, each on a free loopback port), the TPP
onboarded and registered with the workshop's command line, its redirect URI the page's
``/callback``.

In the browser: the TPP's home, Connect, the bank's sign-in, the consent page (the software's
name from its SSA; two of the customer's three accounts chosen), Approve, and the TPP's page
showing exactly those accounts with their balances; Deny instead shows the TPP's denied page
and the consent is Rejected at the bank; a tampered request object stops at the bank's page,
which says why.

Screenshots (build/screenshots/): ``consent-01-tpp-home``, ``consent-02-bank-sign-in``,
``consent-03-bank-consent``, ``consent-04-tpp-accounts``, ``consent-05-denied``,
``consent-06-tampered-request``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from example_app._util import read_json
from example_app.sandbox import Sandbox
from example_app.tpp import cli as tpp_cli

SOFTWARE_NAME = "Budget Buddy"
CUSTOMER = ("mits", "sandbox")
#: the customer's three accounts, and the two they share
ACCOUNTS = ("22289", "31820", "42281")
CHOSEN = ("22289", "42281")
STEPS = ("keys", "upload-csr", "download", "ssa", "discover", "request", "register")


def tpp(workdir: Path, *args: str) -> str:
    result = CliRunner().invoke(tpp_cli, ["--workdir", str(workdir), *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Directory, bank and the TPP's page in threads of this process, on free ports."""
    folder = tmp_path_factory.mktemp("consent") / "sandbox"
    with Sandbox(folder, mode="thread", log_files=False) as running:
        assert running.tpp_url is not None
        yield running


@pytest.fixture(scope="module")
def registered(sandbox) -> dict:
    """The TPP of the sandbox's page (its folder, ``<sandbox>/tpp``) onboarded with the page's
    redirect URI and registered, as a workshop attendee does it; the registration."""
    workdir = sandbox.tpp_folder
    tpp(
        workdir,
        "onboard",
        "--client-name",
        SOFTWARE_NAME,
        "--redirect-uri",
        f"{sandbox.tpp_url}/callback",
        "--directory",
        str(sandbox.directory_url),
        "--bank",
        str(sandbox.bank_url),
        "--ca",
        str(sandbox.ca_bundle),
    )
    for step in STEPS:
        tpp(workdir, step)
    return json.loads((workdir / "registration.json").read_text())


def consent_status(sandbox, consent_id: str) -> str:
    store = sandbox.bank_app.extensions["anybank"]["store"]
    return str(store.consent(consent_id).status)


def connect(browser, sandbox, *, tamper: str = "", home_screenshot: str | None = None) -> None:
    """The TPP's home page, then Connect (optionally with the sandbox's broken request)."""
    browser.get(f"{sandbox.tpp_url}/")
    browser.wait_for("#connect")
    if home_screenshot:
        browser.screenshot(home_screenshot)
    if tamper:
        from selenium.webdriver.support.ui import Select

        browser.click("details summary")
        Select(browser.find("#tamper")).select_by_value(tamper)
    browser.click("#connect")


def sign_in(browser, *, screenshot: str | None = None) -> None:
    browser.wait_for("#sign-in")
    assert browser.text("#tpp-name") == SOFTWARE_NAME
    if screenshot:
        browser.screenshot(screenshot)
    browser.fill("#user", CUSTOMER[0])
    browser.fill("#password", CUSTOMER[1])
    browser.click("#sign-in")
    browser.wait_for("#approve")


def test_connect_approve_two_of_three_accounts(browser, sandbox, registered):
    connect(browser, sandbox, home_screenshot="consent-01-tpp-home")
    assert registered["redirect_uris"] == [f"{sandbox.tpp_url}/callback"]
    sign_in(browser, screenshot="consent-02-bank-sign-in")

    # the bank's consent page: the software's name from its SSA, what it asks, the accounts
    assert browser.url.startswith(f"{sandbox.bank_url}/consent")
    assert browser.text("#tpp-name") == SOFTWARE_NAME
    assert browser.text("#tpp-org") == "Sandbox TPP Ltd"
    assert "balances" in browser.text("#permissions")
    boxes = browser.find_all("input[name=account]")
    assert [box.get_attribute("value") for box in boxes] == list(ACCOUNTS)
    for account_id in CHOSEN:
        browser.click(f"input[name=account][value='{account_id}']")
    browser.screenshot("consent-03-bank-consent")
    browser.click("#approve")

    # back at the TPP: its callback page posts the fragment, then shows the accounts
    browser.wait_for_url(f"{sandbox.tpp_url}/accounts")
    browser.wait_for("section.account")
    shown = [s.get_attribute("data-account-id") for s in browser.find_all("section.account")]
    assert shown == list(CHOSEN)
    balances = browser.find_all("tr.balance .amount")
    assert len(balances) == len(CHOSEN)
    assert all(amount.text.strip() for amount in balances)
    consent_id = browser.text("#consent-id")
    assert browser.text("#consent-status") == "Authorised"
    assert consent_status(sandbox, consent_id) == "Authorised"
    record = json.loads((sandbox.tpp_folder / "consent.json").read_text())
    page = browser.text("body")
    for secret in (record["access_token"], record["refresh_token"]):
        assert secret not in page
    assert "#" not in browser.url  # the code and id_token left the address bar
    browser.screenshot("consent-04-tpp-accounts")


def test_deny_shows_the_denied_page_and_the_consent_is_rejected(browser, sandbox, registered):
    connect(browser, sandbox)
    sign_in(browser)
    pending = json.loads((sandbox.tpp_folder / "authorizations.json").read_text())
    (consent_id,) = {a["consent_id"] for a in pending.values() if a["origin"] == "web"}
    browser.click("#deny")
    browser.wait_for("#denied")
    assert browser.url.startswith(f"{sandbox.tpp_url}/callback")
    assert "access_denied" in browser.text(".problem")
    assert browser.text("#consent-status") == "Rejected"
    assert consent_status(sandbox, consent_id) == "Rejected"
    browser.screenshot("consent-05-denied")


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (
            "other-key",
            "The request object's signature does not verify with the keys the Directory"
            " publishes for the TPP's software.",
        ),
        (
            "unregistered-redirect",
            "The redirect URI of the request object is not one the TPP registered.",
        ),
    ],
)
def test_a_tampered_request_stops_at_the_banks_page_saying_why(
    browser, sandbox, registered, tamper, why
):
    before = set(read_json(sandbox.tpp_folder / "authorizations.json", {}))
    connect(browser, sandbox, tamper=tamper)
    browser.wait_for("#error-message")
    assert browser.url.startswith(f"{sandbox.bank_url}/authorize?")
    assert browser.text("#error-title") == "This request cannot go on"
    assert why in browser.text("#error-message")
    assert browser.find_all("#sign-in") == []  # no sign-in, and no redirect to the TPP
    # the consent it named is still waiting: nothing was authorised
    pending = read_json(sandbox.tpp_folder / "authorizations.json", {})
    (new,) = set(pending) - before
    assert consent_status(sandbox, pending[new]["consent_id"]) == "AwaitingAuthorisation"
    if tamper == "other-key":
        browser.screenshot("consent-06-tampered-request")
