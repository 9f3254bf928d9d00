"""jose.peek and jose.verify: strict compact form, pinned algorithm, fixed-width EC signatures."""

from __future__ import annotations

import base64

import pytest

from flask_obdcr import jose


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.fixture(scope="module")
def es256_token(ob_directory, ob_ec_software):
    return ob_directory.registration_request(ob_ec_software, aud="https://bank.example")


def test_verify_accepts_the_genuine_signature(es256_token, ob_ec_software):
    assert jose.verify(es256_token, [ob_ec_software.signing_key], "ES256") is None


def test_zero_padded_ec_signature_is_refused(es256_token, ob_ec_software):
    # R and S each padded with a leading zero byte: the same numbers, 66 bytes; a verifier
    # that splits the signature in half would accept it (a malleable signature)
    header, payload, signature = es256_token.split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    padded = b64(b"\x00" + raw[:32] + b"\x00" + raw[32:])
    with pytest.raises(jose.BadSignature):
        jose.verify(f"{header}.{payload}.{padded}", [ob_ec_software.signing_key], "ES256")


def test_alg_is_pinned_by_the_caller(es256_token, ob_ec_software):
    with pytest.raises(jose.BadSignature):
        jose.verify(es256_token, [ob_ec_software.signing_key], "PS256")


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c\n",
        " a.b.c",
        "a.b.",
        "a..c",
        "a.b.c.d",
        "a.b",
        "é.b.c",
        "a+b.c.d",
        None,
        42,
    ],
    ids=[
        "trailing-newline",
        "leading-space",
        "empty-signature",
        "empty-payload",
        "four-parts",
        "two-parts",
        "non-ascii",
        "base64-plus",
        "none",
        "int",
    ],
)
def test_peek_refuses_what_is_not_a_compact_jws(token):
    with pytest.raises(jose.MalformedJWS):
        jose.peek(token)


@pytest.mark.parametrize(
    "payload",
    [b'{"exp": 1e400}', b'{"exp": NaN}', b'{"exp": Infinity}', b"[1, 2]", b'"text"', b"{"],
    ids=["overflow", "nan", "infinity", "array", "string", "truncated"],
)
def test_peek_refuses_payloads_that_are_not_json_objects(payload):
    header = b64(b'{"alg": "PS256"}')
    with pytest.raises(jose.MalformedJWS):
        jose.peek(".".join([header, b64(payload), b64(b"sig")]))


def test_peek_returns_header_and_claims():
    token = ".".join([b64(b'{"alg": "PS256", "kid": "k"}'), b64(b'{"iss": "x"}'), b64(b"sig")])
    header, claims = jose.peek(token)
    assert header == {"alg": "PS256", "kid": "k"}
    assert claims == {"iss": "x"}
