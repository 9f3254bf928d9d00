"""Every 201, 200 and 400 of the DCR endpoints against the official OB DCR OpenAPI v3.3.

The OAS (``client-registration-openapi.json``, what TPPs generate their clients from) answers
POST /register with ``201 OBClientRegistration1``, GET and PUT /register/<id> with
``200 OBClientRegistration1``, and refusals with ``400 RegistrationError``.
``OBClientRegistration1`` requires the registration request's own ``iss`` (the software_id),
``iat``, ``exp``, ``aud`` and ``jti`` (a UUIDv4): the SSA's registered claims (its
``iss: "OpenBanking Ltd"``, its 16-hex ``jti``, its ``iat``) are flattened into the response
like every other SSA claim, but must never overwrite the request's.

The bank here is addressed the OB way, by its Directory organisation id (``aud``, "the
unique identifier for the ASPSP issued by the issuer of the software statement", Base62,
up to 18 characters); addressed by its issuer URL it answers with that URL, the one
deviation from the OAS it keeps (see ``test_an_issuer_url_aud_is_echoed``).

The OAS file is kept in the repository, byte for byte (``docs/specs/``, with its provenance).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from jsonschema import Draft4Validator, FormatChecker
from jwcrypto import jwk
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from flask_obdcr.storage import MemoryStore
from flask_obdcr.testing import REMOVE, SandboxDirectory, Software
from flask_obdcr.testing.fixtures import ISSUER

REPO = Path(__file__).resolve().parents[1]
OAS_FILE = REPO / "docs" / "specs" / "client-registration-openapi.json"
OAS_URI = "urn:ob:dcr:client-registration-openapi:v3.3"
#: the responses of the OAS paths: 201/200 of POST, GET, PUT; 400 of POST and PUT
CLIENT_REGISTRATION = (
    "#/components/responses/OBClientRegistration1/content/application~1json/schema"
)
REGISTRATION_ERROR = "#/components/responses/400Error/content/application~1json/schema"

#: the bank's organisation id in the Directory: how an OB TPP addresses it (``aud``)
ASPSP_ORG_ID = "0015800001041RHAAY"
#: what the OB Directory puts in an SSA's jti: 16 hex characters, not a UUID
DIRECTORY_JTI = "8a3c5e7f9b1d2f40"
#: shown once, so never in GET or in the store
ONCE = ("client_secret", "client_secret_expires_at", "registration_access_token")
REQUEST_CLAIMS = ("iss", "iat", "exp", "aud", "jti")

# -- the OAS as a JSON Schema validator ----------------------------------------------------


def _uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme)) and bool(parts.netloc)


def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


def _jwt(value: object) -> bool:
    return not isinstance(value, str) or bool(
        re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", value)
    )


def format_checker() -> FormatChecker:
    """The formats the OAS uses: ``uri`` (redirect_uris), ``int32`` (the timestamps) and
    ``JWT`` (software_statement); jsonschema checks only the first, and only with an extra
    package installed, so all three are checked here."""
    checker = FormatChecker()
    checker.checks("uri")(_uri)
    checker.checks("int32")(_int32)
    checker.checks("JWT")(_jwt)
    return checker


@pytest.fixture(scope="module")
def oas() -> dict[str, Any]:
    return json.loads(OAS_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def oas_errors(oas):
    """``oas_errors(body, CLIENT_REGISTRATION)``: every way ``body`` breaks the OAS, as
    ``"<path>: <message>"`` strings (empty when it validates)."""
    assert oas["openapi"].startswith("3.0") and oas["info"]["version"] == "v3.3.0"
    # OAS 3.0 schema objects are a subset of JSON Schema draft 4 (no nullable used here)
    registry = Registry().with_resource(OAS_URI, Resource(contents=oas, specification=DRAFT4))
    checker = format_checker()

    def errors(body: Any, schema: str) -> list[str]:
        validator = Draft4Validator(
            {"$ref": OAS_URI + schema}, registry=registry, format_checker=checker
        )
        found = validator.iter_errors(body)
        return sorted(f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in found)

    return errors


def test_the_oas_validator_is_not_vacuous(oas_errors):
    """It finds the five errors every response used to have, and the formats."""
    body = {
        "client_id": "c",
        "iss": "OpenBanking Ltd",
        "iat": 1700000000,
        "jti": DIRECTORY_JTI,
        "redirect_uris": ["not a uri"],
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "scope": "openid",
        "software_statement": "a.b.c",
        "application_type": "web",
        "id_token_signed_response_alg": "PS256",
        "request_object_signing_alg": "PS256",
    }
    paths = [e.split(":")[0] for e in oas_errors(body, CLIENT_REGISTRATION)]
    assert paths == [".", ".", "iss", "jti", "jti", "redirect_uris/0"]  # exp, aud required
    assert oas_errors({"error": "invalid_request"}, REGISTRATION_ERROR)
    assert oas_errors(
        {"error": "invalid_client_metadata", "error_description": ""}, REGISTRATION_ERROR
    )
    assert "iat: 2147483648 is not a 'int32'" in oas_errors({"iat": 2**31}, CLIENT_REGISTRATION)


# -- the bank, and how a TPP talks to it ---------------------------------------------------


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def bank(ob_app_factory, store, ob_fetcher, ob_directory, ob_software, ob_ec_software):
    ob_fetcher.documents.update(ob_directory.documents())  # with both pieces of software
    return ob_app_factory(store=store, OBDCR_AUDIENCES=[ASPSP_ORG_ID])


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def request_for(directory, software, *, ssa: str | None = None, **claims: Any) -> str:
    """A registration request addressed the OB way, with an SSA the real Directory would
    issue (its own iss, a 16-hex jti, an iat a minute before the request's)."""
    claims.setdefault("aud", ASPSP_ORG_ID)
    if ssa is None:
        ssa = directory.ssa(software, jti=DIRECTORY_JTI, iat=int(directory.clock()) - 60)
    return directory.registration_request(software, ssa=ssa, **claims)


def post(app, body: str, software, *, environ=None):
    with app.test_client() as client:
        return client.post(
            "/register",
            data=body,
            content_type="application/jwt",
            environ_base=software.environ() if environ is None else environ,
        )


def manage(app, method: str, registration: dict[str, Any], software, *, body=None):
    """GET/PUT /register/<id> with the RFC 7592 registration access token."""
    kwargs = {"data": body, "content_type": "application/jwt"} if body is not None else {}
    with app.test_client() as client:
        return client.open(
            f"/register/{registration['client_id']}",
            method=method,
            headers={"Authorization": f"Bearer {registration['registration_access_token']}"},
            environ_base=software.environ(),
            **kwargs,
        )


def register(app, directory, software, **claims) -> tuple[dict[str, Any], str]:
    body = request_for(directory, software, **claims)
    response = post(app, body, software)
    assert response.status_code == 201, response.get_json()
    return response.get_json(), body


def assert_the_requests_claims(data: dict[str, Any], body: str) -> None:
    """The response carries the request's iss/iat/exp/aud/jti, not the SSA's."""
    sent, ssa = claims_of(body), claims_of(claims_of(body)["software_statement"])
    assert {k: data[k] for k in REQUEST_CLAIMS} == {k: sent[k] for k in REQUEST_CLAIMS}
    assert data["iss"] == sent["software_id"] != ssa["iss"] == "OpenBanking Ltd"
    assert data["jti"] != ssa["jti"] and data["iat"] != ssa["iat"]
    # every other SSA claim is still flattened to the top level
    for name, value in ssa.items():
        if name not in REQUEST_CLAIMS:
            assert data[name] == value, name


# -- 201: POST /register --------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,software",
    [
        pytest.param("tls_client_auth", "ob_software", id="tls_client_auth"),
        pytest.param("private_key_jwt", "ob_software", id="private_key_jwt"),
        pytest.param("client_secret_basic", "ob_software", id="client_secret_basic"),
        pytest.param("client_secret_post", "ob_software", id="client_secret_post"),
        pytest.param("private_key_jwt", "ob_ec_software", id="private_key_jwt-es256"),
    ],
)
def test_post_201_validates(method, software, request, bank, store, ob_directory, oas_errors):
    software = request.getfixturevalue(software)
    data, body = register(bank, ob_directory, software, token_endpoint_auth_method=method)
    assert oas_errors(data, CLIENT_REGISTRATION) == []
    assert data["token_endpoint_auth_method"] == method
    assert ("client_secret" in data) == method.startswith("client_secret")
    assert_the_requests_claims(data, body)
    stored = store.get(data["client_id"])
    assert stored.to_response() == {
        k: v for k, v in data.items() if k not in (*ONCE, "registration_client_uri")
    }
    # the SSA itself is kept whole, registered claims included
    assert stored.ssa_claims["iss"] == "OpenBanking Ltd"
    assert stored.ssa_claims["jti"] == DIRECTORY_JTI


def test_the_ssa_registered_claims_do_not_overwrite_the_requests(
    bank, ob_directory, ob_software, ob_clock, oas_errors
):
    now = int(ob_clock())
    jti = str(uuid.uuid4())
    ssa = ob_directory.ssa(ob_software, jti=DIRECTORY_JTI, iat=now - 3600, exp=now + 3600)
    data, _ = register(
        bank, ob_directory, ob_software, ssa=ssa, iat=now - 5, exp=now + 120, jti=jti
    )
    assert oas_errors(data, CLIENT_REGISTRATION) == []
    assert (data["iss"], data["iat"], data["exp"], data["aud"], data["jti"]) == (
        ob_software.software_id,
        now - 5,
        now + 120,
        ASPSP_ORG_ID,
        jti,
    )


@pytest.mark.parametrize(
    "aud,answered",
    [
        pytest.param(ASPSP_ORG_ID, ASPSP_ORG_ID, id="org-id"),
        pytest.param([ASPSP_ORG_ID], ASPSP_ORG_ID, id="list-of-one"),
        pytest.param(["https://other.example", ASPSP_ORG_ID], ASPSP_ORG_ID, id="list-named-once"),
        # both name this bank: the one the OAS can carry is answered
        pytest.param([ISSUER, ASPSP_ORG_ID], ASPSP_ORG_ID, id="issuer-and-org-id"),
    ],
)
def test_aud_is_answered_as_the_one_string_that_named_this_bank(
    aud, answered, bank, ob_directory, ob_software, issuer, oas_errors
):
    """The OAS's aud is a string; RFC 7519 lets a request carry a list."""
    assert issuer == ISSUER
    data, _ = register(bank, ob_directory, ob_software, aud=aud)
    assert data["aud"] == answered
    assert oas_errors(data, CLIENT_REGISTRATION) == []


@pytest.mark.parametrize(
    "aud",
    [pytest.param(ISSUER, id="string"), pytest.param(["https://x.example", ISSUER], id="list")],
)
def test_an_issuer_url_aud_is_echoed(aud, bank, ob_directory, ob_software, oas_errors):
    """Addressed by its issuer URL (RFC 7523 style, accepted), the bank answers with that
    URL: the OAS's aud pattern (Base62, 18) is the only thing the response then breaks."""
    data, _ = register(bank, ob_directory, ob_software, aud=aud)
    assert data["aud"] == ISSUER
    errors = oas_errors(data, CLIENT_REGISTRATION)
    assert errors and all(e.startswith("aud: ") for e in errors), errors


@pytest.mark.parametrize(
    "jti",
    [
        # what uuid libraries and the OB conformance tool send
        pytest.param(str(uuid.uuid4()), id="lowercase-uuid4"),
        # the case of the OB data dictionary's own pattern
        pytest.param(str(uuid.uuid4()).upper(), id="uppercase-uuid4"),
    ],
)
def test_a_uuid4_jti_is_echoed_as_sent(jti, bank, ob_directory, ob_software, oas_errors):
    data, _ = register(bank, ob_directory, ob_software, jti=jti)
    assert data["jti"] == jti
    assert oas_errors(data, CLIENT_REGISTRATION) == []


def test_fractional_timestamps_are_answered_as_integers(
    bank, ob_directory, ob_software, ob_clock, oas_errors
):
    now = int(ob_clock())
    data, _ = register(bank, ob_directory, ob_software, iat=now - 0.5, exp=now + 299.75)
    assert (data["iat"], data["exp"]) == (now - 1, now + 299)
    assert oas_errors(data, CLIENT_REGISTRATION) == []


# -- 200: GET and PUT /register/<id> --------------------------------------------------------


def test_get_200_validates_and_answers_the_posts_claims(
    bank, ob_directory, ob_software, oas_errors
):
    registration, body = register(bank, ob_directory, ob_software)
    read = manage(bank, "GET", registration, ob_software)
    assert read.status_code == 200, read.get_json()
    data = read.get_json()
    assert oas_errors(data, CLIENT_REGISTRATION) == []
    assert data == {k: v for k, v in registration.items() if k not in ONCE}
    assert_the_requests_claims(data, body)


@pytest.mark.parametrize("method", ["private_key_jwt", "client_secret_basic", "tls_client_auth"])
def test_put_200_validates_and_answers_the_puts_claims(
    method, bank, store, ob_directory, ob_software, ob_clock, oas_errors
):
    registration, _ = register(bank, ob_directory, ob_software)
    ob_clock.advance(60)
    now = int(ob_clock())
    update = request_for(
        ob_directory,
        ob_software,
        iat=now,
        exp=now + 200,
        token_endpoint_auth_method=method,
        redirect_uris=[ob_software.redirect_uris[0]],
    )
    updated = manage(bank, "PUT", registration, ob_software, body=update)
    assert updated.status_code == 200, updated.get_json()
    data = updated.get_json()
    assert oas_errors(data, CLIENT_REGISTRATION) == []
    assert data["client_id"] == registration["client_id"]
    assert data["redirect_uris"] == [ob_software.redirect_uris[0]]
    assert_the_requests_claims(data, update)
    assert data["jti"] != registration["jti"] and data["iat"] == now
    # GET answers what the last PUT sent
    read = manage(bank, "GET", registration, ob_software)
    assert read.status_code == 200
    assert read.get_json() == {k: v for k, v in data.items() if k not in ONCE}
    assert oas_errors(read.get_json(), CLIENT_REGISTRATION) == []
    assert store.get(registration["client_id"]).to_response()["jti"] == claims_of(update)["jti"]


# -- 400: refusals --------------------------------------------------------------------------


@dataclass
class Env:
    directory: SandboxDirectory
    software: Software
    other_software: Software
    clock: Any

    def request(self, **claims: Any) -> str:
        return request_for(self.directory, self.software, **claims)

    def ssa(self, **claims: Any) -> str:
        return self.directory.ssa(self.software, **claims)


@pytest.fixture
def env(ob_directory, ob_software, ob_ec_software, ob_clock) -> Env:
    return Env(ob_directory, ob_software, ob_ec_software, ob_clock)


def _ssa_signed_by_a_foreign_key(e: Env) -> str:
    return e.request(ssa=e.ssa(key=jwk.JWK.generate(kty="EC", crv="P-256", kid="k"), alg="ES256"))


REFUSALS = [
    # jti: a UUIDv4, or refused (see flask_obdcr/policies/request_claims.py)
    ("jti-16-hex", lambda e: e.request(jti=DIRECTORY_JTI), "invalid_client_metadata"),
    ("jti-not-uuid", lambda e: e.request(jti="x" * 36), "invalid_client_metadata"),
    ("jti-uuid1", lambda e: e.request(jti=str(uuid.uuid1())), "invalid_client_metadata"),
    ("jti-braced", lambda e: e.request(jti=f"{{{uuid.uuid4()}}}"), "invalid_client_metadata"),
    ("jti-missing", lambda e: e.request(jti=REMOVE), "invalid_client_metadata"),
    # the other request claims
    ("aud-wrong", lambda e: e.request(aud="0015800001041XXXXX"), "invalid_client_metadata"),
    (
        "iss-not-software-id",
        lambda e: e.request(iss=e.other_software.software_id),
        "invalid_client_metadata",
    ),
    (
        "exp-past",
        lambda e: e.request(iat=int(e.clock()) - 600, exp=int(e.clock()) - 300),
        "invalid_client_metadata",
    ),
    # client metadata
    (
        "auth-method-none",
        lambda e: e.request(token_endpoint_auth_method="none"),
        "invalid_client_metadata",
    ),
    (
        "id-token-alg-missing",
        lambda e: e.request(id_token_signed_response_alg=REMOVE),
        "invalid_client_metadata",
    ),
    (
        "request-object-alg-missing",
        lambda e: e.request(request_object_signing_alg=REMOVE),
        "invalid_client_metadata",
    ),
    (
        "scope-beyond-roles",
        lambda e: e.request(scope="openid fundsconfirmations"),
        "invalid_client_metadata",
    ),
    # redirect URIs
    (
        "redirect-uri-http",
        lambda e: e.request(redirect_uris=["http://tpp.example.com/cb"]),
        "invalid_redirect_uri",
    ),
    (
        "redirect-uri-not-in-ssa",
        lambda e: e.request(redirect_uris=["https://evil.example/cb"]),
        "invalid_redirect_uri",
    ),
    # the software statement
    ("ssa-undecodable", lambda e: e.request(ssa="not.a.jwt"), "invalid_software_statement"),
    ("ssa-foreign-key", _ssa_signed_by_a_foreign_key, "invalid_software_statement"),
    (
        "ssa-untrusted-issuer",
        lambda e: e.request(ssa=e.ssa(iss="Some Other Directory")),
        "unapproved_software_statement",
    ),
    (
        "org-revoked",
        lambda e: e.request(ssa=e.ssa(org_status="Revoked")),
        "unapproved_software_statement",
    ),
]
REFUSAL_PARAMS = [pytest.param(build, error, id=name) for name, build, error in REFUSALS]


@pytest.mark.parametrize("build,error", REFUSAL_PARAMS)
def test_post_400_validates(build, error, env, bank, store, ob_software, oas_errors):
    response = post(bank, build(env), ob_software)
    assert response.status_code == 400, response.get_json()
    data = response.get_json()
    assert data["error"] == error
    assert oas_errors(data, REGISTRATION_ERROR) == []
    assert len(store) == 0


@pytest.mark.parametrize("build,error", REFUSAL_PARAMS)
def test_put_400_validates(build, error, env, bank, store, ob_directory, ob_software, oas_errors):
    registration, _ = register(bank, ob_directory, ob_software)
    before = store.get(registration["client_id"])
    response = manage(bank, "PUT", registration, ob_software, body=build(env))
    assert response.status_code == 400, response.get_json()
    data = response.get_json()
    assert data["error"] == error
    assert oas_errors(data, REGISTRATION_ERROR) == []
    assert list(store.list()) == [before]


def test_put_400_of_a_replayed_request_validates(
    bank, store, ob_directory, ob_software, oas_errors
):
    registration, body = register(bank, ob_directory, ob_software)
    before = store.get(registration["client_id"])
    response = manage(bank, "PUT", registration, ob_software, body=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert oas_errors(response.get_json(), REGISTRATION_ERROR) == []
    assert list(store.list()) == [before]
