"""JWS key floors and strict JOSE parsing, end to end (docs/architecture.md, "Contract:
tokens, published URLs and keys").

RSA keys under 2048 bits (or with an exponent other than 65537) and EC keys off P-256 never
verify anything: a registration request signed with one is signed by no key of the software
JWKS (400 invalid_client_metadata), an SSA has a bad signature (400
invalid_software_statement), a client assertion is refused (401 invalid_client). Headers and
payloads are UTF-8 JSON without lone surrogates, and ``crit`` is refused. A kid-less token
costs at most ``jose.MAX_KEYS_TRIED`` public-key operations, however large the key set.

Every refusal checks the status, the error code and that nothing was stored; every test also
shows the same set-up accepting the genuine key, so a refusal is the floor's doing.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk
from jwcrypto.jwa import JWA

from flask_obdcr import jose
from flask_obdcr.storage import MemoryStore
from flask_obdcr.testing import REMOVE

BASE = "https://localhost"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# -- keys ------------------------------------------------------------------------------------


def _private_jwk(private, kid: str) -> jwk.JWK:
    key = jwk.JWK.from_pyca(private)
    return jwk.JWK(**{**key.export_private(as_dict=True), "kid": kid, "use": "sig"})


@pytest.fixture(scope="module")
def weak_keys() -> dict[str, tuple[jwk.JWK, str]]:
    """Private keys below the floor that jwcrypto will happily sign with, and their alg."""
    p384 = jwk.JWK.generate(kty="EC", crv="P-384", kid="weak-p384", use="sig")
    return {
        "rsa-1024": (_private_jwk(rsa.generate_private_key(65537, 1024), "weak-rsa-1024"), "PS256"),
        "rsa-e3": (_private_jwk(rsa.generate_private_key(3, 2048), "weak-rsa-e3"), "PS256"),
        "ec-p384": (p384, "ES384"),
    }


def _public(key: jwk.JWK) -> dict:
    return key.export_public(as_dict=True)


def _with_keys(software, *extra: jwk.JWK, first: bool = False) -> dict:
    """The software's JWKS with ``extra`` keys published too (after its own, or before)."""
    own = software.jwks()["keys"]
    added = [_public(key) for key in extra]
    return {"keys": added + own if first else own + added}


# -- helpers ---------------------------------------------------------------------------------


def _post(app, body: str, software):
    with app.test_client() as client:
        return client.post(
            "/register", data=body, content_type="application/jwt", environ_base=software.environ()
        )


def assert_refused(response, status: int, error: str, store: MemoryStore, before: int = 0):
    assert response.status_code == status, response.get_data(as_text=True)[:200]
    assert response.get_json()["error"] == error
    assert response.headers["Cache-Control"] == "no-store"
    assert len(store) == before


def assert_registered(response, store: MemoryStore, count: int):
    assert response.status_code == 201, response.get_data(as_text=True)[:200]
    assert len(store) == count


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _sign_raw(header: dict, payload: bytes, key: jwk.JWK, alg: str) -> str:
    """A genuine signature over exactly these payload bytes (which sign_jwt would re-encode)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(payload)}"
    return f"{signing_input}.{_b64(JWA.signing_alg(alg).sign(key, signing_input.encode()))}"


@pytest.fixture
def verify_ops(monkeypatch) -> list[str]:
    """The kid of every key a public-key verification was attempted with."""
    calls: list[str] = []
    real = jwk.JWK.get_op_key

    def counting(self, operation=None, arg=None):
        if operation == "verify":
            calls.append(self.get("kid"))
        return real(self, operation, arg)

    monkeypatch.setattr(jwk.JWK, "get_op_key", counting)
    return calls


def _decoys(count: int) -> list[jwk.JWK]:
    # P-256 keys: valid, above the floor, cheap to make; none made the signature
    return [
        jwk.JWK.generate(kty="EC", crv="P-256", kid=f"decoy-{n}", use="sig") for n in range(count)
    ]


# -- registration requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "kidless"),
    [
        pytest.param("rsa-1024", False, id="rsa-1024"),
        pytest.param("rsa-1024", True, id="rsa-1024-kidless"),
        pytest.param("rsa-e3", False, id="rsa-e3"),
        pytest.param("ec-p384", False, id="ec-p384"),
    ],
)
def test_request_signed_with_a_weak_key_is_refused(
    kind, kidless, weak_keys, ob_app_factory, ob_fetcher, ob_directory, ob_software, issuer
):
    weak, alg = weak_keys[kind]
    ob_fetcher.documents[ob_software.jwks_url] = _with_keys(ob_software, weak)
    store = MemoryStore()
    # an EC key off P-256 can sign only ES384/ES512, which OBDCR_SIGNING_ALGS can no longer
    # enable: refused by the alg allow-list here, and by the key floor in test_jose.py
    app = ob_app_factory(store=store)
    headers = {"kid": REMOVE} if kidless else None
    body = ob_directory.registration_request(
        ob_software, aud=issuer, key=weak, alg=alg, headers=headers
    )
    assert_refused(_post(app, body, ob_software), 400, "invalid_client_metadata", store)
    genuine = ob_directory.registration_request(ob_software, aud=issuer)
    assert_registered(_post(app, genuine, ob_software), store, 1)


@pytest.mark.parametrize("kind", ["rsa-1024", "rsa-e3"])
def test_ssa_signed_with_a_weak_directory_key_is_refused(
    kind, weak_keys, ob_app_factory, ob_fetcher, ob_directory, ob_software, issuer
):
    weak, alg = weak_keys[kind]
    ob_fetcher.documents[ob_directory.jwks_url] = {
        "keys": [*ob_directory.jwks()["keys"], _public(weak)]
    }
    store = MemoryStore()
    app = ob_app_factory(store=store)
    ssa = ob_directory.ssa(ob_software, key=weak, alg=alg)
    body = ob_directory.registration_request(ob_software, aud=issuer, ssa=ssa)
    assert_refused(_post(app, body, ob_software), 400, "invalid_software_statement", store)
    genuine = ob_directory.registration_request(ob_software, aud=issuer)
    assert_registered(_post(app, genuine, ob_software), store, 1)


def _claims_json(directory, software, issuer, **overrides) -> bytes:
    return json.dumps(directory.registration_claims(software, aud=issuer, **overrides)).encode()


@pytest.mark.parametrize(
    ("case", "error"),
    [
        pytest.param("request-crit-empty", "invalid_client_metadata", id="request-crit-empty"),
        pytest.param("request-crit-b64", "invalid_client_metadata", id="request-crit-b64"),
        pytest.param(
            "request-lone-surrogate", "invalid_client_metadata", id="request-lone-surrogate"
        ),
        pytest.param("request-utf-16", "invalid_client_metadata", id="request-utf-16"),
        pytest.param("request-utf-8-bom", "invalid_client_metadata", id="request-utf-8-bom"),
        pytest.param("ssa-crit-empty", "invalid_software_statement", id="ssa-crit-empty"),
        pytest.param("ssa-lone-surrogate", "invalid_software_statement", id="ssa-lone-surrogate"),
    ],
)
def test_lenient_jose_is_refused(case, error, ob_app_factory, ob_directory, ob_software, issuer):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    key, alg = ob_software.signing_key, ob_software.signing_alg
    header = {"alg": alg, "typ": "JWT", "kid": key["kid"]}
    if case == "request-crit-empty":
        body = ob_directory.registration_request(ob_software, aud=issuer, headers={"crit": []})
    elif case == "request-crit-b64":
        body = ob_directory.registration_request(
            ob_software, aud=issuer, headers={"crit": ["b64"], "b64": True}
        )
    elif case == "request-lone-surrogate":
        body = ob_directory.registration_request(ob_software, aud=issuer, client_name="\ud800")
    elif case == "request-utf-16":
        payload = _claims_json(ob_directory, ob_software, issuer).decode().encode("utf-16")
        body = _sign_raw(header, payload, key, alg)
    elif case == "request-utf-8-bom":
        payload = b"\xef\xbb\xbf" + _claims_json(ob_directory, ob_software, issuer)
        body = _sign_raw(header, payload, key, alg)
    elif case == "ssa-crit-empty":
        ssa = ob_directory.ssa(ob_software, headers={"crit": []})
        body = ob_directory.registration_request(ob_software, aud=issuer, ssa=ssa)
    else:
        ssa = ob_directory.ssa(ob_software, software_client_description="\udc00")
        body = ob_directory.registration_request(ob_software, aud=issuer, ssa=ssa)
    assert_refused(_post(app, body, ob_software), 400, error, store)
    genuine = ob_directory.registration_request(ob_software, aud=issuer)
    assert_registered(_post(app, genuine, ob_software), store, 1)


def test_kidless_request_tries_at_most_max_keys_tried(
    ob_app_factory, ob_fetcher, ob_directory, ob_ec_software, issuer, verify_ops
):
    # a software JWKS stuffed with sig keys ahead of the real one (a hostile TPP, or one that
    # never prunes): a kid-less request costs MAX_KEYS_TRIED verifications, not one per key
    decoys = _decoys(4 * jose.MAX_KEYS_TRIED)
    ob_fetcher.documents[ob_ec_software.jwks_url] = _with_keys(ob_ec_software, *decoys, first=True)
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(ob_ec_software, aud=issuer, headers={"kid": REMOVE})
    assert_refused(_post(app, body, ob_ec_software), 400, "invalid_client_metadata", store)
    request_ops = [kid for kid in verify_ops if kid != ob_directory.ssa_key["kid"]]
    assert request_ops == [f"decoy-{n}" for n in range(jose.MAX_KEYS_TRIED)]
    # with a kid the key is found whatever its place in the set
    genuine = ob_directory.registration_request(ob_ec_software, aud=issuer)
    assert_registered(_post(app, genuine, ob_ec_software), store, 1)


# -- client assertions at the token endpoint --------------------------------------------------
#
# ``bank`` (an Authlib /token on the sandbox bank) and ``store`` are tests/conftest.py's; the
# assertions' aud is the issuer, which the token endpoint accepts however it is configured.


def _register(bank, directory, software, issuer) -> str:
    body = directory.registration_request(
        software, aud=issuer, token_endpoint_auth_method="private_key_jwt"
    )
    response = bank.test_client().post(
        "/register",
        data=body,
        content_type="application/jwt",
        environ_base=software.environ(),
        base_url=BASE,
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["client_id"]


def _token(bank, software, assertion: str):
    return bank.test_client().post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        base_url=BASE,
        environ_base=software.environ(),
    )


def assert_invalid_client(response):
    assert response.status_code == 401, response.get_data(as_text=True)[:200]
    assert response.get_json()["error"] == "invalid_client"
    assert "access_token" not in response.get_json()


@pytest.mark.parametrize(
    ("kind", "kidless"),
    [
        pytest.param("rsa-1024", False, id="rsa-1024"),
        pytest.param("rsa-1024", True, id="rsa-1024-kidless"),
        pytest.param("rsa-e3", False, id="rsa-e3"),
    ],
)
def test_client_assertion_signed_with_a_weak_key_is_refused(
    kind, kidless, weak_keys, bank, store, ob_fetcher, ob_directory, ob_software, issuer
):
    weak, alg = weak_keys[kind]
    ob_fetcher.documents[ob_software.jwks_url] = _with_keys(ob_software, weak)
    client_id = _register(bank, ob_directory, ob_software, issuer)
    headers = {"kid": REMOVE} if kidless else None
    assertion = ob_software.client_assertion(
        client_id, aud=issuer, key=weak, alg=alg, headers=headers
    )
    assert_invalid_client(_token(bank, ob_software, assertion))
    genuine = ob_software.client_assertion(client_id, aud=issuer)
    assert _token(bank, ob_software, genuine).status_code == 200
    assert len(store) == 1


def test_client_assertion_with_crit_is_refused(bank, ob_directory, ob_software, issuer):
    client_id = _register(bank, ob_directory, ob_software, issuer)
    assertion = ob_software.client_assertion(client_id, aud=issuer, headers={"crit": []})
    assert_invalid_client(_token(bank, ob_software, assertion))
    genuine = ob_software.client_assertion(client_id, aud=issuer)
    assert _token(bank, ob_software, genuine).status_code == 200


def test_kidless_assertion_tries_at_most_max_keys_tried(
    bank, ob_fetcher, ob_directory, ob_ec_software, issuer, verify_ops
):
    # the attack: a big software JWKS and a kid-less assertion, with just a client_id
    decoys = _decoys(4 * jose.MAX_KEYS_TRIED)
    ob_fetcher.documents[ob_ec_software.jwks_url] = _with_keys(ob_ec_software, *decoys, first=True)
    client_id = _register(bank, ob_directory, ob_ec_software, issuer)
    foreign = jwk.JWK.generate(kty="EC", crv="P-256")
    assertion = ob_ec_software.client_assertion(client_id, aud=issuer, key=foreign)
    verify_ops.clear()
    assert_invalid_client(_token(bank, ob_ec_software, assertion))
    assert verify_ops == [f"decoy-{n}" for n in range(jose.MAX_KEYS_TRIED)]
