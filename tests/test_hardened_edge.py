"""The edge after registration (issue "hardened edge"; docs/architecture.md, "Contract: tokens,
published URLs and keys"): exact audiences, sender-constrained tokens, configured lifetimes,
published URLs from configuration, the clientAuth usage, escaped logs, and a 204 without a body
type.

Each test is a defect found from outside; each fails on the code before the fix.
"""

from __future__ import annotations

import base64
import logging

import pytest
from test_authlib_server import BASE, TOKEN_URL, get_token, manage, register

from flask_obdcr.testing.pki import pem

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OTHER_BANK = "https://other-bank.example"


def assert_invalid_client(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_client"


def assert_no_token(bank, client_id: str) -> None:
    # nothing issued: revoking the client's tokens finds none
    assert bank.dcr.tokens.revoke_client(client_id) == 0


def assertion_request(http, software, client_id, assertion, *, environ=None, base_url=BASE):
    return http.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        base_url=base_url,
        environ_base=software.environ() if environ is None else environ,
    )


# -- 1. a client assertion made for another bank -----------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "headers"),
    [
        pytest.param(OTHER_BANK, {}, id="host-header"),
        pytest.param(BASE, {"X-Forwarded-Host": "other-bank.example"}, id="x-forwarded-host"),
    ],
)
def test_assertion_for_another_bank_is_refused(
    http, bank, ob_directory, ob_software, issuer, base_url, headers
):
    client_id = register(http, ob_directory, ob_software, issuer)["client_id"]
    # the victim's assertion, captured on its way to another bank's token endpoint
    stolen = ob_software.client_assertion(client_id, aud=f"{OTHER_BANK}/token")
    response = http.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": stolen,
        },
        headers=headers,
        base_url=base_url,
        environ_base=ob_software.environ(),
    )
    assert_invalid_client(response)
    assert_no_token(bank, client_id)


@pytest.mark.parametrize(
    "bank",
    [{"OBDCR_AUDIENCES": ["0015800001041REAAY"]}],
    indirect=True,
)
@pytest.mark.parametrize(
    "aud",
    [
        pytest.param("https://as.sandbox-bank.test", id="issuer"),
        pytest.param(TOKEN_URL, id="token-endpoint-default"),
        pytest.param("0015800001041REAAY", id="configured-audience"),
        pytest.param(["https://x.example", TOKEN_URL], id="list-holding-token-endpoint"),
    ],
)
def test_assertion_audiences_from_configuration(http, bank, ob_directory, ob_software, aud):
    client_id = register(http, ob_directory, ob_software, bank.dcr.settings.issuer)["client_id"]
    assertion = ob_software.client_assertion(client_id, aud=aud)
    response = assertion_request(http, ob_software, client_id, assertion)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize(
    "bank", [{"OBDCR_TOKEN_ENDPOINT": "https://mtls.sandbox-bank.test/oauth2/token"}], indirect=True
)
def test_configured_token_endpoint_is_an_audience(http, bank, ob_directory, ob_software, issuer):
    client_id = register(http, ob_directory, ob_software, issuer)["client_id"]
    ok = ob_software.client_assertion(client_id, aud="https://mtls.sandbox-bank.test/oauth2/token")
    assert assertion_request(http, ob_software, client_id, ok).status_code == 200
    # the default no longer applies once another endpoint is configured
    default = ob_software.client_assertion(client_id, aud=TOKEN_URL)
    assert_invalid_client(assertion_request(http, ob_software, client_id, default))


# -- 2. sender-constrained tokens ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["private_key_jwt", "client_secret_basic", "tls_client_auth"])
def test_no_token_without_mutual_tls(http, bank, ob_directory, ob_software, issuer, method):
    registration = register(http, ob_directory, ob_software, issuer, method)
    response = get_token(http, ob_software, registration, environ={})
    assert_invalid_client(response)
    assert_no_token(bank, registration["client_id"])


@pytest.mark.parametrize("method", ["private_key_jwt", "client_secret_basic"])
def test_no_token_with_another_tpps_certificate(
    http, bank, ob_directory, ob_software, ob_ec_software, issuer, method
):
    registration = register(http, ob_directory, ob_software, issuer, method)
    # a trusted certificate, but of another software
    response = get_token(http, ob_software, registration, environ=ob_ec_software.environ())
    assert_invalid_client(response)
    assert_no_token(bank, registration["client_id"])


def test_no_token_with_an_untrusted_certificate(http, bank, ob_directory, ob_software, issuer):
    from flask_obdcr.testing import SandboxDirectory

    registration = register(http, ob_directory, ob_software, issuer, "client_secret_basic")
    # same subject as the real one, from a CA the bank does not trust
    stranger = SandboxDirectory().register_software(
        software_id=ob_software.software_id, org_id=ob_software.org_id
    )
    response = get_token(http, ob_software, registration, environ=stranger.environ())
    assert_invalid_client(response)
    assert_no_token(bank, registration["client_id"])


@pytest.mark.parametrize("method", ["private_key_jwt", "client_secret_basic", "tls_client_auth"])
def test_every_token_is_bound_to_the_clients_certificate(
    http, bank, ob_directory, ob_software, issuer, method
):
    registration = register(http, ob_directory, ob_software, issuer, method)
    response = get_token(http, ob_software, registration)
    assert response.status_code == 200, response.get_json()
    record = bank.dcr.tokens.find(response.get_json()["access_token"])
    assert (
        record.x5t_s256
        == bank.dcr.certificates.verify(ob_software.transport_certificate).thumbprint
    )


def test_require_token_refuses_an_unbound_token(http, bank, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer)
    now = int(bank.dcr.registrar.clock())
    bank.dcr.tokens.save(
        "unbound-token",
        client_id=registration["client_id"],
        scope="accounts",
        issued_at=now,
        expires_at=now + 600,
        x5t_s256=None,
    )
    for environ in (ob_software.environ(), {}):
        response = http.get(
            "/accounts",
            headers={"Authorization": "Bearer unbound-token"},
            environ_base=environ,
            base_url=BASE,
        )
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_token"


def test_require_token_refuses_a_bound_token_without_its_certificate(
    http, bank, ob_directory, ob_software, ob_ec_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer)
    token = get_token(http, ob_software, registration, scope="accounts").get_json()["access_token"]
    for environ in ({}, ob_ec_software.environ()):
        response = http.get(
            "/accounts",
            headers={"Authorization": f"Bearer {token}"},
            environ_base=environ,
            base_url=BASE,
        )
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_token"
    ok = http.get(
        "/accounts",
        headers={"Authorization": f"Bearer {token}"},
        environ_base=ob_software.environ(),
        base_url=BASE,
    )
    assert ok.status_code == 200


@pytest.mark.parametrize("bank", [{"OBDCR_CERTIFICATE_BOUND_TOKENS": False}], indirect=True)
def test_unbound_tokens_when_switched_off_never_bind_a_foreign_certificate(
    http, bank, ob_directory, ob_software, ob_ec_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer, "client_secret_basic")
    plain = get_token(http, ob_software, registration, environ={})
    assert plain.status_code == 200, plain.get_json()
    assert bank.dcr.tokens.find(plain.get_json()["access_token"]).x5t_s256 is None
    foreign = get_token(http, ob_software, registration, environ=ob_ec_software.environ())
    assert foreign.status_code == 200, foreign.get_json()
    assert bank.dcr.tokens.find(foreign.get_json()["access_token"]).x5t_s256 is None
    own = get_token(http, ob_software, registration)
    assert bank.dcr.tokens.find(own.get_json()["access_token"]).x5t_s256 is not None


# -- 3. the official tool's 30-minute assertions; refusals logged ------------------------------


def test_thirty_minute_assertion_is_accepted(http, bank, ob_directory, ob_software, issuer):
    client_id = register(http, ob_directory, ob_software, issuer)["client_id"]
    now = int(bank.dcr.registrar.clock())
    assertion = ob_software.client_assertion(client_id, aud=TOKEN_URL, exp=now + 1800)
    response = assertion_request(http, ob_software, client_id, assertion)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("bank", [{"OBDCR_MAX_ASSERTION_LIFETIME": 600}], indirect=True)
def test_assertion_lifetime_is_configurable_and_refusal_is_logged(
    http, bank, ob_directory, ob_software, issuer, caplog
):
    client_id = register(http, ob_directory, ob_software, issuer)["client_id"]
    now = int(bank.dcr.registrar.clock())
    assertion = ob_software.client_assertion(client_id, aud=TOKEN_URL, exp=now + 1800)
    with caplog.at_level(logging.INFO, logger="flask_obdcr"):
        response = assertion_request(http, ob_software, client_id, assertion)
    assert_invalid_client(response)
    assert "600 seconds" in response.get_json()["error_description"]
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "invalid_client" in refusals[0] and "600 seconds" in refusals[0]


def test_default_assertion_lifetime_is_an_hour(http, bank, ob_directory, ob_software, issuer):
    client_id = register(http, ob_directory, ob_software, issuer)["client_id"]
    now = int(bank.dcr.registrar.clock())
    skew = bank.dcr.settings.clock_skew
    too_long = ob_software.client_assertion(client_id, aud=TOKEN_URL, exp=now + 3600 + skew + 1)
    assert_invalid_client(assertion_request(http, ob_software, client_id, too_long))
    assert_no_token(bank, client_id)


# -- 4. access token lifetime --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bank", "lifetime"),
    [
        pytest.param({}, 3600, id="default"),
        pytest.param(
            {
                "OBDCR_ACCESS_TOKEN_LIFETIME": 120,
                "OAUTH2_TOKEN_EXPIRES_IN": {"client_credentials": 864000},
            },
            120,
            id="configured-wins-over-authlib",
        ),
    ],
    indirect=["bank"],
)
def test_access_token_lifetime(http, bank, ob_directory, ob_software, issuer, lifetime):
    registration = register(http, ob_directory, ob_software, issuer)
    response = get_token(http, ob_software, registration)
    assert response.status_code == 200
    assert response.get_json()["expires_in"] == lifetime
    record = bank.dcr.tokens.find(response.get_json()["access_token"])
    assert record.expires_at - record.issued_at == lifetime


# -- 5. published URLs from configuration --------------------------------------------------------


FORGED = [
    pytest.param({"base_url": "https://evil.example"}, id="host"),
    pytest.param(
        {"base_url": BASE, "headers": {"X-Forwarded-Host": "evil.example"}}, id="x-forwarded-host"
    ),
    pytest.param({"base_url": "http://evil.example:8080"}, id="scheme-and-port"),
]


@pytest.mark.parametrize("forged", FORGED)
def test_registration_client_uri_ignores_the_host(
    http, bank, ob_directory, ob_software, issuer, forged
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    response = http.post(
        "/register",
        data=body,
        content_type="application/jwt",
        environ_base=ob_software.environ(),
        **forged,
    )
    assert response.status_code == 201
    data = response.get_json()
    assert data["registration_client_uri"] == f"{issuer}/register/{data['client_id']}"
    read = manage(http, "GET", data["client_id"], data["registration_access_token"], ob_software)
    assert read.get_json()["registration_client_uri"] == data["registration_client_uri"]


@pytest.mark.parametrize(
    "bank", [{"OBDCR_MTLS_BASE_URL": "https://mtls.sandbox-bank.test/"}], indirect=True
)
def test_mtls_base_url_and_rfc8705_aliases(http, bank, ob_directory, ob_software, issuer):
    with bank.test_request_context("/", base_url="https://evil.example"):
        metadata = bank.dcr.discovery_metadata()
    mtls = "https://mtls.sandbox-bank.test"
    assert metadata["registration_endpoint"] == f"{mtls}/register"
    assert metadata["token_endpoint"] == f"{mtls}/token"
    assert metadata["mtls_endpoint_aliases"] == {
        "token_endpoint": f"{mtls}/token",
        "registration_endpoint": f"{mtls}/register",
    }
    data = register(http, ob_directory, ob_software, issuer)
    assert data["registration_client_uri"] == f"{mtls}/register/{data['client_id']}"
    # the token endpoint on the mTLS host is an accepted assertion audience
    assertion = ob_software.client_assertion(data["client_id"], aud=f"{mtls}/token")
    assert assertion_request(http, ob_software, data["client_id"], assertion).status_code == 200


@pytest.mark.parametrize("forged", FORGED)
def test_example_bank_discovery_ignores_the_host(tmp_path, ob_directory, forged):
    from example_app.bank import create_app

    config = ob_directory.app_config(tmp_path / "ca.pem", issuer="https://as.anybank.example")
    config["OBDCR_HTTP_VERIFY"] = True  # the example's default names a file of `make serve`
    app = create_app(config, instance_path=tmp_path / "bank")
    response = app.test_client().get("/.well-known/openid-configuration", **forged)
    assert response.status_code == 200
    metadata = response.get_json()
    urls = {k: v for k, v in metadata.items() if isinstance(v, str) and "://" in v}
    assert {"registration_endpoint", "token_endpoint", "accounts_endpoint"} <= urls.keys()
    issuer = "https://as.anybank.example"
    assert all(url == issuer or url.startswith(f"{issuer}/") for url in urls.values()), urls
    index = app.test_client().get("/", **forged).get_json()
    assert index["discovery"] == "https://as.anybank.example/.well-known/openid-configuration"


# -- 6. an OB signing certificate is no transport certificate ----------------------------------


def test_signing_certificate_refused_for_registration(
    post_registration, ob_app, ob_directory, ob_software, issuer
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    signing = {"SSL_CLIENT_CERT": pem(ob_software.signing_certificate)}
    response = post_registration(body, environ=signing)
    assert_invalid_client(response)
    assert "clientAuth" in response.get_json()["error_description"]
    assert len(ob_app.extensions["obdcr"].store) == 0


def test_signing_certificate_refused_at_the_token_endpoint(
    http, bank, ob_directory, ob_software, issuer
):
    registration = register(http, ob_directory, ob_software, issuer, "client_secret_basic")
    signing = {"SSL_CLIENT_CERT": pem(ob_software.signing_certificate)}
    assert_invalid_client(get_token(http, ob_software, registration, environ=signing))
    assert_no_token(bank, registration["client_id"])


# -- 8. log injection ----------------------------------------------------------------------------


def test_request_path_cannot_forge_a_log_line(http, bank, ob_software, caplog):
    with caplog.at_level(logging.INFO, logger="flask_obdcr"):
        response = http.get(
            "/register/x%0aINFO%20registered%20client%20evil%0d",
            headers={"Authorization": "Bearer nothing"},
            environ_base=ob_software.environ(),
        )
    assert response.status_code == 401
    messages = [record.getMessage() for record in caplog.records]
    assert messages, "the refusal is logged"
    assert not any("\n" in m or "\r" in m for m in messages), messages
    assert any("x\\x0aINFO" in m for m in messages), messages


def test_claims_and_subjects_cannot_forge_a_log_line(
    post_registration, ob_directory, ob_software, issuer, caplog
):
    body = ob_directory.registration_request(
        ob_software, aud=issuer, iss="forged\nINFO registered client\u2028x"
    )
    with caplog.at_level(logging.INFO, logger="flask_obdcr"):
        response = post_registration(body, software=ob_software)
    assert response.status_code == 400
    messages = [record.getMessage() for record in caplog.records]
    assert messages
    assert not any(c in m for m in messages for c in "\n\r\u2028"), messages


def test_token_endpoint_log_escapes_the_client_id(http, bank, caplog):
    basic = base64.b64encode(b"evil\nINFO forged:secret").decode()
    with caplog.at_level(logging.INFO, logger="flask_obdcr"):
        response = http.post(
            "/token",
            data={"grant_type": "client_credentials", "client_id": "a\nINFO forged"},
            headers={"Authorization": f"Basic {basic}"},
            base_url=BASE,
        )
    assert response.status_code in (400, 401)
    messages = [record.getMessage() for record in caplog.records]
    assert messages
    assert not any("\n" in m for m in messages), messages


# -- 11. DELETE's 204 ---------------------------------------------------------------------------


def test_delete_204_has_no_content_type(http, bank, ob_directory, ob_software, issuer):
    registration = register(http, ob_directory, ob_software, issuer)
    response = manage(
        http,
        "DELETE",
        registration["client_id"],
        registration["registration_access_token"],
        ob_software,
    )
    assert response.status_code == 204
    assert "Content-Type" not in response.headers
    assert response.get_data() == b""
    assert bank.dcr.store.get(registration["client_id"]) is None


# -- found by the red-team pass ------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Basic /zr/", id="not-utf8"),
        pytest.param("Basic ", id="empty"),
        pytest.param("Basic !!!", id="not-base64"),
        pytest.param("Basic " + base64.b64encode(b"no-colon").decode(), id="no-colon"),
    ],
)
def test_malformed_basic_credentials_are_401_not_500(http, bank, ob_software, authorization):
    response = http.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": authorization},
        base_url=BASE,
        environ_base=ob_software.environ(),
    )
    assert response.status_code in (400, 401), response.get_data(as_text=True)
    assert response.get_json()["error"] in ("invalid_client", "invalid_request")


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": 10**309}, id="exp-beyond-float"),
        pytest.param({"iat": -(10**400)}, id="iat-hugely-negative"),
        pytest.param({"nbf": 10**309}, id="nbf-beyond-float"),
    ],
)
def test_huge_numeric_dates_in_an_assertion_are_401(
    http, bank, ob_directory, ob_software, issuer, claims
):
    client_id = register(http, ob_directory, ob_software, issuer)["client_id"]
    assertion = ob_software.client_assertion(client_id, aud=TOKEN_URL, **claims)
    assert_invalid_client(assertion_request(http, ob_software, client_id, assertion))
    assert_no_token(bank, client_id)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": 10**309}, id="exp-beyond-float"),
        pytest.param({"iat": -(10**400)}, id="iat-hugely-negative"),
        pytest.param({"nbf": 10**309}, id="nbf-beyond-float"),
    ],
)
def test_huge_numeric_dates_in_a_registration_are_400(
    post_registration, ob_app, ob_directory, ob_software, issuer, claims
):
    body = ob_directory.registration_request(ob_software, aud=issuer, **claims)
    response = post_registration(body, software=ob_software)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert len(ob_app.extensions["obdcr"].store) == 0


def test_assertion_before_its_nbf_is_refused(http, bank, ob_directory, ob_software, issuer):
    client_id = register(http, ob_directory, ob_software, issuer)["client_id"]
    now = int(bank.dcr.registrar.clock())
    assertion = ob_software.client_assertion(client_id, aud=TOKEN_URL, nbf=now + 3000)
    assert_invalid_client(assertion_request(http, ob_software, client_id, assertion))
    assert_no_token(bank, client_id)


def test_registration_before_its_nbf_is_refused(
    post_registration, ob_app, ob_directory, ob_software, issuer, ob_clock
):
    body = ob_directory.registration_request(ob_software, aud=issuer, nbf=int(ob_clock()) + 3000)
    response = post_registration(body, software=ob_software)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert len(ob_app.extensions["obdcr"].store) == 0


def test_issued_tokens_never_reach_authlibs_debug_log(
    http, bank, ob_directory, ob_software, issuer, caplog
):
    registration = register(http, ob_directory, ob_software, issuer)
    with caplog.at_level(logging.DEBUG):
        response = get_token(http, ob_software, registration)
    token = response.get_json()["access_token"]
    assert any("Issue token" in record.getMessage() for record in caplog.records)
    assert not any(token in record.getMessage() for record in caplog.records)
