"""Using the credentials: the OB conformance flows against an Authlib token endpoint.

register -> client_credentials token (each auth method) -> GET -> PUT -> DELETE -> the old
token refused; and the ways a client assertion or a bound token must be refused.
"""

from __future__ import annotations

import base64

import pytest
from authlib.integrations.flask_oauth2 import AuthorizationServer
from jwcrypto import jwk

from flask_obdcr.testing import REMOVE, sign_jwt
from flask_obdcr.testing.fixtures import ISSUER

BASE = "https://localhost"
TOKEN_URL = f"{ISSUER}/token"  # the configured token endpoint (OBDCR_ISSUER + /token)


def register(http, directory, software, issuer, method="private_key_jwt", **claims):
    body = directory.registration_request(
        software, aud=issuer, token_endpoint_auth_method=method, **claims
    )
    response = http.post(
        "/register",
        data=body,
        content_type="application/jwt",
        environ_base=software.environ(),
        base_url=BASE,
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def get_token(http, software, registration, *, scope=None, environ=None, assertion=None, **form):
    method = registration["token_endpoint_auth_method"]
    data = {"grant_type": "client_credentials", **form}
    if scope is not None:
        data["scope"] = scope
    headers = {}
    if method == "tls_client_auth":
        data.setdefault("client_id", registration["client_id"])
    elif method == "private_key_jwt":
        data["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        data["client_assertion"] = assertion or software.client_assertion(
            registration["client_id"], aud=TOKEN_URL
        )
    elif method == "client_secret_basic":
        pair = f"{registration['client_id']}:{registration['client_secret']}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return http.post(
        "/token",
        data=data,
        headers=headers,
        base_url=BASE,
        environ_base=software.environ() if environ is None else environ,
    )


def manage(http, method, client_id, token, software, *, data=None, environ=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    kwargs = {"data": data, "content_type": "application/jwt"} if data is not None else {}
    return http.open(
        f"/register/{client_id}",
        method=method,
        headers=headers,
        base_url=BASE,
        environ_base=software.environ() if environ is None else environ,
        **kwargs,
    )


def assert_invalid_token(response):
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_token"
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


@pytest.mark.parametrize("method", ["tls_client_auth", "private_key_jwt", "client_secret_basic"])
def test_conformance_flow(method, http, bank, store, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer, method)
    client_id = registration["client_id"]

    token_response = get_token(http, ob_software, registration)
    assert token_response.status_code == 200, token_response.get_json()
    token = token_response.get_json()["access_token"]
    record = bank.dcr.tokens.find(token)
    assert record.client_id == client_id
    assert record.cnf is not None  # issued over mTLS: bound to the certificate

    read = manage(http, "GET", client_id, token, ob_software)
    assert read.status_code == 200, read.get_json()
    once = {"client_secret", "client_secret_expires_at", "registration_access_token"}
    assert read.get_json() == {k: v for k, v in registration.items() if k not in once}

    new_body = ob_directory.registration_request(
        ob_software,
        aud=issuer,
        token_endpoint_auth_method=method,
        redirect_uris=[ob_software.redirect_uris[0]],
    )
    updated = manage(http, "PUT", client_id, token, ob_software, data=new_body)
    assert updated.status_code == 200, updated.get_json()
    assert updated.get_json()["redirect_uris"] == [ob_software.redirect_uris[0]]
    assert store.get(client_id).metadata["redirect_uris"] == [ob_software.redirect_uris[0]]
    assert updated.get_json()["client_id"] == client_id

    deleted = manage(http, "DELETE", client_id, token, ob_software)
    assert deleted.status_code == 204
    assert deleted.get_data() == b""
    assert store.get(client_id) is None
    assert bank.dcr.tokens.find(token) is None

    assert_invalid_token(manage(http, "GET", client_id, token, ob_software))
    assert_invalid_token(manage(http, "PUT", client_id, token, ob_software, data=new_body))


def test_token_with_empty_scope_and_assertion_without_kid(http, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer)
    assertion = ob_software.client_assertion(
        registration["client_id"], aud=TOKEN_URL, headers={"kid": REMOVE}
    )
    assert '"kid"' not in base64.urlsafe_b64decode(assertion.split(".")[0] + "==").decode()
    response = get_token(http, ob_software, registration, scope="", assertion=assertion)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["token_type"].lower() == "bearer"


def test_bound_token_with_another_certificate_is_refused(
    http, bank, ob_directory, ob_software, ob_ec_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer)
    token = get_token(http, ob_software, registration, scope="accounts").get_json()["access_token"]
    ok = http.get(
        "/accounts",
        headers={"Authorization": f"Bearer {token}"},
        environ_base=ob_software.environ(),
        base_url=BASE,
    )
    assert ok.status_code == 200
    assert ok.get_json() == {"Data": {"Account": [{"AccountId": "22289"}]}}
    for environ in (ob_ec_software.environ(), {}):
        refused = http.get(
            "/accounts",
            headers={"Authorization": f"Bearer {token}"},
            environ_base=environ,
            base_url=BASE,
        )
        assert_invalid_token(refused)
    # and the management endpoints refuse it too (and revoke it)
    assert_invalid_token(manage(http, "GET", registration["client_id"], token, ob_ec_software))
    assert bank.dcr.tokens.find(token) is None


def test_scope_is_enforced_by_the_resource_helper(http, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer)
    token = get_token(http, ob_software, registration, scope="payments").get_json()["access_token"]
    response = http.get(
        "/accounts",
        headers={"Authorization": f"Bearer {token}"},
        environ_base=ob_software.environ(),
        base_url=BASE,
    )
    assert response.status_code == 403
    assert response.get_json()["error"] == "insufficient_scope"


@pytest.mark.parametrize(
    "scope,beyond",
    [
        pytest.param("payments", "payments", id="not-registered"),
        pytest.param("accounts payments", "payments", id="partly-registered"),
        pytest.param(
            "fundsconfirmations accounts payments", "fundsconfirmations payments", id="two"
        ),
    ],
)
def test_a_scope_the_client_did_not_register_is_invalid_scope(
    scope, beyond, http, bank, ob_directory, ob_ec_software, issuer
):
    # an AISP: registered for openid and accounts only
    registration = register(http, ob_directory, ob_ec_software, issuer)
    assert registration["scope"] == "openid accounts"
    response = get_token(http, ob_ec_software, registration, scope=scope)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json() == {
        "error": "invalid_scope",
        "error_description": f"The client is not registered for scope '{beyond}' (registered:"
        " 'openid accounts'); ask for those only, or update the registration (PUT"
        " /register/<client_id>).",
    }
    assert "no-store" in response.headers["Cache-Control"]
    assert bank.dcr.tokens.revoke_client(registration["client_id"]) == 0  # none was issued


@pytest.mark.parametrize(
    "scope,granted",
    [
        pytest.param("accounts", "accounts", id="one"),
        pytest.param("accounts openid accounts", "accounts openid", id="repeated"),
        pytest.param(None, "", id="none-asked"),
    ],
)
def test_the_scope_asked_for_is_granted_and_none_when_none_is_asked(
    scope, granted, http, bank, ob_directory, ob_ec_software, issuer
):
    registration = register(http, ob_directory, ob_ec_software, issuer)
    response = get_token(http, ob_ec_software, registration, scope=scope)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body.get("scope", "") == granted
    assert bank.dcr.tokens.find(body["access_token"]).scope == granted


def test_a_token_presented_with_another_certificate_is_revoked_and_says_so(
    http, bank, ob_directory, ob_software, ob_ec_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer)
    client_id = registration["client_id"]
    token = get_token(http, ob_software, registration).get_json()["access_token"]
    response = manage(http, "GET", client_id, token, ob_ec_software)
    description = (
        "The access token is bound to another certificate. It has been revoked: fetch a new one"
        " from the token endpoint (client_credentials) and present it with the certificate it"
        " is bound to."
    )
    assert response.status_code == 401
    assert response.get_json() == {"error": "invalid_token", "error_description": description}
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{description}"'
    )
    assert bank.dcr.tokens.find(token) is None
    # revoked for good, even with the right certificate; a new token works
    assert_invalid_token(manage(http, "GET", client_id, token, ob_software))
    fresh = get_token(http, ob_software, registration).get_json()["access_token"]
    assert manage(http, "GET", client_id, fresh, ob_software).status_code == 200


def test_a_token_of_another_client_is_revoked_and_says_so(
    http, bank, ob_directory, ob_software, issuer
):
    mine = register(http, ob_directory, ob_software, issuer)
    theirs = register(http, ob_directory, ob_software, issuer)
    token = get_token(http, ob_software, theirs).get_json()["access_token"]
    response = manage(http, "GET", mine["client_id"], token, ob_software)
    assert_invalid_token(response)
    assert response.get_json()["error_description"] == (
        "The access token was not issued to this client. It has been revoked: fetch a new one"
        " from the token endpoint (client_credentials) and present it with the certificate it"
        " is bound to."
    )
    assert bank.dcr.tokens.find(token) is None


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer ", "Basic abc", "Bearer nope"],
    ids=["none", "bearer-empty", "bearer-space", "basic", "unknown"],
)
def test_management_without_a_valid_token(
    authorization, http, store, ob_directory, ob_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer)
    headers = {"Authorization": authorization} if authorization is not None else {}
    before = store.get(registration["client_id"])
    for method in ("GET", "PUT", "DELETE"):
        response = http.open(
            f"/register/{registration['client_id']}",
            method=method,
            headers=headers,
            environ_base=ob_software.environ(),
            base_url=BASE,
        )
        assert_invalid_token(response)
    assert store.get(registration["client_id"]) == before


def test_token_of_another_client_is_refused_and_revoked(
    http, bank, store, ob_directory, ob_software, issuer
):
    mine = register(http, ob_directory, ob_software, issuer)
    theirs = register(http, ob_directory, ob_software, issuer)
    token = get_token(http, ob_software, theirs).get_json()["access_token"]
    assert_invalid_token(manage(http, "DELETE", mine["client_id"], token, ob_software))
    assert store.get(mine["client_id"]) is not None
    assert bank.dcr.tokens.find(token) is None


def test_unknown_client_is_401(http, bank, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer)
    token = get_token(http, ob_software, registration).get_json()["access_token"]
    assert_invalid_token(
        manage(http, "GET", "00000000-0000-4000-8000-000000000000", token, ob_software)
    )
    assert bank.dcr.tokens.find(token) is None


def test_registration_access_token_rfc7592(http, store, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer)
    rat = registration["registration_access_token"]
    response = manage(http, "GET", registration["client_id"], rat, ob_software)
    assert response.status_code == 200
    assert response.get_json()["client_id"] == registration["client_id"]
    # with a certificate of another software, it is refused
    other = ob_directory.register_software(roles=["AISP"])
    assert_invalid_token(manage(http, "GET", registration["client_id"], rat, other))
    # without a certificate at all: 401 invalid_client
    response = manage(http, "GET", registration["client_id"], rat, ob_software, environ={})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_management_read_with_the_store_down_is_503(
    http, store, monkeypatch, ob_directory, ob_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer)
    rat = registration["registration_access_token"]

    def down(client_id):
        raise ConnectionError("database unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(store, "get", down)
        response = manage(http, "GET", registration["client_id"], rat, ob_software)
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.get_json()["error"] == "temporarily_unavailable"
    assert response.headers["Cache-Control"] == "no-store"
    assert manage(http, "GET", registration["client_id"], rat, ob_software).status_code == 200


def test_delete_keeps_everything_when_tokens_cannot_be_revoked(
    http, bank, store, monkeypatch, ob_directory, ob_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer)
    token = get_token(http, ob_software, registration).get_json()["access_token"]
    client_id = registration["client_id"]

    def down(client_id):
        raise ConnectionError("token store unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(bank.extensions["obdcr"].tokens, "revoke_client", down)
        response = manage(http, "DELETE", client_id, token, ob_software)
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.get_json()["error"] == "temporarily_unavailable"
    assert store.get(client_id) is not None  # nothing half-done: the client is still there
    assert manage(http, "GET", client_id, token, ob_software).status_code == 200
    assert manage(http, "DELETE", client_id, token, ob_software).status_code == 204
    assert store.get(client_id) is None
    assert_invalid_token(manage(http, "GET", client_id, token, ob_software))


def test_put_cannot_move_client_to_another_software(
    http, store, ob_directory, ob_software, ob_ec_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer)
    token = get_token(http, ob_software, registration).get_json()["access_token"]
    before = store.get(registration["client_id"])
    other_body = ob_directory.registration_request(ob_ec_software, aud=issuer)
    response = manage(http, "PUT", registration["client_id"], token, ob_software, data=other_body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert store.get(registration["client_id"]) == before


def _assertion_cases(software, client_id, secret):
    hs_key = jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="))
    foreign = jwk.JWK.generate(kty="RSA", size=2048)
    return {
        "expired": software.client_assertion(client_id, aud=TOKEN_URL, iat=0, exp=1),
        "foreign-key": software.client_assertion(client_id, aud=TOKEN_URL, key=foreign),
        "foreign-key-same-kid": software.client_assertion(
            client_id,
            aud=TOKEN_URL,
            key=jwk.JWK(
                **{**foreign.export_private(as_dict=True), "kid": software.signing_key["kid"]}
            ),
        ),
        "hs256-with-client-secret": sign_jwt(
            {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "jti": "x", "exp": 2**31},
            hs_key,
            alg="HS256",
        ),
        "wrong-audience": software.client_assertion(client_id, aud="https://elsewhere"),
        "sub-not-client": software.client_assertion(client_id, aud=TOKEN_URL, sub="someone"),
        "no-exp": software.client_assertion(client_id, aud=TOKEN_URL, exp=REMOVE),
        "rs256": software.client_assertion(client_id, aud=TOKEN_URL, alg="RS256"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "foreign-key",
        "foreign-key-same-kid",
        "hs256-with-client-secret",
        "wrong-audience",
        "sub-not-client",
        "no-exp",
        "rs256",
    ],
)
def test_bad_client_assertions_are_invalid_client(
    case, http, bank, ob_directory, ob_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer)
    # a secret to abuse for HS256: a client_secret_basic client of the same software
    secret = register(http, ob_directory, ob_software, issuer, "client_secret_basic")[
        "client_secret"
    ]
    assertion = _assertion_cases(ob_software, registration["client_id"], secret)[case]
    response = get_token(http, ob_software, registration, assertion=assertion)
    assert response.status_code in (400, 401), response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_client"
    assert "access_token" not in response.get_json()


def test_replayed_client_assertion_is_invalid_client(http, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer)
    assertion = ob_software.client_assertion(registration["client_id"], aud=TOKEN_URL)
    # client_id in the form as well, as many TPPs send it: the assertion still decides
    first = get_token(
        http, ob_software, registration, assertion=assertion, client_id=registration["client_id"]
    )
    assert first.status_code == 200
    replay = get_token(
        http, ob_software, registration, assertion=assertion, client_id=registration["client_id"]
    )
    assert replay.status_code == 401
    assert replay.get_json() == {
        "error": "invalid_client",
        "error_description": "The client assertion has been used before.",
    }


def test_tls_client_auth_with_a_foreign_certificate(
    http, ob_directory, ob_software, issuer, ob_ec_software
):
    registration = register(http, ob_directory, ob_software, issuer, "tls_client_auth")
    for environ in (ob_ec_software.environ(), {}):
        response = get_token(http, ob_software, registration, environ=environ)
        assert response.status_code in (400, 401)
        assert response.get_json()["error"] == "invalid_client"


def test_wrong_client_secret(http, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer, "client_secret_basic")
    registration["client_secret"] += "x"
    response = get_token(http, ob_software, registration)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_discovery_metadata(bank):
    with bank.test_request_context("/.well-known/openid-configuration", base_url=BASE):
        metadata = bank.dcr.discovery_metadata()
    # from OBDCR_ISSUER, not from the request's host (docs/architecture.md, "Contract: tokens,
    # published URLs and keys")
    assert metadata["registration_endpoint"] == f"{ISSUER}/register"
    assert metadata["token_endpoint"] == TOKEN_URL
    assert "mtls_endpoint_aliases" not in metadata
    assert metadata["token_endpoint_auth_methods_supported"][0] == "tls_client_auth"
    for key in (
        "token_endpoint_auth_signing_alg_values_supported",
        "request_object_signing_alg_values_supported",
        "id_token_signing_alg_values_supported",
    ):
        assert metadata[key][0] == "PS256"
        assert "none" not in metadata[key]
    assert metadata["response_types_supported"] == ["code", "code id_token"]
    assert metadata["tls_client_certificate_bound_access_tokens"] is True


def test_update_and_delete_send_signals(http, bank, ob_directory, ob_software, issuer):
    from flask_obdcr.signals import client_deleted, client_updated

    registration = register(http, ob_directory, ob_software, issuer)
    client_id = registration["client_id"]
    token = get_token(http, ob_software, registration).get_json()["access_token"]
    seen = []
    with (
        client_updated.connected_to(
            lambda app, **kw: seen.append(
                ("updated", kw["client"].client_id, kw["previous"].client_id)
            ),
            bank,
        ),
        client_deleted.connected_to(
            lambda app, **kw: seen.append(("deleted", kw["client"].client_id)), bank
        ),
    ):
        body = ob_directory.registration_request(ob_software, aud=issuer)
        assert manage(http, "PUT", client_id, token, ob_software, data=body).status_code == 200
        assert manage(http, "DELETE", client_id, token, ob_software).status_code == 204
    assert seen == [("updated", client_id, client_id), ("deleted", client_id)]


def readme_bank(instance, directory, issuer, **config):
    """The README's 'Add it to your Authlib server' block, as a bank would type it (``config``
    added to the sandbox's settings): the app and its extension."""
    from flask import Flask

    from flask_obdcr import OpenBankingDCR

    app = Flask(__name__, instance_path=str(instance))
    app.config.update(directory.app_config(instance.parent / "ca.pem", issuer=issuer), **config)
    dcr = OpenBankingDCR(app, jwks_fetcher=directory.fetcher)
    server = AuthorizationServer(app, query_client=dcr.query_client, save_token=dcr.save_token)
    dcr.configure_authorization_server(server)
    app.add_url_rule("/token", "token", server.create_token_response, methods=["POST"])
    return app, dcr


def test_readme_quickstart_wires_an_authlib_server(tmp_path, ob_directory, ob_software, issuer):
    """The README's 'Add it to your Authlib server' block, as a bank would type it."""
    app, dcr = readme_bank(tmp_path / "instance", ob_directory, issuer)
    http = app.test_client()
    registration = register(http, ob_directory, ob_software, issuer, "tls_client_auth")
    response = get_token(http, ob_software, registration)
    assert response.status_code == 200, response.get_json()
    # the default store is SQLite in the instance folder, tokens beside the clients
    assert (tmp_path / "instance" / "obdcr.db").exists()
    with app.app_context():
        assert dcr.store.get(registration["client_id"]).software_id == ob_software.software_id
        assert (
            dcr.tokens.find(response.get_json()["access_token"]).client_id
            == (registration["client_id"])
        )


def test_token_strings_are_256_random_bits_unless_the_bank_chose_its_own(
    tmp_path, ob_directory, ob_software, issuer
):
    """Authlib's default token strings (a character at a time from SystemRandom) are replaced
    by one secrets.token_urlsafe(32); a generator the bank configured is kept. Fails if
    Authlib's default moves and is no longer recognised (the strings would be 42 characters)."""
    import re

    def bank(name, **config):
        app, dcr = readme_bank(tmp_path / name, ob_directory, issuer, **config)
        http = app.test_client()
        registration = register(http, ob_directory, ob_software, issuer, "tls_client_auth")
        tokens = [get_token(http, ob_software, registration).get_json() for _ in range(3)]
        return [t["access_token"] for t in tokens], dcr, app

    strings, dcr, app = bank("default")
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", s) for s in strings), strings
    assert len(set(strings)) == 3
    with app.app_context():
        assert all(dcr.tokens.find(s) is not None for s in strings)

    own = f"{__name__}.bank_chosen_token"
    strings, _, _ = bank("own", OAUTH2_ACCESS_TOKEN_GENERATOR=own)
    assert [s.startswith("bank-chosen-") for s in strings] == [True] * 3


_BANK_CHOSEN = iter(range(10**6))


def bank_chosen_token(*_args, **_kwargs):
    return f"bank-chosen-{next(_BANK_CHOSEN)}"
