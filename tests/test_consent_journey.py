"""The bank's side of the OB AISP consent journey, driven with Flask's test client.

The example bank (``example_app.bank.create_app``) fetches the sandbox Directory's key sets
with its real HTTPFetcher from a :class:`~flask_obdcr.testing.JWKSServer` on loopback; the
TPP is a :class:`~flask_obdcr.testing.Software` of that Directory, registered at the bank, and
signs its request objects with :func:`~flask_obdcr.testing.sign_jwt`. The customer's browser
is a second test client (its own session cookie).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient
from jwcrypto import jwk, jws

from example_app.bank import create_app
from example_app.bank_store import BankStore
from flask_obdcr.testing import REMOVE, JWKSServer, SandboxDirectory, Software, sign_jwt

ISSUER = "https://bank.anybank.test"
# a TPP host: loopback redirect URIs (make serve's TPP page) need OBDCR_LOOPBACK_REDIRECT_URIS
REDIRECT_URI = "https://tpp.example.com/callback"
CONSENTS = "/open-banking/v3.1/aisp/account-access-consents"
ACCOUNTS = "/open-banking/v3.1/aisp/accounts"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACR_SCA = "urn:openbanking:psd2:sca"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# -- the sandbox: a Directory on loopback, the bank in process ---------------------------------


@pytest.fixture(scope="module")
def directory() -> SandboxDirectory:
    return SandboxDirectory()  # our own: the JWKS server moves its base_url


@pytest.fixture(scope="module")
def jwks_server(directory):
    with JWKSServer(directory) as running:
        yield running


@pytest.fixture(scope="module")
def bank(directory, jwks_server, tmp_path_factory) -> Flask:
    folder = tmp_path_factory.mktemp("bank")
    config = directory.app_config(
        folder / "ca.pem",
        issuer=ISSUER,
        OBDCR_HTTP_VERIFY=jwks_server.ca_file(folder / "jwks-ca.pem"),
    )
    return create_app(config, instance_path=folder / "instance")


@pytest.fixture(scope="module")
def store(bank) -> BankStore:
    return bank.extensions["anybank"]["store"]


def thumbprint(software: Software) -> str:
    der = software.transport_certificate.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


@dataclass
class TPP:
    """A registered client of the bank, calling it over (simulated) mutual TLS."""

    app: Flask
    software: Software
    client_id: str
    method: str

    def call(self, method: str, path: str, *, token: str | None = None, cert=True, **kw):
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        environ = self.software.environ() if cert else {}
        return self.app.test_client().open(
            path, method=method, base_url=ISSUER, environ_base=environ, headers=headers, **kw
        )

    def token(self, cert=True, **form: str):
        if self.method == "private_key_jwt":
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self.software.client_assertion(
                self.client_id, aud=f"{ISSUER}/token"
            )
        else:
            form["client_id"] = self.client_id
        return self.call("POST", "/token", data=form, cert=cert)

    def client_credentials(self) -> str:
        issued = self.token(grant_type="client_credentials", scope="accounts")
        assert issued.status_code == 200, issued.get_data(as_text=True)
        return str(issued.get_json()["access_token"])

    def create_consent(self, permissions=("ReadAccountsDetail", "ReadBalances"), **data) -> str:
        expires = datetime.now(timezone.utc) + timedelta(days=30)
        body = {
            "Data": {
                "Permissions": list(permissions),
                "ExpirationDateTime": expires.isoformat(timespec="seconds"),
                **data,
            },
            "Risk": {},
        }
        created = self.call("POST", CONSENTS, token=self.client_credentials(), json=body)
        assert created.status_code == 201, created.get_data(as_text=True)
        return str(created.get_json()["Data"]["ConsentId"])

    def consent_status(self, consent_id: str) -> str:
        read = self.call("GET", f"{CONSENTS}/{consent_id}", token=self.client_credentials())
        assert read.status_code == 200, read.get_data(as_text=True)
        return str(read.get_json()["Data"]["Status"])

    def request_claims(self, consent_id: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "aud": ISSUER,
            "client_id": self.client_id,
            "response_type": "code id_token",
            "redirect_uri": REDIRECT_URI,
            "scope": "openid accounts",
            "state": "state-" + uuid.uuid4().hex,
            "nonce": "nonce-" + uuid.uuid4().hex,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
            "claims": {
                "id_token": {
                    "openbanking_intent_id": {"value": consent_id, "essential": True},
                    "acr": {"essential": True, "values": [ACR_SCA]},
                }
            },
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not REMOVE}

    def authorize_query(
        self, claims: dict[str, Any], *, key=None, alg=None, request_object=None, **query
    ) -> str:
        if request_object is None:
            request_object = sign_jwt(
                claims, key or self.software.signing_key, alg=alg or self.software.signing_alg
            )
        params = {
            "client_id": self.client_id,
            "response_type": "code id_token",
            "scope": "openid accounts",
            "redirect_uri": claims.get("redirect_uri", REDIRECT_URI),
            "state": claims.get("state", ""),
            "nonce": claims.get("nonce", ""),
            "request": request_object,
            **query,
        }
        return "/authorize?" + urlencode(params)


def register(app: Flask, directory: SandboxDirectory, software: Software, method: str) -> TPP:
    body = directory.registration_request(software, aud=ISSUER, token_endpoint_auth_method=method)
    created = app.test_client().post(
        "/register",
        data=body,
        content_type="application/jwt",
        base_url=ISSUER,
        environ_base=software.environ(),
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    return TPP(app, software, created.get_json()["client_id"], method)


@pytest.fixture(scope="module")
def software(directory, jwks_server) -> Software:
    return directory.register_software(
        roles=["AISP"], client_name="Budget Buddy", redirect_uris=[REDIRECT_URI]
    )


@pytest.fixture(scope="module")
def ec_software(directory, jwks_server) -> Software:
    return directory.register_software(roles=["AISP"], key_type="EC", redirect_uris=[REDIRECT_URI])


@pytest.fixture(scope="module")
def tpp(bank, directory, software) -> TPP:
    return register(bank, directory, software, "tls_client_auth")


@pytest.fixture(scope="module")
def ec_tpp(bank, directory, ec_software) -> TPP:
    return register(bank, directory, ec_software, "private_key_jwt")


class Browser:
    """The customer's browser: one session cookie across the bank's pages."""

    def __init__(self, app: Flask) -> None:
        self.http: FlaskClient = app.test_client()
        self.page = ""

    def get(self, path: str):
        response = self.http.get(path, base_url=ISSUER)
        self.page = response.get_data(as_text=True)
        return response

    def csrf(self) -> str:
        found = CSRF.search(self.page)
        assert found, self.page
        return found.group(1)

    def post(self, path: str, data: dict[str, Any], *, csrf: bool = True):
        if csrf:
            data = {"csrf_token": self.csrf(), **data}
        response = self.http.post(path, data=data, base_url=ISSUER)
        self.page = response.get_data(as_text=True)
        return response

    def start(self, url: str):
        response = self.get(url)
        if response.status_code == 303:
            assert response.headers["Location"].endswith("/sign-in")
            self.get("/sign-in")
        return response

    def sign_in(self, user: str = "mits", password: str = "sandbox"):
        return self.post("/sign-in", {"user": user, "password": password})

    def decide(self, decision: str, accounts=()):
        self.get("/consent")
        return self.post("/consent", {"decision": decision, "account": list(accounts)})


def fragment(response) -> dict[str, str]:
    assert response.status_code == 302, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI + "#"), location
    assert "?" not in location  # nothing in the query: the answer is in the fragment
    return {k: v[0] for k, v in parse_qs(urlsplit(location).fragment).items()}


def verify_with_bank_jwks(bank: Flask, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    published = bank.test_client().get("/jwks", base_url=ISSUER)
    assert published.status_code == 200
    keys = jwk.JWKSet.from_json(published.get_data(as_text=True))
    parsed = jws.JWS()
    parsed.deserialize(token)
    header = parsed.jose_header
    parsed.allowed_algs = [header["alg"]]
    parsed.verify(keys.get_key(header["kid"]), alg=header["alg"])
    return header, json.loads(parsed.payload)


def half_hash(value: str) -> str:
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def approved(bank: Flask, tpp: TPP, accounts=("22289", "42281"), **consent) -> dict[str, Any]:
    """A consent made, authorised by mits for ``accounts``: the fragment and the request."""
    consent_id = tpp.create_consent(**consent)
    claims = tpp.request_claims(consent_id)
    browser = Browser(bank)
    browser.start(tpp.authorize_query(claims))
    assert browser.sign_in().status_code == 303
    answer = fragment(browser.decide("approve", accounts))
    return {"fragment": answer, "claims": claims, "consent_id": consent_id}


def exchange(tpp: TPP, code: str, **form: str):
    return tpp.token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI, **form)


def consent_rows(store: BankStore) -> list[tuple[str, str]]:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT consent_id, status FROM consents ORDER BY consent_id").fetchall()


# -- discovery and the bank's keys ---------------------------------------------------------------


def test_discovery_advertises_the_consent_journey(bank):
    document = bank.test_client().get("/.well-known/openid-configuration", base_url=ISSUER)
    assert document.status_code == 200
    metadata = document.get_json()
    assert metadata["authorization_endpoint"] == f"{ISSUER}/authorize"
    assert metadata["jwks_uri"] == f"{ISSUER}/jwks"
    assert metadata["response_types_supported"] == ["code id_token"]
    assert metadata["response_modes_supported"] == ["fragment"]
    assert metadata["grant_types_supported"] == [
        "authorization_code",
        "client_credentials",
        "refresh_token",
    ]
    assert metadata["request_object_signing_alg_values_supported"] == ["PS256", "ES256"]
    assert metadata["id_token_signing_alg_values_supported"] == ["PS256", "ES256"]
    assert metadata["request_parameter_supported"] is True
    assert metadata["claims_parameter_supported"] is True
    assert metadata["scopes_supported"] == ["openid", "accounts"]
    assert metadata["account_access_consents_endpoint"] == ISSUER + CONSENTS
    assert metadata["accounts_endpoint"] == ISSUER + ACCOUNTS


def test_jwks_publishes_one_public_key_per_algorithm_without_a_certificate(bank):
    published = bank.test_client().get("/jwks", base_url=ISSUER)
    assert published.status_code == 200
    keys = published.get_json()["keys"]
    assert [(k["alg"], k["kty"], k["use"]) for k in keys] == [
        ("PS256", "RSA", "sig"),
        ("ES256", "EC", "sig"),
    ]
    assert all(k["kid"] and "d" not in k for k in keys)
    instance = Path(bank.instance_path)
    for name in ("anybank-id-token-ps256.pem", "anybank-id-token-es256.pem", "anybank-secret.key"):
        assert (instance / name).stat().st_mode & 0o077 == 0, name
    # the same keys after a restart
    again = create_app(dict(bank.config), instance_path=instance)
    assert again.test_client().get("/jwks", base_url=ISSUER).get_json()["keys"] == keys
    assert again.secret_key == bank.secret_key


# -- the consents API ------------------------------------------------------------------------------


def test_consent_created_awaiting_authorisation(tpp):
    token = tpp.client_credentials()
    body = {
        "Data": {
            "Permissions": ["ReadAccountsBasic", "ReadBalances"],
            "ExpirationDateTime": "2099-01-01T00:00:00+00:00",
            "TransactionFromDateTime": "2024-01-01T00:00:00+00:00",
        },
        "Risk": {},
    }
    created = tpp.call("POST", CONSENTS, token=token, json=body)
    assert created.status_code == 201, created.get_data(as_text=True)
    answer = created.get_json()
    data = answer["Data"]
    assert re.fullmatch(r"urn-anybank-intent-[0-9a-f-]{36}", data["ConsentId"])
    assert data["Status"] == "AwaitingAuthorisation"
    assert data["Permissions"] == ["ReadAccountsBasic", "ReadBalances"]
    assert data["ExpirationDateTime"] == "2099-01-01T00:00:00+00:00"
    assert data["TransactionFromDateTime"] == "2024-01-01T00:00:00+00:00"
    assert {"CreationDateTime", "StatusUpdateDateTime"} <= data.keys()
    assert answer["Risk"] == {} and answer["Meta"] == {}
    assert answer["Links"]["Self"] == f"{ISSUER}{CONSENTS}/{data['ConsentId']}"
    assert created.headers["Cache-Control"] == "no-store"
    assert tpp.consent_status(data["ConsentId"]) == "AwaitingAuthorisation"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({"Permissions": ["ReadAccountsDetail", "ReadEverything"]}, 400, "UK.OBIE.Field.Invalid"),
        ({"Permissions": []}, 400, "UK.OBIE.Field.Missing"),
        ({"ExpirationDateTime": "tomorrow"}, 400, "UK.OBIE.Field.InvalidDate"),
        ({"ExpirationDateTime": "2001-01-01T00:00:00+00:00"}, 400, "UK.OBIE.Field.InvalidDate"),
        ({"ExpirationDateTime": "2099-01-01T00:00:00"}, 400, "UK.OBIE.Field.InvalidDate"),
    ],
    ids=["unknown-permission", "no-permission", "bad-date", "past-date", "no-time-zone"],
)
def test_consent_request_refused(tpp, store, data, status, code):
    token = tpp.client_credentials()
    body = {
        "Data": {
            "Permissions": ["ReadAccountsDetail"],
            "ExpirationDateTime": "2099-01-01T00:00:00+00:00",
            **data,
        },
        "Risk": {},
    }
    before = consent_rows(store)
    refused = tpp.call("POST", CONSENTS, token=token, json=body)
    assert refused.status_code == status
    assert refused.get_json()["Errors"][0]["ErrorCode"] == code
    assert consent_rows(store) == before


def test_consent_request_needs_a_token_and_a_certificate(tpp, store):
    body = {"Data": {"Permissions": ["ReadAccountsDetail"]}, "Risk": {}}
    before = consent_rows(store)
    no_token = tpp.call("POST", CONSENTS, json=body)
    assert no_token.status_code == 401
    assert no_token.get_json()["error"] == "invalid_token"
    no_cert = tpp.call("POST", CONSENTS, token=tpp.client_credentials(), json=body, cert=False)
    assert no_cert.status_code == 401
    assert no_cert.get_json()["error"] == "invalid_client"
    assert consent_rows(store) == before


def test_consent_of_another_client_is_not_found(tpp, ec_tpp):
    consent_id = tpp.create_consent()
    other = ec_tpp.client_credentials()
    read = ec_tpp.call("GET", f"{CONSENTS}/{consent_id}", token=other)
    assert read.status_code == 404
    assert read.get_json()["Errors"][0]["ErrorCode"] == "UK.OBIE.Resource.NotFound"
    deleted = ec_tpp.call("DELETE", f"{CONSENTS}/{consent_id}", token=other)
    assert deleted.status_code == 404
    assert tpp.consent_status(consent_id) == "AwaitingAuthorisation"


# -- /authorize: refusals are pages that say why, never redirects ---------------------------------


def _none_signed(claims: dict[str, Any]) -> str:
    def b64(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


REFUSALS = {
    "another-key": "signature does not verify with the keys the Directory publishes",
    "rs256": "signed with RS256, not with the algorithm this TPP registered (PS256)",
    "es256": "signed with ES256, not with the algorithm this TPP registered (PS256)",
    "alg-none": "not signed (alg none)",
    "redirect-not-registered": "redirect URI of the request object is not one the TPP registered",
    "lifetime-over-an-hour": "lifetime (exp - nbf) is over 60 minutes",
    "expired": "request object has expired",
    "client-id-mismatch": "client_id of the request does not match the client_id inside",
    "unknown-consent": "consent named in the request is unknown to this bank",
    "another-clients-consent": "consent named in the request is unknown to this bank",
    "no-request-object": "accepts only authorization requests signed by the TPP",
    "audience": "meant for another bank",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_authorize_refusals_are_pages(case, bank, tpp, ec_tpp, ec_software, store):
    consent_id = tpp.create_consent()
    claims = tpp.request_claims(consent_id)
    now = int(time.time())
    kwargs: dict[str, Any] = {}
    if case == "another-key":
        stranger = jwk.JWK.generate(kty="RSA", size=2048, kid=tpp.software.signing_key["kid"])
        kwargs["key"] = stranger
    elif case == "rs256":
        kwargs["alg"] = "RS256"
    elif case == "es256":
        kwargs.update(key=ec_software.signing_key, alg="ES256")
    elif case == "alg-none":
        kwargs["request_object"] = _none_signed(claims)
    elif case == "redirect-not-registered":
        claims["redirect_uri"] = "https://attacker.example/cb"
    elif case == "lifetime-over-an-hour":
        claims.update(nbf=now, exp=now + 3601)
    elif case == "expired":
        claims.update(nbf=now - 600, iat=now - 600, exp=now - 300)
    elif case == "client-id-mismatch":
        claims["client_id"] = ec_tpp.client_id  # signed by tpp, for tpp's query
    elif case == "unknown-consent":
        claims["claims"]["id_token"]["openbanking_intent_id"]["value"] = "urn-anybank-intent-nope"
    elif case == "another-clients-consent":
        theirs = ec_tpp.create_consent()
        claims["claims"]["id_token"]["openbanking_intent_id"]["value"] = theirs
    elif case == "no-request-object":
        kwargs["request_object"] = ""
    elif case == "audience":
        claims["aud"] = "https://another-bank.example"
    browser = Browser(bank)
    response = browser.get(tpp.authorize_query(claims, **kwargs))
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert response.mimetype == "text/html"
    assert REFUSALS[case] in browser.page.replace("&#39;", "'")
    assert tpp.consent_status(consent_id) == "AwaitingAuthorisation"
    # nothing pending: the sign-in page has no request to go on with
    assert browser.get("/sign-in").status_code == 400
    assert "There is no request from a TPP in progress" in browser.page


def test_authorize_escapes_what_it_echoes(bank, tpp):
    consent_id = "<script>alert(1)</script>"
    claims = tpp.request_claims(consent_id)
    browser = Browser(bank)
    assert browser.get(tpp.authorize_query(claims)).status_code == 400
    assert "<script>" not in browser.page


# -- sign-in and consent pages -------------------------------------------------------------------


def test_sign_in_with_a_wrong_password_stays_on_the_page(bank, tpp, store):
    consent_id = tpp.create_consent()
    browser = Browser(bank)
    browser.start(tpp.authorize_query(tpp.request_claims(consent_id)))
    assert "Budget Buddy" in browser.page
    assert "sandbox" in browser.page.lower()
    refused = browser.sign_in(password="guess")
    assert refused.status_code == 401
    assert "The user name or password is wrong." in browser.page
    assert browser.get("/consent").status_code == 303  # not signed in: back to sign-in
    assert tpp.consent_status(consent_id) == "AwaitingAuthorisation"


def test_consent_page_shows_the_tpp_permissions_and_accounts(bank, tpp):
    consent_id = tpp.create_consent(permissions=("ReadAccountsDetail", "ReadBalances"))
    browser = Browser(bank)
    browser.start(tpp.authorize_query(tpp.request_claims(consent_id)))
    assert browser.sign_in().status_code == 303
    assert browser.get("/consent").status_code == 200
    page = browser.page
    assert "Budget Buddy" in page and "Sandbox TPP Ltd" in page
    assert "https://tpp.example.com/logo.png" in page
    assert "See your account numbers and sort codes" in page
    assert "See your account balances" in page
    assert page.count('type="checkbox" name="account"') == 3
    assert browser.http.get("/consent", base_url=ISSUER).headers["Cache-Control"] == "no-store"


def test_forms_need_their_csrf_token(bank, tpp):
    consent_id = tpp.create_consent()
    browser = Browser(bank)
    browser.start(tpp.authorize_query(tpp.request_claims(consent_id)))
    forged = browser.post("/sign-in", {"user": "mits", "password": "sandbox"}, csrf=False)
    assert forged.status_code == 400
    assert browser.get("/consent").status_code == 303  # still not signed in
    browser.get("/sign-in")
    assert browser.sign_in().status_code == 303
    browser.get("/consent")
    forged = browser.post(
        "/consent", {"decision": "approve", "account": "22289", "csrf_token": "x"}, csrf=False
    )
    assert forged.status_code == 400
    assert tpp.consent_status(consent_id) == "AwaitingAuthorisation"


def test_approve_needs_an_account_of_the_customer(bank, tpp):
    consent_id = tpp.create_consent()
    browser = Browser(bank)
    browser.start(tpp.authorize_query(tpp.request_claims(consent_id)))
    browser.sign_in(user="sam")
    assert browser.decide("approve", ()).status_code == 400
    assert "Choose at least one account." in browser.page
    assert browser.decide("approve", ("22289",)).status_code == 400  # mits's, not sam's
    assert tpp.consent_status(consent_id) == "AwaitingAuthorisation"


def test_deny_sends_access_denied_and_rejects_the_consent(bank, tpp):
    consent_id = tpp.create_consent()
    claims = tpp.request_claims(consent_id)
    browser = Browser(bank)
    browser.start(tpp.authorize_query(claims))
    browser.sign_in()
    answer = fragment(browser.decide("deny"))
    assert answer["error"] == "access_denied"
    assert answer["error_description"]
    assert answer["state"] == claims["state"]
    assert "code" not in answer and "id_token" not in answer
    assert tpp.consent_status(consent_id) == "Rejected"
    # a decided consent cannot be authorised again
    again = Browser(bank)
    assert again.get(tpp.authorize_query(tpp.request_claims(consent_id))).status_code == 400
    assert "not awaiting authorisation (it is Rejected)" in again.page


# -- approve, the code, the tokens, the accounts ---------------------------------------------------


@pytest.mark.parametrize("client", ["tpp", "ec_tpp"])
def test_approve_then_exchange_the_code(client, request, bank):
    tpp: TPP = request.getfixturevalue(client)
    journey = approved(bank, tpp)
    answer, claims, consent_id = journey["fragment"], journey["claims"], journey["consent_id"]
    assert answer["state"] == claims["state"]
    header, id_token = verify_with_bank_jwks(bank, answer["id_token"])
    assert header["alg"] == tpp.software.signing_alg  # the registered id_token alg
    assert id_token["iss"] == ISSUER
    assert id_token["aud"] == tpp.client_id
    assert id_token["sub"] == id_token["openbanking_intent_id"] == consent_id
    assert id_token["nonce"] == claims["nonce"]
    assert id_token["acr"] == ACR_SCA
    assert id_token["c_hash"] == half_hash(answer["code"])
    assert id_token["s_hash"] == half_hash(claims["state"])
    assert id_token["exp"] > id_token["iat"] >= id_token["auth_time"] - 1
    assert tpp.consent_status(consent_id) == "Authorised"

    issued = exchange(tpp, answer["code"])
    assert issued.status_code == 200, issued.get_data(as_text=True)
    tokens = issued.get_json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["scope"] == "openid accounts"
    assert tokens["expires_in"] > 0
    assert tokens["refresh_token"]
    record = bank.extensions["obdcr"].tokens.find(tokens["access_token"])
    assert record.cnf == {"x5t#S256": thumbprint(tpp.software)}
    _, second = verify_with_bank_jwks(bank, tokens["id_token"])
    assert second["sub"] == consent_id and second["nonce"] == claims["nonce"]
    assert "at_hash" in second

    accounts = tpp.call("GET", ACCOUNTS, token=tokens["access_token"])
    assert accounts.status_code == 200, accounts.get_data(as_text=True)
    shown = accounts.get_json()["Data"]["Account"]
    assert [a["AccountId"] for a in shown] == ["22289", "42281"]
    assert all(a["Account"] for a in shown)  # ReadAccountsDetail
    balance = tpp.call("GET", f"{ACCOUNTS}/42281/balances", token=tokens["access_token"])
    assert balance.status_code == 200
    assert balance.get_json()["Data"]["Balance"][0]["Amount"] == {
        "Amount": "310.27",
        "Currency": "EUR",
    }
    for not_chosen in (f"{ACCOUNTS}/31820", f"{ACCOUNTS}/31820/balances"):
        refused = tpp.call("GET", not_chosen, token=tokens["access_token"])
        assert refused.status_code == 404
        assert refused.get_json()["Errors"][0]["ErrorCode"] == "UK.OBIE.Resource.NotFound"
    # the consent API says nothing of the accounts chosen
    read = tpp.call("GET", f"{CONSENTS}/{consent_id}", token=tpp.client_credentials())
    assert "22289" not in read.get_data(as_text=True)


def test_basic_permission_hides_account_numbers_and_balances(bank, tpp):
    journey = approved(bank, tpp, accounts=("31820",), permissions=("ReadAccountsBasic",))
    token = exchange(tpp, journey["fragment"]["code"]).get_json()["access_token"]
    accounts = tpp.call("GET", ACCOUNTS, token=token).get_json()["Data"]["Account"]
    assert [a["AccountId"] for a in accounts] == ["31820"]
    assert "Account" not in accounts[0]
    refused = tpp.call("GET", f"{ACCOUNTS}/31820/balances", token=token)
    assert refused.status_code == 403
    assert refused.get_json()["Errors"][0]["ErrorCode"] == "UK.OBIE.Resource.ConsentMismatch"


def test_client_credentials_token_cannot_read_accounts(tpp):
    token = tpp.client_credentials()
    for path in (ACCOUNTS, f"{ACCOUNTS}/22289", f"{ACCOUNTS}/22289/balances"):
        refused = tpp.call("GET", path, token=token)
        assert refused.status_code == 403
        assert refused.get_json()["Errors"][0]["ErrorCode"] == "UK.OBIE.Resource.ConsentMismatch"


def test_code_is_single_use_and_a_replay_revokes_what_it_issued(bank, tpp):
    code = approved(bank, tpp)["fragment"]["code"]
    tokens = exchange(tpp, code).get_json()
    assert tpp.call("GET", ACCOUNTS, token=tokens["access_token"]).status_code == 200
    replayed = exchange(tpp, code)
    assert replayed.status_code == 400
    assert replayed.get_json()["error"] == "invalid_grant"
    revoked = tpp.call("GET", ACCOUNTS, token=tokens["access_token"])
    assert revoked.status_code == 401
    assert revoked.get_json()["error"] == "invalid_token"
    refreshed = tpp.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refreshed.status_code == 400
    assert refreshed.get_json()["error"] == "invalid_grant"


def test_code_is_bound_to_client_redirect_uri_and_time(bank, tpp, ec_tpp, store, monkeypatch):
    code = approved(bank, tpp)["fragment"]["code"]
    other = exchange(ec_tpp, code)
    assert (other.status_code, other.get_json()["error"]) == (400, "invalid_grant")
    wrong_uri = tpp.token(
        grant_type="authorization_code", code=code, redirect_uri="https://tpp.example.com/other"
    )
    assert (wrong_uri.status_code, wrong_uri.get_json()["error"]) == (400, "invalid_grant")

    late = approved(bank, tpp)["fragment"]["code"]
    monkeypatch.setattr(store, "clock", lambda: time.time() + 61)
    expired = exchange(tpp, late)
    assert (expired.status_code, expired.get_json()["error"]) == (400, "invalid_grant")


def test_code_exchange_needs_the_clients_certificate(bank, tpp):
    code = approved(bank, tpp)["fragment"]["code"]
    refused = tpp.token(
        cert=False, grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI
    )
    assert (refused.status_code, refused.get_json()["error"]) == (401, "invalid_client")


def test_refresh_gives_a_new_bound_token_for_the_same_consent(bank, directory, jwks_server):
    software = directory.register_software(roles=["AISP"], redirect_uris=[REDIRECT_URI])
    tpp = register(bank, directory, software, "tls_client_auth")
    journey = approved(bank, tpp, accounts=("31820",))
    tokens = exchange(tpp, journey["fragment"]["code"]).get_json()
    refreshed = tpp.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.get_data(as_text=True)
    fresh = refreshed.get_json()["access_token"]
    assert fresh != tokens["access_token"]
    record = bank.extensions["obdcr"].tokens.find(fresh)
    assert record.cnf == {"x5t#S256": thumbprint(software)}
    accounts = tpp.call("GET", ACCOUNTS, token=fresh).get_json()["Data"]["Account"]
    assert [a["AccountId"] for a in accounts] == ["31820"]

    # a new transport certificate of the same software authenticates the client, but the
    # refresh token stays bound to the first one
    directory.issue_transport_certificate(software)
    other_cert = tpp.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert other_cert.status_code == 400
    assert other_cert.get_json()["error"] == "invalid_grant"
    assert "another client certificate" in other_cert.get_json()["error_description"]


def test_revoked_consent_stops_accounts_and_refresh(bank, tpp):
    journey = approved(bank, tpp)
    tokens = exchange(tpp, journey["fragment"]["code"]).get_json()
    consent = f"{CONSENTS}/{journey['consent_id']}"
    deleted = tpp.call("DELETE", consent, token=tpp.client_credentials())
    assert deleted.status_code == 204
    assert tpp.consent_status(journey["consent_id"]) == "Revoked"
    refused = tpp.call("GET", ACCOUNTS, token=tokens["access_token"])
    assert refused.status_code == 403
    assert refused.get_json()["Errors"][0]["ErrorCode"] == "UK.OBIE.Resource.InvalidConsentStatus"
    refreshed = tpp.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert (refreshed.status_code, refreshed.get_json()["error"]) == (400, "invalid_grant")


def test_expired_consent_stops_accounts(bank, tpp, store, monkeypatch):
    journey = approved(bank, tpp)
    token = exchange(tpp, journey["fragment"]["code"]).get_json()["access_token"]
    assert tpp.call("GET", ACCOUNTS, token=token).status_code == 200
    monkeypatch.setattr(store, "clock", lambda: time.time() + 31 * 86400)
    refused = tpp.call("GET", ACCOUNTS, token=token)
    assert refused.status_code == 403
    assert refused.get_json()["Errors"][0]["ErrorCode"] == "UK.OBIE.Resource.InvalidConsentStatus"


def test_a_consent_is_authorised_once(bank, tpp):
    journey = approved(bank, tpp)
    browser = Browser(bank)
    claims = tpp.request_claims(journey["consent_id"])
    assert browser.get(tpp.authorize_query(claims)).status_code == 400
    assert "it is Authorised" in browser.page


# -- the pages in a real browser -------------------------------------------------------------------


def test_the_customer_journey_in_a_browser(browser, bank, tpp, directory):
    from flask_obdcr.testing.loopback import LoopbackServer
    from flask_obdcr.testing.server import server_ssl_context

    consent_id = tpp.create_consent(permissions=("ReadAccountsDetail", "ReadBalances"))
    claims = tpp.request_claims(consent_id)
    context, _certificate = server_ssl_context(directory.issuing_ca)
    with LoopbackServer(bank, ssl_context=context, quiet=True) as server:
        browser.get(server.url.rstrip("/") + tpp.authorize_query(claims))
        browser.wait_for("#sign-in")
        assert "Budget Buddy" in browser.text("#tpp-name")
        browser.screenshot("bank-sign-in")
        browser.fill("#user", "mits")
        browser.fill("#password", "wrong")
        browser.click("#sign-in")
        browser.wait_for("#sign-in-error")  # the page after the POST, not the one before
        assert "wrong" in browser.text("#sign-in-error")
        browser.fill("#password", "sandbox")
        browser.click("#sign-in")
        browser.wait_for("#approve")
        assert "See your account balances" in browser.text("#permissions")
        browser.click('input[value="22289"]')
        browser.screenshot("bank-consent")
        browser.click("#approve")
        url = browser.wait_for_url("#code=")
    answer = {k: v[0] for k, v in parse_qs(urlsplit(url).fragment).items()}
    assert url.startswith(REDIRECT_URI + "#")
    assert answer["state"] == claims["state"]
    assert tpp.consent_status(consent_id) == "Authorised"
