"""POST /register: the happy paths, and every row of the error table (docs/architecture.md,
"Contract: errors").

Every negative case asserts the status, the ``error`` code, a JSON body with a
description, ``Cache-Control: no-store``, and that nothing was stored.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from jwcrypto import jwk

from flask_obdcr.storage import MemoryStore, secret_matches
from flask_obdcr.testing import REMOVE, SandboxDirectory, generate_key, ob_subject, sign_jwt
from flask_obdcr.testing.fixtures import ISSUER
from flask_obdcr.testing.jose import jwk_from_key
from flask_obdcr.testing.pki import pem

NOW = datetime.datetime.now(datetime.timezone.utc)


# -- happy paths ---------------------------------------------------------------------------


def assert_registered(response, store, software, body_jwt):
    assert response.status_code == 201, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "application/json"
    data = response.get_json()
    assert 1 <= len(data["client_id"]) <= 36
    assert isinstance(data["client_id_issued_at"], int)
    # the SSA claims flattened to the top level, the statement echoed unmodified
    request_claims = json.loads(base64.urlsafe_b64decode(body_jwt.split(".")[1] + "=="))
    assert data["software_statement"] == request_claims["software_statement"]
    assert data["org_id"] == software.org_id
    assert data["software_id"] == software.software_id
    assert data["software_roles"] == software.roles
    assert data["software_jwks_endpoint"] == software.jwks_url
    assert data["redirect_uris"] == software.redirect_uris
    stored = store.get(data["client_id"])
    assert stored is not None
    assert stored.software_id == software.software_id
    assert stored.org_id == software.org_id
    assert stored.ssa_claims["software_client_name"] == software.client_name
    once = (
        "client_secret",
        "client_secret_expires_at",
        "registration_access_token",
        "registration_client_uri",
    )
    assert stored.to_response() == {k: v for k, v in data.items() if k not in once}
    assert data["registration_client_uri"] == f"{ISSUER}/register/{data['client_id']}"
    assert secret_matches(data["registration_access_token"], stored.registration_access_token_hash)
    return data, stored


@pytest.mark.parametrize("method", ["tls_client_auth", "private_key_jwt", "client_secret_basic"])
def test_registers_each_auth_method(
    method, ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(
        ob_software, aud=issuer, token_endpoint_auth_method=method
    )
    response = post_registration(body, software=ob_software, app=app)
    data, stored = assert_registered(response, store, ob_software, body)
    assert data["token_endpoint_auth_method"] == method
    if method == "client_secret_basic":
        assert len(data["client_secret"]) == 36
        assert data["client_secret_expires_at"] == 0
        # only a hash is stored, and it matches the secret we returned
        assert data["client_secret"] not in json.dumps(stored.to_record())
        assert secret_matches(data["client_secret"], stored.client_secret_hash)
        assert not secret_matches(data["client_secret"] + "x", stored.client_secret_hash)
    else:
        assert "client_secret" not in data
        assert stored.client_secret_hash is None
    if method == "tls_client_auth":
        assert data["tls_client_auth_subject_dn"] == ob_software.subject_dn
    if method == "private_key_jwt":
        assert data["token_endpoint_auth_signing_alg"] == "PS256"


@pytest.mark.parametrize(
    "content_type,encode",
    [
        ("application/jwt", lambda jwt: jwt),
        ("application/jose", lambda jwt: jwt),
        ("application/json", json.dumps),
        ("application/jwt; charset=utf-8", lambda jwt: jwt),
    ],
    ids=["jwt", "jose", "json-string", "jwt-with-parameter"],
)
def test_accepts_each_media_type(
    content_type, encode, ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(ob_software, aud=issuer)
    response = post_registration(
        encode(body), software=ob_software, app=app, content_type=content_type
    )
    assert_registered(response, store, ob_software, body)


def test_registers_es256_software(
    ob_app_factory, ob_directory, ob_ec_software, issuer, post_registration
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(ob_ec_software, aud=issuer)
    assert json.loads(base64.urlsafe_b64decode(body.split(".")[0] + "=="))["alg"] == "ES256"
    data, _ = assert_registered(
        post_registration(body, software=ob_ec_software, app=app), store, ob_ec_software, body
    )
    assert data["token_endpoint_auth_signing_alg"] == "ES256"
    assert data["scope"] == "openid accounts"


def test_es256_signed_ssa(tmp_path, ob_clock, issuer):
    from flask import Flask

    from flask_obdcr import OpenBankingDCR

    directory = SandboxDirectory(ssa_alg="ES256")
    software = directory.register_software(roles=["PISP"])
    store = MemoryStore()
    app = Flask(__name__)
    app.config.update(directory.app_config(tmp_path / "ca.pem", issuer=issuer))
    OpenBankingDCR(app, store=store, jwks_fetcher=directory.fetcher, clock=ob_clock)
    body = directory.registration_request(software, aud=issuer)
    response = app.test_client().post(
        "/register", data=body, content_type="application/jwt", environ_base=software.environ()
    )
    data, _ = assert_registered(response, store, software, body)
    assert data["scope"] == "openid payments"


def test_audience_may_be_a_configured_alias_or_a_list(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    store = MemoryStore()
    app = ob_app_factory(store=store, OBDCR_AUDIENCES=["0015800001041RHAAY"])
    for aud in ("0015800001041RHAAY", ["https://other.example", issuer]):
        body = ob_directory.registration_request(ob_software, aud=aud)
        assert post_registration(body, software=ob_software, app=app).status_code == 201
    assert len(store) == 2


def test_same_ssa_registers_independent_clients(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    ssa = ob_directory.ssa(ob_software)
    ids = set()
    for _ in range(3):
        body = ob_directory.registration_request(ob_software, aud=issuer, ssa=ssa)
        response = post_registration(body, software=ob_software, app=app)
        assert response.status_code == 201
        ids.add(response.get_json()["client_id"])
    assert len(ids) == 3 and {c.client_id for c in store.list()} == ids


def test_defaults_when_optional_claims_are_absent(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(
        ob_software,
        aud=issuer,
        scope=REMOVE,
        response_types=REMOVE,
        application_type=REMOVE,
        grant_types=REMOVE,
    )
    data = post_registration(body, software=ob_software, app=app).get_json()
    assert data["scope"] == "openid accounts payments"  # everything the SSA roles allow
    assert data["response_types"] == ["code id_token"]  # the OB default
    assert data["grant_types"] == ["authorization_code"]  # the RFC 7591 default
    assert data["application_type"] == "web"


def test_eidas_certificate_binds_by_organization_identifier(
    ob_app_factory, ob_directory, issuer, post_registration, ob_fetcher
):
    software = ob_directory.register_software(roles=["AISP"], subject="eidas")
    # not the OB subject, and kept out of the JWKS, to test the eIDAS rule alone
    software.transport_jwk = software.signing_key
    ob_fetcher.documents.update(ob_directory.documents())
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(software, aud=issuer)
    response = post_registration(body, software=software, app=app)
    assert response.status_code == 201, response.get_json()


def test_certificate_published_in_software_jwks_binds(
    ob_app_factory, ob_directory, issuer, post_registration, ob_fetcher
):
    # a certificate whose subject names neither the software nor the org, but that the
    # Directory lists as an x5c key of the software's JWKS
    software = ob_directory.register_software(roles=["AISP"])
    key = generate_key("EC")
    cert = ob_directory.issuing_ca.issue(ob_subject("unrelated", "unrelated"), key.public_key())
    software.extra_keys.append(jwk_from_key(key, kid="extra-tls", use="tls", certificate=cert))
    ob_fetcher.documents.update(ob_directory.documents())
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(software, aud=issuer)
    response = post_registration(body, environ={"SSL_CLIENT_CERT": pem(cert)}, app=app)
    assert response.status_code == 201, response.get_json()
    # the same certificate, unpublished, binds to nothing
    software.extra_keys.clear()
    ob_fetcher.documents.update(ob_directory.documents())
    app = ob_app_factory(store=MemoryStore())
    body = ob_directory.registration_request(software, aud=issuer)
    response = post_registration(body, environ={"SSL_CLIENT_CERT": pem(cert)}, app=app)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_software_statement"


# -- the error table -----------------------------------------------------------------------


@dataclass
class Env:
    directory: SandboxDirectory
    software: Any
    other_software: Any
    foreign_software: Any
    issuer: str
    fetcher: Any
    clock: Any
    config: dict = field(default_factory=dict)

    def request(self, **claims):
        claims.setdefault("aud", self.issuer)
        return self.directory.registration_request(self.software, **claims)

    def ssa(self, **claims):
        return self.directory.ssa(self.software, **claims)


@dataclass
class Req:
    body: Any
    environ: dict | None = None  # None: the software's own certificate
    content_type: str = "application/jwt"


def _rsa_jwk(kid=None):
    key = jwk.JWK.generate(kty="RSA", size=2048)
    if kid:
        key = jwk.JWK(**{**json.loads(key.export_private()), "kid": kid})
    return key


def _compact(header, payload, signature=b"sig"):
    def b64(data):
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


def _cert_environ(env, **validity):
    key = generate_key("RSA")
    cert = env.directory.issuing_ca.issue(
        ob_subject(env.software.software_id, env.software.org_id), key.public_key(), **validity
    )
    return {"SSL_CLIENT_CERT": pem(cert)}


def _hs256_with_public_key(env):
    public_pem = env.software.signing_key.export_to_pem()
    key = jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(public_pem).decode().rstrip("="))
    return sign_jwt(
        env.directory.registration_claims(env.software, aud=env.issuer), key, alg="HS256"
    )


def _unreachable_directory(env):
    env.config["OBDCR_TRUSTED_DIRECTORIES"] = {
        env.directory.issuer: f"https://{env.directory.host}/moved-away.jwks"
    }
    return Req(env.request())


CASES = [
    # no client certificate; untrusted, expired or not-yet-valid certificate
    ("no-certificate", lambda e: Req(e.request(), environ={}), 401, "invalid_client"),
    (
        "untrusted-certificate",
        lambda e: Req(e.request(), environ=e.foreign_software.environ()),
        401,
        "invalid_client",
    ),
    (
        "expired-certificate",
        lambda e: Req(
            e.request(),
            environ=_cert_environ(
                e,
                not_before=NOW - datetime.timedelta(days=30),
                not_after=NOW - datetime.timedelta(days=1),
            ),
        ),
        401,
        "invalid_client",
    ),
    (
        "certificate-not-yet-valid",
        lambda e: Req(
            e.request(),
            environ=_cert_environ(
                e,
                not_before=NOW + datetime.timedelta(days=1),
                not_after=NOW + datetime.timedelta(days=30),
            ),
        ),
        401,
        "invalid_client",
    ),
    (
        "certificate-garbage",
        lambda e: Req(e.request(), environ={"SSL_CLIENT_CERT": "garbage"}),
        401,
        "invalid_client",
    ),
    # certificate not bound to the SSA's org/software
    (
        "certificate-of-other-software",
        lambda e: Req(e.request(), environ=e.other_software.environ()),
        400,
        "invalid_software_statement",
    ),
    # body not a compact JWS, undecodable, alg not allowed
    ("body-not-jws", lambda e: Req("this is not a jwt"), 400, "invalid_client_metadata"),
    ("body-undecodable", lambda e: Req("eyJhbGciOi.eyJ9.c2ln"), 400, "invalid_client_metadata"),
    ("body-header-not-object", lambda e: Req(_compact([1], {})), 400, "invalid_client_metadata"),
    ("body-binary", lambda e: Req(b"\xff\xfe\x00"), 400, "invalid_client_metadata"),
    (
        "json-body-not-string",
        lambda e: Req(json.dumps({"jwt": e.request()}), content_type="application/json"),
        400,
        "invalid_client_metadata",
    ),
    (
        "alg-none",
        lambda e: Req(
            _compact({"alg": "none"}, e.directory.registration_claims(e.software, aud=e.issuer))
        ),
        400,
        "invalid_client_metadata",
    ),
    (
        "alg-none-unsigned",
        lambda e: Req(
            _compact(
                {"alg": "none"}, e.directory.registration_claims(e.software, aud=e.issuer), b""
            )[:-1]
        ),
        400,
        "invalid_client_metadata",
    ),
    (
        "alg-hs256-with-public-key",
        lambda e: Req(_hs256_with_public_key(e)),
        400,
        "invalid_client_metadata",
    ),
    (
        "alg-rs256",
        lambda e: Req(e.directory.registration_request(e.software, aud=e.issuer, alg="RS256")),
        400,
        "invalid_client_metadata",
    ),
    (
        "jwk-header",
        lambda e: Req(
            e.directory.registration_request(
                e.software,
                aud=e.issuer,
                headers={"jwk": json.loads(e.software.signing_key.export_public())},
            )
        ),
        400,
        "invalid_client_metadata",
    ),
    # SSA missing, undecodable, bad signature, unknown kid, alg, too old, iat in the future
    (
        "ssa-missing",
        lambda e: Req(e.request(software_statement=REMOVE)),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-undecodable",
        lambda e: Req(e.request(software_statement="not.a.jwt")),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-not-a-string",
        lambda e: Req(e.request(software_statement={"iss": "x"})),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-bad-signature",
        lambda e: Req(
            e.request(
                software_statement=e.directory.ssa(
                    e.software, key=_rsa_jwk(kid=e.directory.ssa_key["kid"])
                )
            )
        ),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-unknown-kid",
        lambda e: Req(
            e.request(
                software_statement=e.directory.ssa(e.software, key=_rsa_jwk(kid="unknown-kid"))
            )
        ),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-alg-rs256",
        lambda e: Req(e.request(software_statement=e.directory.ssa(e.software, alg="RS256"))),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-alg-none",
        lambda e: Req(
            e.request(
                software_statement=_compact({"alg": "none"}, e.directory.ssa_claims(e.software))
            )
        ),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-iat-in-future",
        lambda e: Req(e.request(software_statement=e.ssa(iat=int(e.clock()) + 3600))),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-iat-missing",
        lambda e: Req(e.request(software_statement=e.ssa(iat=REMOVE))),
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-too-old",
        lambda e: (
            e.config.update(OBDCR_SSA_MAX_AGE=600),
            Req(e.request(software_statement=e.ssa(iat=int(e.clock()) - 3600))),
        )[1],
        400,
        "invalid_software_statement",
    ),
    (
        "ssa-software-id-missing",
        lambda e: Req(e.request(software_statement=e.ssa(software_id=REMOVE))),
        400,
        "invalid_software_statement",
    ),
    # SSA from an untrusted issuer; org_status not Active
    (
        "ssa-untrusted-issuer",
        lambda e: Req(e.request(software_statement=e.ssa(iss="Evil Ltd"))),
        400,
        "unapproved_software_statement",
    ),
    (
        "ssa-org-revoked",
        lambda e: Req(e.request(software_statement=e.ssa(org_status="Revoked"))),
        400,
        "unapproved_software_statement",
    ),
    (
        "ssa-org-withdrawn",
        lambda e: Req(e.request(software_statement=e.ssa(org_status="Withdrawn"))),
        400,
        "unapproved_software_statement",
    ),
    # software_jwks_endpoint not https or host not allowed; software JWKS unreachable
    (
        "jwks-endpoint-not-https",
        lambda e: Req(
            e.request(
                software_statement=e.ssa(
                    software_jwks_endpoint=e.software.jwks_url.replace("https:", "http:")
                )
            )
        ),
        400,
        "invalid_software_statement",
    ),
    (
        "jwks-endpoint-host-not-allowed",
        lambda e: Req(
            e.request(
                software_statement=e.ssa(
                    software_jwks_endpoint="https://attacker.example.net/keys.jwks"
                )
            )
        ),
        400,
        "invalid_software_statement",
    ),
    (
        "software-jwks-unreachable",
        lambda e: Req(
            e.request(
                software_statement=e.ssa(
                    software_jwks_endpoint=f"{e.directory.base_url}/gone/gone.jwks"
                )
            )
        ),
        400,
        "invalid_software_statement",
    ),
    # request signature not made with a key of the software JWKS
    (
        "request-signed-by-foreign-key-same-kid",
        lambda e: Req(
            e.directory.registration_request(
                e.software, aud=e.issuer, key=_rsa_jwk(kid=e.software.signing_key["kid"])
            )
        ),
        400,
        "invalid_client_metadata",
    ),
    (
        "request-signed-by-foreign-key-no-kid",
        lambda e: Req(e.directory.registration_request(e.software, aud=e.issuer, key=_rsa_jwk())),
        400,
        "invalid_client_metadata",
    ),
    (
        "request-signed-by-other-software",
        lambda e: Req(
            e.directory.registration_request(
                e.software, aud=e.issuer, key=e.other_software.signing_key
            )
        ),
        400,
        "invalid_client_metadata",
    ),
    # iss, software_id, aud, exp, iat, jti
    (
        "iss-not-software-id",
        lambda e: Req(e.request(iss=e.other_software.software_id)),
        400,
        "invalid_client_metadata",
    ),
    (
        "software-id-mismatch",
        lambda e: Req(e.request(software_id="someothersoftware")),
        400,
        "invalid_client_metadata",
    ),
    (
        "aud-wrong",
        lambda e: Req(e.request(aud="https://another-bank.example")),
        400,
        "invalid_client_metadata",
    ),
    ("aud-missing", lambda e: Req(e.request(aud=REMOVE)), 400, "invalid_client_metadata"),
    (
        "exp-past",
        lambda e: Req(e.request(iat=int(e.clock()) - 600, exp=int(e.clock()) - 300)),
        400,
        "invalid_client_metadata",
    ),
    ("exp-missing", lambda e: Req(e.request(exp=REMOVE)), 400, "invalid_client_metadata"),
    (
        "exp-far-future",
        lambda e: Req(e.request(exp=int(e.clock()) + 10 * 86400)),
        400,
        "invalid_client_metadata",
    ),
    (
        "iat-future",
        lambda e: Req(e.request(iat=int(e.clock()) + 3600, exp=int(e.clock()) + 3900)),
        400,
        "invalid_client_metadata",
    ),
    ("jti-missing", lambda e: Req(e.request(jti=REMOVE)), 400, "invalid_client_metadata"),
    ("jti-empty", lambda e: Req(e.request(jti="")), 400, "invalid_client_metadata"),
    # redirect_uris
    (
        "redirect-uris-missing",
        lambda e: Req(e.request(redirect_uris=REMOVE)),
        400,
        "invalid_redirect_uri",
    ),
    (
        "redirect-uris-empty",
        lambda e: Req(e.request(redirect_uris=[])),
        400,
        "invalid_redirect_uri",
    ),
    (
        "redirect-uri-not-https",
        lambda e: Req(
            e.request(
                software_statement=e.ssa(software_redirect_uris=["http://tpp.example.com/cb"]),
                redirect_uris=["http://tpp.example.com/cb"],
            )
        ),
        400,
        "invalid_redirect_uri",
    ),
    (
        "redirect-uri-localhost",
        lambda e: Req(
            e.request(
                software_statement=e.ssa(software_redirect_uris=["https://localhost/cb"]),
                redirect_uris=["https://localhost/cb"],
            )
        ),
        400,
        "invalid_redirect_uri",
    ),
    (
        "redirect-uri-loopback-ip",
        lambda e: Req(
            e.request(
                software_statement=e.ssa(software_redirect_uris=["https://127.0.0.1/cb"]),
                redirect_uris=["https://127.0.0.1/cb"],
            )
        ),
        400,
        "invalid_redirect_uri",
    ),
    (
        "redirect-uri-not-in-ssa",
        lambda e: Req(e.request(redirect_uris=["https://tpp.example.com/other"])),
        400,
        "invalid_redirect_uri",
    ),
    (
        "redirect-uri-prefix-of-ssa",
        lambda e: Req(e.request(redirect_uris=["https://tpp.example.com/cb/../cb2"])),
        400,
        "invalid_redirect_uri",
    ),
    # auth method, conditional claims, grant/response types, scope, algs, application_type
    (
        "auth-method-unsupported",
        lambda e: Req(e.request(token_endpoint_auth_method="client_secret_jwt")),
        400,
        "invalid_client_metadata",
    ),
    (
        "auth-method-missing",
        lambda e: Req(e.request(token_endpoint_auth_method=REMOVE)),
        400,
        "invalid_client_metadata",
    ),
    (
        "auth-method-disabled-by-config",
        lambda e: (
            e.config.update(
                OBDCR_TOKEN_ENDPOINT_AUTH_METHODS=["tls_client_auth", "private_key_jwt"]
            ),
            Req(e.request(token_endpoint_auth_method="client_secret_post")),
        )[1],
        400,
        "invalid_client_metadata",
    ),
    (
        "private-key-jwt-without-signing-alg",
        lambda e: Req(e.request(token_endpoint_auth_signing_alg=REMOVE)),
        400,
        "invalid_client_metadata",
    ),
    (
        "tls-client-auth-without-subject-dn",
        lambda e: Req(
            e.request(
                token_endpoint_auth_method="tls_client_auth", tls_client_auth_subject_dn=REMOVE
            )
        ),
        400,
        "invalid_client_metadata",
    ),
    (
        "grant-type-unsupported",
        lambda e: Req(e.request(grant_types=["password"])),
        400,
        "invalid_client_metadata",
    ),
    ("grant-types-empty", lambda e: Req(e.request(grant_types=[])), 400, "invalid_client_metadata"),
    (
        "response-type-unsupported",
        lambda e: Req(e.request(response_types=["token"])),
        400,
        "invalid_client_metadata",
    ),
    (
        "scope-beyond-roles",
        lambda e: Req(e.request(scope="openid accounts fundsconfirmations")),
        400,
        "invalid_client_metadata",
    ),
    (
        "scope-unknown",
        lambda e: Req(e.request(scope="openid admin")),
        400,
        "invalid_client_metadata",
    ),
    (
        "scope-not-a-string",
        lambda e: Req(e.request(scope=["openid"])),
        400,
        "invalid_client_metadata",
    ),
    (
        "id-token-alg-none",
        lambda e: Req(e.request(id_token_signed_response_alg="none")),
        400,
        "invalid_client_metadata",
    ),
    (
        "request-object-alg-hs256",
        lambda e: Req(e.request(request_object_signing_alg="HS256")),
        400,
        "invalid_client_metadata",
    ),
    (
        "token-endpoint-alg-rs256",
        lambda e: Req(e.request(token_endpoint_auth_signing_alg="RS256")),
        400,
        "invalid_client_metadata",
    ),
    (
        "application-type-native",
        lambda e: Req(e.request(application_type="native")),
        400,
        "invalid_client_metadata",
    ),
    # tls_client_auth_subject_dn does not match the presented certificate
    (
        "subject-dn-mismatch",
        lambda e: Req(
            e.request(
                token_endpoint_auth_method="tls_client_auth",
                tls_client_auth_subject_dn=f"CN=someone-else,OU={e.software.org_id},O=OpenBanking,C=GB",
            )
        ),
        400,
        "invalid_client_metadata",
    ),
    (
        "tls-client-auth-without-certificate",
        lambda e: Req(e.request(token_endpoint_auth_method="tls_client_auth"), environ={}),
        401,
        "invalid_client",
    ),
    # unsupported media type, body too large
    (
        "media-type-text-plain",
        lambda e: Req(e.request(), content_type="text/plain"),
        415,
        "invalid_client_metadata",
    ),
    (
        "media-type-form",
        lambda e: Req(e.request(), content_type="application/x-www-form-urlencoded"),
        415,
        "invalid_client_metadata",
    ),
    ("body-too-large", lambda e: Req("a" * 70000), 413, "invalid_client_metadata"),
    # the Directory's JWKS unreachable, nothing cached
    ("directory-jwks-unreachable", _unreachable_directory, 503, "temporarily_unavailable"),
]


@pytest.fixture(scope="module")
def foreign_directory():
    return SandboxDirectory(issuer="Some Other Directory")


@pytest.fixture(scope="module")
def foreign_software(foreign_directory):
    return foreign_directory.register_software(roles=["AISP"])


@pytest.fixture(scope="session")
def other_software(ob_directory):
    return ob_directory.register_software(roles=["AISP"])


@pytest.fixture
def env(ob_directory, ob_software, other_software, foreign_software, issuer, ob_fetcher, ob_clock):
    ob_fetcher.documents.update(ob_directory.documents())
    return Env(
        ob_directory, ob_software, other_software, foreign_software, issuer, ob_fetcher, ob_clock
    )


def assert_refused(response, status, error, store):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert 1 <= len(body["error_description"]) <= 500
    assert set(body) == {"error", "error_description"}
    assert len(store) == 0


@pytest.mark.parametrize("build,status,error", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused(build, status, error, env, ob_app_factory, post_registration):
    request = build(env)
    store = MemoryStore()
    app = ob_app_factory(store=store, **env.config)
    environ = env.software.environ() if request.environ is None else request.environ
    response = post_registration(
        request.body, environ=environ, app=app, content_type=request.content_type
    )
    assert_refused(response, status, error, store)
    if status == 503:
        assert int(response.headers["Retry-After"]) > 0


def test_replayed_jti_is_refused(env, ob_app_factory, post_registration):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = env.request()
    first = post_registration(body, software=env.software, app=app)
    assert first.status_code == 201
    stored = list(store.list())
    replay = post_registration(body, software=env.software, app=app)
    assert replay.status_code == 400
    assert replay.get_json()["error"] == "invalid_client_metadata"
    assert list(store.list()) == stored


def test_jti_of_a_refused_request_is_not_consumed(env, ob_app_factory, post_registration):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = env.request()
    refused = post_registration(body, environ={}, app=app)  # no certificate
    assert refused.status_code == 401
    accepted = post_registration(body, software=env.software, app=app)
    assert accepted.status_code == 201


@pytest.mark.parametrize("offset,status", [(0, 201), (1, 400)], ids=["at-exp", "one-second-past"])
def test_exp_boundary(offset, status, env, ob_app_factory, post_registration):
    store = MemoryStore()
    app = ob_app_factory(store=store, OBDCR_CLOCK_SKEW=0)
    exp = int(env.clock()) + 120
    body = env.request(exp=exp)
    env.clock.set(exp + offset)
    response = post_registration(body, software=env.software, app=app)
    assert response.status_code == status, response.get_json()
    if status == 400:
        assert response.get_json()["error"] == "invalid_client_metadata"
        assert len(store) == 0
    else:
        assert len(store) == 1


def test_host_not_allowed_makes_no_network_call(env, ob_app_factory, post_registration):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    evil = "https://attacker.example.net/keys.jwks"
    body = env.request(software_statement=env.ssa(software_jwks_endpoint=evil))
    response = post_registration(body, software=env.software, app=app)
    assert_refused(response, 400, "invalid_software_statement", store)
    assert evil not in env.fetcher.calls
    assert all(url.startswith(env.directory.base_url) for url in env.fetcher.calls)


def test_a_software_statement_seen_before_is_judged_again(env, ob_app_factory, post_registration):
    # the SSA's signature is remembered between registrations; its claims are not
    store = MemoryStore()
    app = ob_app_factory(store=store, OBDCR_SSA_MAX_AGE=600, OBDCR_CLOCK_SKEW=0)
    ssa = env.ssa(iat=int(env.clock()))
    register_twice_with(ssa, env, app, post_registration, between=lambda: env.clock.advance(601))
    assert len(store) == 1


def test_a_software_statement_seen_before_is_refused_once_its_key_is_withdrawn(
    env, ob_app_factory, post_registration
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    ssa = env.ssa()

    def rotate():
        # the Directory replaces its signing key under the same kid; the cached key set goes
        # stale and is fetched again: the SSA no longer verifies
        kid = json.loads(base64.urlsafe_b64decode(ssa.split(".")[0] + "=="))["kid"]
        replacement = json.loads(_rsa_jwk(kid=kid).export_public())
        env.fetcher.documents[env.directory.jwks_url] = {"keys": [replacement]}
        env.clock.advance(301)

    register_twice_with(ssa, env, app, post_registration, between=rotate)
    assert len(store) == 1


def register_twice_with(ssa, env, app, post_registration, *, between):
    """Register with ``ssa`` (201), run ``between``, then send the same SSA in a new request:
    it must be refused as an invalid software statement."""
    now = int(env.clock())  # the app's clock, not the Directory's (which is the real one)
    first = env.request(software_statement=ssa, iat=now, exp=now + 300)
    accepted = post_registration(first, software=env.software, app=app)
    assert accepted.status_code == 201, accepted.get_json()
    between()
    now = int(env.clock())
    again = env.request(software_statement=ssa, iat=now, exp=now + 300)
    response = post_registration(again, software=env.software, app=app)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_software_statement"


def test_signals_report_registration_and_rejection(env, ob_app_factory, post_registration):
    from flask_obdcr.signals import client_registered, registration_rejected

    app = ob_app_factory()
    seen = []
    with (
        client_registered.connected_to(
            lambda s, **kw: seen.append(("ok", kw["client"].client_id)), app
        ),
        registration_rejected.connected_to(
            lambda s, **kw: seen.append(("no", kw["code"], kw["policy"])), app
        ),
    ):
        ok = post_registration(env.request(), software=env.software, app=app)
        post_registration(env.request(aud="https://elsewhere"), software=env.software, app=app)
    assert seen == [
        ("ok", ok.get_json()["client_id"]),
        ("no", "invalid_client_metadata", "request_claims"),
    ]


LOOPBACK_PAGE = "https://127.0.0.1:7443/callback"


@pytest.mark.parametrize(
    "uri,status",
    [
        (LOOPBACK_PAGE, 201),
        ("https://[::1]:7443/callback", 201),
        ("https://localhost:7443/callback", 400),  # a name: may resolve elsewhere
        ("https://0.0.0.0:7443/callback", 400),  # not loopback
        ("http://127.0.0.1:7443/callback", 400),  # still https only
    ],
)
def test_sandbox_setting_admits_https_redirect_uris_on_a_loopback_address(
    uri, status, env, ob_app_factory, post_registration
):
    """OBDCR_LOOPBACK_REDIRECT_URIS (sandboxes: the TPP's page on the presenter's machine)
    admits an https loopback address literal listed in the SSA, nothing else."""
    store = MemoryStore()
    app = ob_app_factory(store=store, OBDCR_LOOPBACK_REDIRECT_URIS=True)
    body = env.request(
        software_statement=env.ssa(software_redirect_uris=[uri]), redirect_uris=[uri]
    )
    response = post_registration(body, software=env.software, app=app)
    if status == 201:
        assert response.status_code == 201, response.get_data(as_text=True)
        assert response.get_json()["redirect_uris"] == [uri]
    else:
        assert_refused(response, 400, "invalid_redirect_uri", store)


def test_loopback_redirect_uri_refused_by_default_and_when_not_in_the_ssa(
    env, ob_app_factory, post_registration
):
    store = MemoryStore()
    default = ob_app_factory(store=store)
    body = env.request(
        software_statement=env.ssa(software_redirect_uris=[LOOPBACK_PAGE]),
        redirect_uris=[LOOPBACK_PAGE],
    )
    assert_refused(
        post_registration(body, software=env.software, app=default),
        400,
        "invalid_redirect_uri",
        store,
    )
    sandbox = ob_app_factory(store=store, OBDCR_LOOPBACK_REDIRECT_URIS=True)
    unlisted = env.request(redirect_uris=[LOOPBACK_PAGE])  # the SSA lists other URIs
    assert_refused(
        post_registration(unlisted, software=env.software, app=sandbox),
        400,
        "invalid_redirect_uri",
        store,
    )


def test_loopback_redirect_setting_must_be_a_boolean(ob_app_factory):
    from flask_obdcr.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="OBDCR_LOOPBACK_REDIRECT_URIS"):
        ob_app_factory(OBDCR_LOOPBACK_REDIRECT_URIS="yes")
