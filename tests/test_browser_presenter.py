"""The presenter's whole path (README, "In a browser (a presenter's path)") in one go, as
``make serve`` runs it: the sandbox Directory, AnyBank and the TPP's page over HTTPS on free
loopback ports, one Chromium, and the TPP's command line run exactly as the portal prints it.

In the browser, the Directory's portal: an organisation, then a software statement (AISP, the
TPP's page as its redirect URI); the software's page shows its ids and the commands to run.
On the command line, ``init`` and ``keys`` as printed; the two CSRs pasted into the portal;
then ``download``, ``ssa``, ``request`` and ``register --brief`` as printed. In the browser,
AnyBank's console lists the new client and names its software; then the customer connects on
the TPP's page, signs in at AnyBank, sees the software's name on the consent page, chooses two
of three accounts, and the TPP's page shows exactly those two with their balances.

Screenshots (build/screenshots/): ``presenter-01-portal`` to ``presenter-12-tpp-accounts``.

A known gap is kept as a strict expected failure: after the portal's ``init`` (not
``onboard``), the TPP's page says its software is "not onboarded yet".
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import requests

from example_app.directory.portal import tpp_commands
from example_app.operator import SANDBOX_PASSWORD, SANDBOX_USER
from example_app.sandbox import Sandbox
from example_app.tpp import DEFAULT_REDIRECT_URI

ORGANISATION = "Presenter Payments Ltd"
SOFTWARE_NAME = "Presenter Budget App"
CUSTOMER = ("mits", "sandbox")
#: the customer's three accounts, and the two they share
ACCOUNTS = ("22289", "31820", "42281")
CHOSEN = ("22289", "42281")
#: what would make a printed command act on another folder or sandbox than the page's
TPP_ENVIRONMENT = ("TPP_WORKDIR", "TPP_DIRECTORY_URL", "TPP_BANK_URL", "TPP_CA")


@pytest.fixture
def sandbox(tmp_path):
    """Directory, bank and the TPP's page on free ports, as ``make serve`` runs them (its TPP
    folder ``<sandbox>/tpp``, the one the portal's commands name and the page reads)."""
    with Sandbox(tmp_path / "sandbox", mode="thread", log_files=False) as running:
        assert running.tpp_url is not None
        yield running


def printed(commands: list[str], *words: str) -> list[str]:
    """The printed command line whose subcommand is ``words`` (after the program and its
    ``--workdir``), as argv."""
    for line in commands:
        argv = shlex.split(line)
        rest = argv[1:]
        if rest[:1] == ["--workdir"]:
            rest = rest[2:]
        if rest[: len(words)] == list(words):
            return argv
    raise AssertionError(f"no `{' '.join(words)}` among the printed commands: {commands}")


def run(argv: list[str], folder: str) -> str:
    """A printed command, run in the folder the page says to type it in; its output."""
    env = {k: v for k, v in os.environ.items() if k not in TPP_ENVIRONMENT}
    result = subprocess.run(  # noqa: S603 - the checkout's own command line, as printed
        argv,
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result.stdout


def test_the_presenters_path(browser, sandbox):
    directory = sandbox.directory_url
    callback = f"{sandbox.tpp_url}/callback"

    # 1. the Directory's portal: the organisation
    browser.get(f"{directory}/")
    browser.wait_for_url("/portal/")
    browser.screenshot("presenter-01-portal")
    browser.fill("#org_name", ORGANISATION)
    browser.click("form button[type=submit]")
    browser.wait_for_url("/software/new")
    assert f"Organisation {ORGANISATION} created" in browser.text(".flash")

    # the software statement: AISP is ticked; the redirect URI offered is the TPP's own page
    # this sandbox runs (a free port here, not make serve's default): kept as offered
    assert browser.find("#role-AISP").is_selected()
    offered = browser.find("#redirect_uris").get_attribute("value").split()
    assert offered == [callback] != [DEFAULT_REDIRECT_URI]
    browser.fill("#client_name", SOFTWARE_NAME)
    browser.screenshot("presenter-02-new-software")
    browser.click("form button[type=submit]")
    browser.wait_for_url("/portal/software/")

    # its page: the ids and the commands to run next, and where to type them
    details = browser.text("#details")
    software_id = browser.url.rsplit("/", 1)[1].split("#")[0]
    (organisation,) = sandbox.directory_state.organisations()
    org_id = organisation["org_id"]
    assert software_id in details and org_id in details and callback in details
    folder = browser.text("#commands-folder")
    commands = [code.text for code in browser.find_all("#commands code")]
    init = printed(commands, "init")
    assert init[init.index("--org-id") + 1] == org_id
    assert init[init.index("--software-id") + 1] == software_id
    browser.screenshot("presenter-03-software")

    # 2. the TPP's command line, as printed: init, keys
    run(init, folder)
    output = run(printed(commands, "keys"), folder)
    assert f"CN={software_id}" in output and f"OU={org_id}" in output
    tpp_folder = sandbox.tpp_folder
    assert json.loads((tpp_folder / "tpp.json").read_text())["software_id"] == software_id

    # the two CSRs pasted into the software's page (the files its `cat` commands show)
    shown = [shlex.split(line)[1] for line in commands if line.startswith("cat ")]
    csr_files = {Path(path).name: Path(folder, path) for path in shown}
    assert set(csr_files) == {"transport.csr", "signing.csr"}
    for cert_type in ("transport", "signing"):
        browser.find(f"#csr-{cert_type}").send_keys(csr_files[f"{cert_type}.csr"].read_text())
        browser.click(f"#upload-{cert_type} button[type=submit]")
        issued = f"{cert_type.capitalize()} certificate issued"
        assert issued in browser.wait_for_text(".flash", issued)
    rows = browser.find_all("#certificate-list tbody tr")
    assert len(rows) == 2
    assert all("active" in row.text and "OCSP: good" in row.text for row in rows)
    browser.screenshot("presenter-04-certificates")

    # the software statement, decoded in the portal
    browser.click("#generate-ssa")
    browser.wait_for("#ssa-claims")
    claims = json.loads(browser.text("#ssa-claims"))
    assert claims["software_id"] == software_id
    assert claims["software_client_name"] == SOFTWARE_NAME
    assert claims["software_redirect_uris"] == [callback]
    browser.screenshot("presenter-05-ssa")

    # download, ssa, request, register --brief: as printed
    output = run(printed(commands, "download"), folder)
    assert "transport.pem" in output and "signing.pem" in output
    run(printed(commands, "ssa"), folder)
    run(printed(commands, "request"), folder)
    output = run(printed(commands, "register", "--brief"), folder)
    registration = json.loads((tpp_folder / "registration.json").read_text())
    client_id = registration["client_id"]
    assert client_id in output
    assert registration["redirect_uris"] == [callback]

    # 3. AnyBank's operator console: the new client, its page naming the software
    browser.get(f"{sandbox.bank_url}/console/")
    browser.wait_for("form input[name=password]")
    browser.screenshot("presenter-06-console-sign-in")
    browser.fill("#user", SANDBOX_USER)
    browser.fill("#password", SANDBOX_PASSWORD)
    browser.click("button[type=submit]")
    link = browser.wait_for(f'a[href="/console/clients/{client_id}"]')
    assert SOFTWARE_NAME in browser.text("main")
    browser.screenshot("presenter-07-console-clients")
    link.click()
    browser.wait_for_url(f"/console/clients/{client_id}")
    page = browser.text("main")
    assert client_id in page and SOFTWARE_NAME in page and software_id in page
    browser.screenshot("presenter-08-console-client")

    # 4. the customer's consent: the TPP's page, Connect, AnyBank's sign-in and consent pages
    browser.get(f"{sandbox.tpp_url}/")
    browser.wait_for("#connect")
    assert SOFTWARE_NAME in browser.text("main")
    browser.screenshot("presenter-09-tpp-home")
    browser.click("#connect")
    browser.wait_for("#sign-in")
    assert browser.url.startswith(sandbox.bank_url)
    assert browser.text("#tpp-name") == SOFTWARE_NAME
    browser.screenshot("presenter-10-bank-sign-in")
    browser.fill("#user", CUSTOMER[0])
    browser.fill("#password", CUSTOMER[1])
    browser.click("#sign-in")
    browser.wait_for("#approve")
    assert browser.text("#tpp-name") == SOFTWARE_NAME
    assert browser.text("#tpp-org") == ORGANISATION
    boxes = browser.find_all("input[name=account]")
    assert [box.get_attribute("value") for box in boxes] == list(ACCOUNTS)
    for account_id in CHOSEN:
        browser.click(f"input[name=account][value='{account_id}']")
    browser.screenshot("presenter-11-bank-consent")
    browser.click("#approve")

    # back at the TPP's page: exactly the two accounts chosen, each with a balance
    browser.wait_for_url(f"{sandbox.tpp_url}/accounts")
    browser.wait_for("section.account")
    shown_accounts = [
        section.get_attribute("data-account-id") for section in browser.find_all("section.account")
    ]
    assert shown_accounts == list(CHOSEN)
    balances = browser.find_all("tr.balance .amount")
    assert len(balances) == len(CHOSEN)
    assert all(amount.text.strip() for amount in balances)
    assert browser.text("#consent-status") == "Authorised"
    store = sandbox.bank_app.extensions["anybank"]["store"]
    assert str(store.consent(browser.text("#consent-id")).status) == "Authorised"
    browser.screenshot("presenter-12-tpp-accounts")


def test_the_tpp_page_names_the_software_the_portals_init_recorded(sandbox):
    state = sandbox.directory_state
    org_id = state.add_organisation(ORGANISATION)["org_id"]
    software = state.add_software(
        org_id,
        client_name=SOFTWARE_NAME,
        roles=["AISP"],
        redirect_uris=[f"{sandbox.tpp_url}/callback"],
    )
    commands = tpp_commands(state, software)  # what the software's page prints
    run(shlex.split(commands["init"]), commands["cwd"])
    config = json.loads((sandbox.tpp_folder / "tpp.json").read_text())
    assert config["software_id"] == software["software_id"]
    page = requests.get(f"{sandbox.tpp_url}/", verify=str(sandbox.ca_bundle), timeout=10)
    assert page.status_code == 200
    # init recorded what onboard records: the page names the software
    assert config["client_name"] == SOFTWARE_NAME and config["roles"] == ["AISP"]
    assert SOFTWARE_NAME in page.text and "not onboarded yet" not in page.text
