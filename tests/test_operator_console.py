"""The example bank's operator console behind a sign-in page (example_app/operator.py)."""

from __future__ import annotations

import re

import pytest

import example_app.bank as bank_module
from example_app.bank import create_app
from example_app.directory import DirectoryState
from example_app.operator import (
    BROWSER_ENDPOINTS,
    PASSWORD_KEY,
    SANDBOX_PASSWORD,
    SANDBOX_USER,
    USER_KEY,
    install_console,
    local_path,
)
from flask_obdcr.registration import SUSPENDED
from flask_obdcr.storage import StoredClient

CLIENT_ID = "3f1c2a9e-console-client"


@pytest.fixture(autouse=True)
def browser_pages_need_no_certificate(monkeypatch):
    # the lead adds BROWSER_ENDPOINTS to the bank's PUBLIC_ENDPOINTS; until then, here
    monkeypatch.setattr(
        bank_module, "PUBLIC_ENDPOINTS", bank_module.PUBLIC_ENDPOINTS | BROWSER_ENDPOINTS
    )


@pytest.fixture(scope="module")
def ca_bundle(tmp_path_factory):
    """One sandbox PKI for the module's banks (each bank makes its own otherwise)."""
    folder = tmp_path_factory.mktemp("directory")
    DirectoryState.open(folder, create=True)
    return str(folder / "ca-bundle.pem")


def make_bank(tmp_path, ca_bundle, **config):
    config = {"OBDCR_TRANSPORT_CA_FILE": ca_bundle, "OBDCR_HTTP_VERIFY": ca_bundle, **config}
    app = create_app(config, instance_path=tmp_path / "bank")
    app.secret_key = "operator-console-test"  # create_app will set one
    dcr = app.extensions["anybank"]["dcr"]
    install_console(app, dcr)
    dcr.store.add(
        StoredClient(
            client_id=CLIENT_ID,
            client_id_issued_at=1_700_000_000,
            metadata={"token_endpoint_auth_method": "tls_client_auth"},
            ssa_claims={"software_client_name": "Budget App", "org_name": "TPP Ltd"},
        )
    )
    return app


@pytest.fixture
def bank(tmp_path, ca_bundle):
    return make_bank(tmp_path, ca_bundle)


@pytest.fixture
def http(bank):
    return bank.test_client()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def sign_in(http, *, user=SANDBOX_USER, password=SANDBOX_PASSWORD, next_path=None, token=None):
    page = http.get("/console-login").get_data(as_text=True)
    data = {"user": user, "password": password, "csrf_token": token or csrf_of(page)}
    if next_path is not None:
        data["next"] = next_path
    return http.post("/console-login", data=data)


def is_signed_in(http) -> bool:
    return http.get("/console/").status_code == 200


def stored(bank):
    return bank.extensions["anybank"]["dcr"].store.get(CLIENT_ID)


def test_browser_endpoints_are_every_endpoint_install_console_adds(bank):
    added = {
        rule.endpoint
        for rule in bank.url_map.iter_rules()
        if rule.endpoint.startswith(("obdcr_console.", "anybank_operator."))
    }
    assert added == BROWSER_ENDPOINTS


@pytest.mark.parametrize(
    "url,next_path",
    [
        ("/console/", "/console/"),
        (f"/console/clients/{CLIENT_ID}", f"/console/clients/{CLIENT_ID}"),
        ("/console/?q=budget", "/console/?q=budget"),
        ("/console/settings", "/console/settings"),
        ("/console/refused", "/console/refused"),
    ],
)
def test_a_browser_not_signed_in_is_sent_to_sign_in_and_brought_back(http, url, next_path):
    response = http.get(url)
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith("/console-login?next=")
    page = http.get(location).get_data(as_text=True)
    assert f'name="next" value="{next_path}"' in page
    assert "Budget App" not in page and "TPP Ltd" not in page
    signed = sign_in(http, next_path=next_path)
    assert signed.status_code == 303 and signed.headers["Location"] == next_path
    assert http.get(next_path).status_code == 200


def test_an_action_without_signing_in_is_403_and_changes_nothing(bank, http):
    page = http.get("/console-login").get_data(as_text=True)
    response = http.post(
        f"/console/clients/{CLIENT_ID}/suspend", data={"csrf_token": csrf_of(page)}
    )
    assert response.status_code == 403
    assert CLIENT_ID not in response.get_data(as_text=True)
    assert SUSPENDED not in stored(bank).extra


def test_the_sign_in_page_states_the_sandbox_password_as_sandbox_only(http):
    page = http.get("/console-login")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    text = page.get_data(as_text=True)
    assert "Sandbox only" in text and SANDBOX_USER in text and SANDBOX_PASSWORD in text
    assert 'type="password"' in text and 'method="post"' in text


def test_signing_in_opens_the_console_with_a_sign_out_button(http):
    response = sign_in(http)
    assert response.status_code == 303 and response.headers["Location"] == "/console/"
    page = http.get("/console/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert CLIENT_ID in text and "Budget App" in text
    assert "Signed in as operator" in text
    assert 'action="/console-logout"' in text


@pytest.mark.parametrize(
    "user,password",
    [
        (SANDBOX_USER, "wrong password"),
        ("someone", SANDBOX_PASSWORD),
        ("", ""),
        (SANDBOX_USER, SANDBOX_PASSWORD + "x"),
    ],
)
def test_wrong_credentials_are_a_readable_401(http, user, password):
    response = sign_in(http, user=user, password=password)
    assert response.status_code == 401
    text = response.get_data(as_text=True)
    assert "do not match" in text and "<form" in text
    assert 'name="password" value=' not in text  # the password typed is not sent back
    assert not is_signed_in(http)


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_the_sign_in_form_needs_its_csrf_token(http, token):
    http.get("/console-login")  # the session holds a token now
    data = {"user": SANDBOX_USER, "password": SANDBOX_PASSWORD}
    if token:
        data["csrf_token"] = token
    response = http.post("/console-login", data=data)
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "Sign in again" in text and "<form" in text
    assert not is_signed_in(http)


def test_a_csrf_token_of_another_session_does_not_sign_in(bank):
    first, second = bank.test_client(), bank.test_client()
    token = csrf_of(first.get("/console-login").get_data(as_text=True))
    second.get("/console-login")
    assert sign_in(second, token=token).status_code == 400
    assert not is_signed_in(second)


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/console/",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "http:/evil.example",
        "/\t/evil.example",
        "/console/\r\nLocation: https://evil.example",
        "evil.example",
        "",
    ],
)
def test_next_must_be_a_local_path(http, target):
    response = sign_in(http, next_path=target)
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/"
    page = http.get("/console-login", query_string={"next": target}).get_data(as_text=True)
    assert "evil.example" not in page


def test_local_path():
    assert local_path("/console/clients/x?q=1") == "/console/clients/x?q=1"
    for bad in (None, 42, "", "//x", "/\\x", "https://x/", "x", "/a\nb", "/a\x7fb"):
        assert local_path(bad) is None, bad


def test_signed_in_the_sign_in_page_goes_straight_on(http):
    sign_in(http)
    response = http.get("/console-login", query_string={"next": "/console/settings"})
    assert response.status_code == 303 and response.headers["Location"] == "/console/settings"


def test_actions_need_the_csrf_token_when_signed_in(bank, http):
    sign_in(http)
    page = http.get(f"/console/clients/{CLIENT_ID}").get_data(as_text=True)
    for data in ({}, {"csrf_token": "wrong"}):
        response = http.post(f"/console/clients/{CLIENT_ID}/suspend", data=data)
        assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
        assert SUSPENDED not in stored(bank).extra
    response = http.post(
        f"/console/clients/{CLIENT_ID}/suspend", data={"csrf_token": csrf_of(page)}
    )
    assert response.status_code == 303
    assert stored(bank).extra[SUSPENDED]["reason"] == "suspended by an operator"


def test_sign_out_needs_the_csrf_token_then_signs_out(http):
    sign_in(http)
    page = http.get("/console/").get_data(as_text=True)
    refused = http.post("/console-logout", data={"csrf_token": "wrong"})
    assert refused.status_code == 400 and "Sign in again" in refused.get_data(as_text=True)
    assert is_signed_in(http)
    response = http.post("/console-logout", data={"csrf_token": csrf_of(page)})
    assert response.status_code == 303 and response.headers["Location"] == "/console-login"
    assert not is_signed_in(http)
    assert http.get("/console/").headers["Location"].startswith("/console-login")


def test_configured_credentials_replace_the_sandbox_ones(tmp_path, ca_bundle):
    credentials = {USER_KEY: "alice", PASSWORD_KEY: "correct horse battery"}
    bank = make_bank(tmp_path, ca_bundle, **credentials)
    http = bank.test_client()
    page = http.get("/console-login").get_data(as_text=True)
    assert "Sandbox only" not in page and SANDBOX_PASSWORD not in page
    assert sign_in(http).status_code == 401
    assert sign_in(http, user="alice", password="correct horse battery").status_code == 303
    assert "Signed in as alice" in http.get("/console/").get_data(as_text=True)


def test_a_change_of_operator_signs_the_old_one_out(bank, http):
    sign_in(http)
    bank.config[USER_KEY] = "someone-else"
    assert not is_signed_in(http)


def test_without_a_secret_key_sign_in_says_why(bank):
    bank.secret_key = None
    response = bank.test_client().get("/console-login")
    assert response.status_code == 503
    assert "secret_key" in response.get_data(as_text=True)


def test_the_session_cookie_is_not_sent_by_other_sites(bank, http):
    response = sign_in(http)
    cookie = response.headers["Set-Cookie"]
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie


def test_signing_in_and_out_keeps_the_rest_of_the_session(bank, http):
    with http.session_transaction() as session:
        session["customer"] = "kept"  # the bank's customer pages share the cookie
    page = http.get("/console-login").get_data(as_text=True)
    before = csrf_of(page)
    sign_in(http, token=before)
    after = csrf_of(http.get(f"/console/clients/{CLIENT_ID}/suspend").get_data(as_text=True))
    assert after != before  # a token seen before signing in is not good afterwards
    http.post("/console-logout", data={"csrf_token": after})
    assert not is_signed_in(http)
    with http.session_transaction() as session:
        assert session["customer"] == "kept"


def test_install_console_twice_is_once(bank):
    rules = len(list(bank.url_map.iter_rules()))
    install_console(bank, bank.extensions["anybank"]["dcr"])
    assert len(list(bank.url_map.iter_rules())) == rules
