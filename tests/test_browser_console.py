"""The operator console in a real browser: Chromium over HTTPS against the example bank with
``install_console`` (example_app/operator.py), a TPP registered with the workshop's command
line, one of its requests refused.

Screenshots (build/screenshots/): ``console-01-sign-in``, ``console-02-clients``,
``console-03-client``, ``console-04-refused``, ``console-05-settings``,
``console-06-suspend``, ``console-07-suspended``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import example_app.bank as bank_module
from example_app.operator import BROWSER_ENDPOINTS, SANDBOX_PASSWORD, SANDBOX_USER, install_console
from example_app.sandbox import Sandbox
from example_app.tpp import cli as tpp_cli
from flask_obdcr.registration import SUSPENDED

STEPS = ("keys", "upload-csr", "download", "ssa", "discover", "request")


def tpp(workdir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(tpp_cli, ["--workdir", str(workdir), *args])
    return result.exit_code, result.output


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """The sandbox Directory and AnyBank in threads, the bank with its console installed (as
    create_app will do) and its browser pages let through without a TPP certificate."""
    original = bank_module.create_app

    def create_app_with_console(*args, **kwargs):
        app = original(*args, **kwargs)
        app.secret_key = "browser-console-test"  # create_app will set one
        install_console(app, app.extensions["anybank"]["dcr"])
        return app

    monkeypatch.setattr(bank_module, "create_app", create_app_with_console)
    monkeypatch.setattr(
        bank_module, "PUBLIC_ENDPOINTS", bank_module.PUBLIC_ENDPOINTS | BROWSER_ENDPOINTS
    )
    with Sandbox(tmp_path / "sandbox", mode="thread", log_files=False) as running:
        yield running


@pytest.fixture
def registered(sandbox, tmp_path):
    """A TPP registered over mTLS, then the same request sent again (refused: its jti is
    spent); the registered client_id."""
    workdir = tmp_path / "tpp"
    status, output = tpp(
        workdir,
        "onboard",
        "--client-name",
        "Budget Buddy",
        "--role",
        "AISP",
        "--redirect-uri",
        "https://tpp.example.com/cb",
        "--directory",
        str(sandbox.directory_url),
        "--bank",
        str(sandbox.bank_url),
        "--ca",
        str(sandbox.ca_bundle),
    )
    assert status == 0, output
    for step in STEPS:
        status, output = tpp(workdir, step)
        assert status == 0, (step, output)
    status, output = tpp(workdir, "register")
    assert status == 0, output
    status, output = tpp(workdir, "register")  # the same request again: a replayed jti
    assert status != 0 and "replayed" in output, output
    (client,) = sandbox.bank_app.extensions["anybank"]["dcr"].store.list()
    return client.client_id


def test_an_operator_signs_in_and_walks_the_console(browser, sandbox, registered):
    base = sandbox.bank_url
    client_id = registered
    store = sandbox.bank_app.extensions["anybank"]["dcr"].store

    # not signed in: the console sends the browser to sign in
    browser.get(f"{base}/console/")
    browser.wait_for("form input[name=password]")
    assert "/console-login" in browser.url
    assert "Sandbox only" in browser.text("main")
    browser.screenshot("console-01-sign-in")
    browser.fill("#user", SANDBOX_USER)
    browser.fill("#password", SANDBOX_PASSWORD)
    browser.click("button[type=submit]")

    # the client list, with the registered client
    link = browser.wait_for(f'a[href="/console/clients/{client_id}"]')
    assert browser.text("h1") == "Registered clients"
    assert "Budget Buddy" in browser.text("main")
    assert "Signed in as operator" in browser.text("header")
    browser.screenshot("console-02-clients")

    # its page
    link.click()
    browser.wait_for_url(f"/console/clients/{client_id}")
    page = browser.text("main")
    assert client_id in page and "Budget Buddy" in page and "software_roles" in page
    assert "active" in browser.text(".status-active")
    browser.screenshot("console-03-client")

    # the refused request, with its explain report
    browser.click('nav a[href="/console/refused"]')
    browser.wait_for(".refusal")
    refusal = browser.text(".refusal")
    assert "jti_replay" in refusal and "invalid_client_metadata" in refusal
    assert "jti replayed" in refusal
    software_id = next(iter(store.list())).software_id
    assert software_id in refusal
    failed = browser.find_all(".refusal tr.verdict-failed")
    assert [row.text.split()[1] for row in failed] == ["request_claims"]
    assert len(browser.find_all(".refusal tr.verdict-passed")) == 4
    browser.screenshot("console-04-refused")

    # the validator's settings
    browser.click('nav a[href="/console/settings"]')
    browser.wait_for_url("/console/settings")
    settings = browser.text("main")
    assert base in settings and f"{base}/register" in settings
    assert f"{sandbox.directory_url}/openbanking.jwks" in settings
    assert "SQLiteStore" in settings and "PS256" in settings
    browser.screenshot("console-05-settings")

    # a suspension, confirmed first
    browser.get(f"{base}/console/clients/{client_id}")
    browser.click("#suspend")
    browser.wait_for_url(f"/console/clients/{client_id}/suspend")
    assert browser.text("h1") == "Suspend this client?"
    assert SUSPENDED not in store.get(client_id).extra
    browser.screenshot("console-06-suspend")
    browser.click("button.danger")
    browser.wait_for(".status-suspended")
    assert "suspended by an operator" in browser.text(".status-suspended")
    assert store.get(client_id).extra[SUSPENDED]["reason"] == "suspended by an operator"
    browser.screenshot("console-07-suspended")

    # signed out, the console is closed again
    browser.click("header form button")
    browser.wait_for("form input[name=password]")
    browser.get(f"{base}/console/settings")
    browser.wait_for("form input[name=password]")
    assert "/console-login" in browser.url
