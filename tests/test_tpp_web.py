"""The TPP's web page (example_app.tpp_web) and the consent journey's TPP side in
example_app.tpp, against the interface alone: the bank's answers are stood in for (its
id_token keys, the consents API, the token endpoint, the accounts API), so that every check
the TPP makes on what comes back through the browser is tested on its own: the state, the
id_token's signature, iss, aud, exp, nonce, c_hash, s_hash and openbanking_intent_id. The
real bank's side is tests/test_browser_consent.py's.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from jwcrypto import jwk, jws

import example_app.tpp as tpp_module
from example_app._util import decode_jwt, write_json
from example_app.tpp_web import SESSION_COOKIE, create_tpp_web_app
from flask_obdcr.testing import sign_jwt
from flask_obdcr.testing.pki import generate_key, key_pem, pem

BANK = "https://bank.test"
PAGE = "https://127.0.0.1:7443"
REDIRECT_URI = f"{PAGE}/callback"
CLIENT_ID = "client-123"
CONSENT_ID = "urn-anybank-intent-5d8f"
SIGNING_KID = "signing-kid-1"
ACCESS_TOKEN = "at-secret-value-never-shown"
REFRESH_TOKEN = "rt-secret-value-never-shown"
ACCOUNTS = [
    {
        "AccountId": "22289",
        "Currency": "GBP",
        "AccountType": "Personal",
        "AccountSubType": "CurrentAccount",
        "Nickname": "Bills",
        "Balance": [
            {
                "Type": "InterimAvailable",
                "CreditDebitIndicator": "Credit",
                "Amount": {"Amount": "1230.00", "Currency": "GBP"},
            }
        ],
    }
]


class Bank:
    """What the bank answers, and what the TPP asked of it."""

    def __init__(self) -> None:
        self.key = jwk.JWK.generate(kty="RSA", size=2048, kid="bank-ps256")
        self.calls: list[tuple[str, Any]] = []
        self.consent_status = "AwaitingAuthorisation"

    def id_token(
        self, *, code: str, state: str, nonce: str, overrides: dict[str, Any] | None = None
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": BANK,
            "aud": CLIENT_ID,
            "sub": CONSENT_ID,
            "openbanking_intent_id": CONSENT_ID,
            "nonce": nonce,
            "c_hash": half_hash(code),
            "s_hash": half_hash(state),
            "acr": "urn:openbanking:psd2:sca",
            "auth_time": now,
            "iat": now,
            "exp": now + 300,
        }
        overrides = dict(overrides or {})
        key = overrides.pop("key", self.key)
        alg = overrides.pop("alg", "PS256")
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return sign_jwt(claims, key, alg=alg)


def half_hash(value: str) -> str:
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


@pytest.fixture
def bank(monkeypatch) -> Bank:
    stand_in = Bank()

    def jwks(tpp):
        keys = jwk.JWKSet()
        keys.add(jwk.JWK(**stand_in.key.export_public(as_dict=True)))
        return keys

    def create_consent(tpp, permissions=tpp_module.DEFAULT_PERMISSIONS, **kwargs):
        stand_in.calls.append(("create_consent", list(permissions)))
        return {
            "ConsentId": CONSENT_ID,
            "Status": "AwaitingAuthorisation",
            "Permissions": list(permissions),
        }

    def exchange_code(tpp, code, *, redirect_uri):
        stand_in.calls.append(("exchange_code", (code, redirect_uri)))
        return {
            "access_token": ACCESS_TOKEN,
            "refresh_token": REFRESH_TOKEN,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "openid accounts",
        }

    def consent_status(tpp, consent_id):
        stand_in.calls.append(("consent_status", consent_id))
        return {"ConsentId": consent_id, "Status": stand_in.consent_status}

    def delete_consent(tpp, consent_id):
        stand_in.calls.append(("delete_consent", consent_id))
        record = tpp_module.load_consent(tpp)
        record["status"] = "Revoked"
        write_json(tpp.path("consent.json"), record, secret=True)

    def read_accounts(tpp, *, balances=True):
        stand_in.calls.append(("read_accounts", tpp_module.consented(tpp)["access_token"]))
        return json.loads(json.dumps(ACCOUNTS))

    monkeypatch.setattr(tpp_module, "bank_jwks", jwks)
    monkeypatch.setattr(tpp_module, "exchange_code", exchange_code)
    for name, function in (
        ("create_consent", create_consent),
        ("consent_status", consent_status),
        ("delete_consent", delete_consent),
        ("read_accounts", read_accounts),
    ):
        monkeypatch.setattr(f"example_app.tpp_web.{name}", function)
    return stand_in


def _self_signed(key, name: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return pem(certificate)


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A working folder as after `register` (tls_client_auth, PS256)."""
    folder = tmp_path / "tpp"
    folder.mkdir()
    ca_file = tmp_path / "ca-bundle.pem"
    transport = generate_key("RSA")
    ca_file.write_text(_self_signed(transport, "sandbox CA stand-in"))
    (folder / "transport.key").write_text(key_pem(transport))
    (folder / "transport.pem").write_text(_self_signed(transport, "transport"))
    (folder / "signing.key").write_text(key_pem(generate_key("RSA")))
    write_json(
        folder / "tpp.json",
        {
            "directory_url": "https://directory.test",
            "bank_url": BANK,
            "ca_file": str(ca_file),
            "org_id": "org-1",
            "software_id": "software-1",
            "client_name": "Budget <b>Buddy</b>",
            "certificates": {"signing": {"kid": SIGNING_KID}},
        },
    )
    write_json(
        folder / "discovery.json",
        {
            "issuer": BANK,
            "token_endpoint": f"{BANK}/token",
            "authorization_endpoint": f"{BANK}/authorize",
            "jwks_uri": f"{BANK}/jwks",
            "account_access_consents_endpoint": (
                f"{BANK}/open-banking/v3.1/aisp/account-access-consents"
            ),
            "accounts_endpoint": f"{BANK}/open-banking/v3.1/aisp/accounts",
        },
    )
    write_json(
        folder / "registration.json",
        {
            "client_id": CLIENT_ID,
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "tls_client_auth",
            "id_token_signed_response_alg": "PS256",
            "request_object_signing_alg": "PS256",
        },
    )
    return folder


@pytest.fixture
def page(workdir):
    app = create_tpp_web_app(workdir, redirect_uri=REDIRECT_URI)
    return app.test_client()


def csrf(client, path: str = "/") -> str:
    body = client.get(path, base_url=PAGE).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', body)
    assert found, body
    return found.group(1)


def connect(client) -> dict[str, str]:
    """POST /connect; returns the authorization request's query parameters."""
    response = client.post("/connect", data={"csrf_token": csrf(client)}, base_url=PAGE)
    assert response.status_code == 303, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(f"{BANK}/authorize?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def answer(client, **fields: str):
    token = csrf(client, "/callback")
    return client.post("/callback", data={"csrf_token": token, **fields}, base_url=PAGE)


def pending_nonce(workdir: Path, state: str) -> str:
    return json.loads((workdir / "authorizations.json").read_text())[state]["nonce"]


# -- the start page -----------------------------------------------------------------------------


def test_home_shows_the_software_and_its_client_escaped(page):
    response = page.get("/", base_url=PAGE)
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<h1>Connect your AnyBank accounts</h1>" in body
    assert "Budget &lt;b&gt;Buddy&lt;/b&gt;" in body and "<b>Buddy</b>" not in body
    assert f'<td class="mono" id="client-id">{CLIENT_ID}</td>' in body
    assert 'id="connect"' in body
    assert response.headers["Cache-Control"] == "no-store"


def test_home_of_an_unregistered_folder_names_the_next_command(page, workdir):
    (workdir / "registration.json").unlink()
    body = page.get("/", base_url=PAGE).get_data(as_text=True)
    assert "not registered" in body
    assert f"--workdir {workdir} status</code>" in body
    assert 'id="connect"' not in body


def test_home_warns_when_its_redirect_uri_is_not_registered(workdir):
    app = create_tpp_web_app(workdir, redirect_uri="https://127.0.0.1:7444/callback")
    body = app.test_client().get("/", base_url=PAGE).get_data(as_text=True)
    assert 'id="redirect-warning"' in body
    assert REDIRECT_URI in body


# -- connect: the consent and the signed request object --------------------------------------


def test_connect_creates_the_consent_and_sends_a_signed_request_object(page, workdir, bank):
    query = connect(page)
    assert bank.calls == [("create_consent", list(tpp_module.DEFAULT_PERMISSIONS))]
    assert {k: query[k] for k in ("client_id", "response_type", "scope", "redirect_uri")} == {
        "client_id": CLIENT_ID,
        "response_type": "code id_token",
        "scope": "openid accounts",
        "redirect_uri": REDIRECT_URI,
    }
    header, claims = decode_jwt(query["request"])
    assert header["alg"] == "PS256" and header["kid"] == SIGNING_KID
    signing = jwk.JWK.from_pem((workdir / "signing.key").read_bytes())
    token = jws.JWS()
    token.deserialize(query["request"])
    token.verify(signing, alg="PS256")  # raises if it does not
    assert claims["iss"] == claims["client_id"] == CLIENT_ID
    assert claims["aud"] == BANK
    assert (claims["state"], claims["nonce"]) == (query["state"], query["nonce"])
    assert claims["claims"]["id_token"]["openbanking_intent_id"] == {
        "value": CONSENT_ID,
        "essential": True,
    }
    assert claims["claims"]["id_token"]["acr"]["values"] == ["urn:openbanking:psd2:sca"]
    assert 0 < claims["exp"] - claims["nbf"] <= 3600 and claims["nbf"] <= time.time()
    assert claims["jti"]
    pending = json.loads((workdir / "authorizations.json").read_text())
    assert pending[query["state"]]["consent_id"] == CONSENT_ID
    assert pending[query["state"]]["origin"] == "web"


def test_connect_asks_for_the_chosen_permissions(page, bank):
    token = csrf(page)
    data = {"csrf_token": token, "permission": ["ReadAccountsBasic", "ReadBalances"]}
    assert page.post("/connect", data=data, base_url=PAGE).status_code == 303
    assert bank.calls == [("create_consent", ["ReadAccountsBasic", "ReadBalances"])]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="no-csrf-token"),
        pytest.param({"csrf_token": "forged"}, id="wrong-csrf-token"),
    ],
)
def test_connect_without_the_csrf_token_is_refused(page, bank, workdir, data):
    csrf(page)  # the session has a token; the form does not carry it
    response = page.post("/connect", data=data, base_url=PAGE)
    assert response.status_code == 400
    assert "This form has expired" in response.get_data(as_text=True)
    assert bank.calls == []
    assert not (workdir / "authorizations.json").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("permission", "ReadEverything"), ("tamper", "drop-the-signature")],
    ids=["unknown-permission", "unknown-tampering"],
)
def test_connect_with_an_unknown_choice_is_refused(page, bank, field, value):
    response = page.post("/connect", data={"csrf_token": csrf(page), field: value}, base_url=PAGE)
    assert response.status_code == 400
    assert value in response.get_data(as_text=True)
    assert bank.calls == []


def test_the_debug_option_signs_with_another_key_under_the_same_kid(page, workdir, bank):
    token = csrf(page)
    response = page.post(
        "/connect", data={"csrf_token": token, "tamper": "other-key"}, base_url=PAGE
    )
    query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    assert decode_jwt(query["request"])[0]["kid"] == SIGNING_KID
    signing = jwk.JWK.from_pem((workdir / "signing.key").read_bytes())
    token_object = jws.JWS()
    token_object.deserialize(query["request"])
    with pytest.raises(jws.InvalidJWSSignature):
        token_object.verify(signing, alg="PS256")


# -- the callback: the id_token checked, the code exchanged ----------------------------------


def test_the_callback_page_posts_the_fragment_with_a_nonce_bound_script(page):
    response = page.get("/callback", base_url=PAGE)
    body = response.get_data(as_text=True)
    nonce = re.search(r"script-src 'nonce-([^']+)'", response.headers["Content-Security-Policy"])
    assert nonce and f'<script nonce="{nonce.group(1)}">' in body
    assert "location.hash" in body and "<noscript>" in body
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_a_valid_answer_is_exchanged_and_the_accounts_shown_without_tokens(page, workdir, bank):
    query = connect(page)
    state = query["state"]
    id_token = bank.id_token(code="the-code", state=state, nonce=query["nonce"])
    response = answer(page, code="the-code", id_token=id_token, state=state)
    assert response.status_code == 303 and response.headers["Location"].endswith("/accounts")
    assert ("exchange_code", ("the-code", REDIRECT_URI)) in bank.calls
    record = json.loads((workdir / "consent.json").read_text())
    assert (record["consent_id"], record["status"]) == (CONSENT_ID, "Authorised")
    assert record["access_token"] == ACCESS_TOKEN and record["refresh_token"] == REFRESH_TOKEN
    assert oct((workdir / "consent.json").stat().st_mode & 0o777) == "0o600"
    assert json.loads((workdir / "authorizations.json").read_text()) == {}  # state used up

    shown = page.get("/accounts", base_url=PAGE)
    body = shown.get_data(as_text=True)
    assert shown.status_code == 200
    assert 'data-account-id="22289"' in body and "1230.00 GBP" in body
    assert "x5t#S256" in body
    assert ACCESS_TOKEN not in body and REFRESH_TOKEN not in body and id_token not in body
    assert ("read_accounts", ACCESS_TOKEN) in bank.calls


def _other_key() -> jwk.JWK:
    return jwk.JWK.generate(kty="RSA", size=2048, kid="bank-ps256")


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        pytest.param({"nonce": "another"}, "its nonce is not the one this TPP sent", id="nonce"),
        pytest.param({"aud": "another-client"}, "aud is 'another-client'", id="aud"),
        pytest.param({"iss": "https://evil.test"}, "iss is 'https://evil.test'", id="iss"),
        pytest.param({"exp": int(time.time()) - 3600}, "it expired", id="expired"),
        pytest.param({"c_hash": half_hash("other")}, "c_hash is not", id="c_hash"),
        pytest.param({"s_hash": half_hash("other")}, "s_hash is not", id="s_hash"),
        pytest.param({"s_hash": None}, "s_hash is not", id="s_hash-missing"),
        pytest.param(
            {"openbanking_intent_id": "urn-anybank-intent-other"},
            "openbanking_intent_id is 'urn-anybank-intent-other'",
            id="intent",
        ),
        pytest.param(
            {"key": "other"}, "its signature does not verify with the bank's keys", id="signature"
        ),
        pytest.param(
            {"alg": "ES256", "key": "ec"}, "it is signed ES256, not PS256", id="alg-not-registered"
        ),
    ],
)
def test_an_id_token_that_does_not_hold_is_refused_and_nothing_exchanged(
    page, workdir, bank, overrides, why
):
    query = connect(page)
    overrides = dict(overrides)
    if overrides.get("key") == "other":
        overrides["key"] = _other_key()
    elif overrides.get("key") == "ec":
        overrides["key"] = jwk.JWK.generate(kty="EC", crv="P-256", kid="bank-es256")
    id_token = bank.id_token(
        code="the-code", state=query["state"], nonce=query["nonce"], overrides=overrides
    )
    response = answer(page, code="the-code", id_token=id_token, state=query["state"])
    body = response.get_data(as_text=True)
    assert response.status_code == 400, body
    assert "The id_token is not valid: nothing was exchanged" in body
    assert why.replace("'", "&#39;") in body
    assert not any(call[0] == "exchange_code" for call in bank.calls)
    assert not (workdir / "consent.json").exists()


def test_an_answer_with_an_unknown_state_is_refused(page, workdir, bank):
    query = connect(page)
    id_token = bank.id_token(code="c", state="forged", nonce=query["nonce"])
    response = answer(page, code="c", id_token=id_token, state="forged")
    assert response.status_code == 400
    assert "names no authorization this TPP started" in response.get_data(as_text=True)
    assert not any(call[0] == "exchange_code" for call in bank.calls)
    assert query["state"] in json.loads((workdir / "authorizations.json").read_text())


def test_an_answer_is_accepted_once(page, workdir, bank):
    query = connect(page)
    fields = {
        "code": "the-code",
        "id_token": bank.id_token(code="the-code", state=query["state"], nonce=query["nonce"]),
        "state": query["state"],
    }
    assert answer(page, **fields).status_code == 303
    replayed = answer(page, **fields)
    assert replayed.status_code == 400
    assert [c for c in bank.calls if c[0] == "exchange_code"] == [
        ("exchange_code", ("the-code", REDIRECT_URI))
    ]


def test_an_answer_brought_by_another_browser_is_refused(workdir, bank):
    app = create_tpp_web_app(workdir, redirect_uri=REDIRECT_URI)
    started = app.test_client()
    query = connect(started)
    other = app.test_client()
    fields = {
        "code": "c",
        "id_token": bank.id_token(code="c", state=query["state"], nonce=query["nonce"]),
        "state": query["state"],
    }
    response = answer(other, **fields)
    assert response.status_code == 400
    assert "This browser did not start that authorization" in response.get_data(as_text=True)
    assert not any(call[0] == "exchange_code" for call in bank.calls)
    assert not (workdir / "consent.json").exists()


def test_a_denial_shows_the_denied_page_and_the_consent_status(page, workdir, bank):
    query = connect(page)
    bank.consent_status = "Rejected"
    response = answer(
        page,
        error="access_denied",
        error_description="The customer denied access",
        state=query["state"],
    )
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="denied"' in body
    assert '<strong id="consent-status">Rejected</strong>' in body
    assert ("consent_status", CONSENT_ID) in bank.calls
    assert not any(call[0] == "exchange_code" for call in bank.calls)
    assert not (workdir / "consent.json").exists()


# -- the accounts page: refresh and revoke -----------------------------------------------------


def test_accounts_without_a_consent_says_to_connect(page, bank):
    response = page.get("/accounts", base_url=PAGE)
    assert response.status_code == 200
    assert 'id="not-connected"' in response.get_data(as_text=True)
    assert bank.calls == []


@pytest.mark.parametrize("path", ["/refresh", "/revoke"])
def test_refresh_and_revoke_need_the_csrf_token(page, workdir, bank, path):
    write_json(workdir / "consent.json", {"consent_id": CONSENT_ID, "access_token": "x"})
    csrf(page)
    response = page.post(path, data={"csrf_token": "forged"}, base_url=PAGE)
    assert response.status_code == 400
    assert bank.calls == []
    assert json.loads((workdir / "consent.json").read_text()) == {
        "consent_id": CONSENT_ID,
        "access_token": "x",
    }


def test_revoke_deletes_the_consent_at_the_bank(page, workdir, bank):
    write_json(
        workdir / "consent.json",
        {"consent_id": CONSENT_ID, "access_token": "x", "status": "Authorised"},
    )
    token = csrf(page, "/accounts")
    response = page.post("/revoke", data={"csrf_token": token}, base_url=PAGE)
    assert response.status_code == 303
    assert ("delete_consent", CONSENT_ID) in bank.calls
    assert json.loads((workdir / "consent.json").read_text())["status"] == "Revoked"


def test_the_session_cookie_has_its_own_name(page):
    csrf(page)
    cookie = page.get_cookie(SESSION_COOKIE, domain="127.0.0.1")
    assert cookie is not None and cookie.secure and cookie.http_only


# -- the command line's side of the same journey -----------------------------------------------


def test_parse_redirect_reads_the_fragment_or_the_query():
    assert tpp_module.parse_redirect(f"{REDIRECT_URI}#code=a&state=b") == {
        "code": "a",
        "state": "b",
    }
    assert tpp_module.parse_redirect(f"{REDIRECT_URI}?error=access_denied&state=s") == {
        "error": "access_denied",
        "state": "s",
    }


def test_accounts_without_a_consent_says_to_connect_first(workdir):
    from click.testing import CliRunner

    result = CliRunner().invoke(tpp_module.cli, ["--workdir", str(workdir), "accounts"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "Error: no access token from a customer's consent yet"
    assert "connect through the TPP's web page first" in lines[2]
