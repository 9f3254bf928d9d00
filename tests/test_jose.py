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
    key = ob_ec_software.signing_key
    assert jose.verify(es256_token, [key], "ES256") is key


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


# --------------------------------------------------------------------------- VerifiedTokens


@pytest.fixture
def signature_checks(monkeypatch):
    """The tokens jose.verify was asked to check (the public-key operations made)."""
    real, calls = jose.verify, []

    def counting(token, keys, alg):
        calls.append(token)
        return real(token, keys, alg)

    monkeypatch.setattr(jose, "verify", counting)
    return calls


def test_a_token_that_verified_is_not_verified_again_with_the_same_key(
    es256_token, ob_ec_software, signature_checks
):
    memory, key = jose.VerifiedTokens(), ob_ec_software.signing_key
    assert memory.verify(es256_token, [key], "ES256") is key
    assert memory.verify(es256_token, [key], "ES256") is key
    assert memory.verify(es256_token, [jose_key_copy(key), key], "ES256") is key
    assert len(signature_checks) == 1
    assert len(memory) == 1


def test_a_refetched_key_set_verifies_the_token_afresh(
    es256_token, ob_ec_software, signature_checks
):
    memory, key = jose.VerifiedTokens(), ob_ec_software.signing_key
    memory.verify(es256_token, [key], "ES256")
    fetched_again = jose_key_copy(key)  # same key material, new object: a new fetch
    assert memory.verify(es256_token, [fetched_again], "ES256") is fetched_again
    assert len(signature_checks) == 2
    # the key is gone from the set (rotated or revoked): refused, however often it verified
    other = jose_key_copy(ob_ec_software.transport_jwk)
    with pytest.raises(jose.BadSignature):
        memory.verify(es256_token, [other], "ES256")
    with pytest.raises(jose.BadSignature):
        memory.verify(es256_token, [], "ES256")


def test_the_algorithm_is_part_of_what_is_remembered(es256_token, ob_ec_software):
    memory, key = jose.VerifiedTokens(), ob_ec_software.signing_key
    memory.verify(es256_token, [key], "ES256")
    with pytest.raises(jose.BadSignature):
        memory.verify(es256_token, [key], "PS256")


def test_tokens_that_fail_are_never_remembered(es256_token, ob_ec_software, signature_checks):
    memory, key = jose.VerifiedTokens(), ob_ec_software.signing_key
    header, payload, signature = es256_token.split(".")
    forged = f"{header}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    for attempt in (1, 2):
        with pytest.raises(jose.BadSignature):
            memory.verify(forged, [key], "ES256")
        assert len(signature_checks) == attempt
    assert len(memory) == 0


def test_peek_gives_copies_the_caller_may_change(es256_token, ob_ec_software):
    memory = jose.VerifiedTokens()
    assert memory.peek(es256_token) == jose.peek(es256_token)  # not remembered yet
    memory.verify(es256_token, [ob_ec_software.signing_key], "ES256")
    header, claims = memory.peek(es256_token)
    assert (header, claims) == jose.peek(es256_token)
    claims["iss"] = "changed"
    claims["redirect_uris"].append("https://evil.example/cb")
    header["alg"] = "none"
    assert memory.peek(es256_token) == jose.peek(es256_token)


def test_memory_is_bounded_and_can_be_off(ob_directory, ob_ec_software, signature_checks):
    key = ob_ec_software.signing_key
    tokens = [
        ob_directory.registration_request(ob_ec_software, aud=f"https://b{n}.example")
        for n in range(3)
    ]
    memory = jose.VerifiedTokens(maxsize=2)
    for token in tokens + tokens[:1]:
        memory.verify(token, [key], "ES256")
    assert len(memory) == 2
    assert len(signature_checks) == 4  # the first was evicted by the third
    off = jose.VerifiedTokens(maxsize=0)
    off.verify(tokens[0], [key], "ES256")
    off.verify(tokens[0], [key], "ES256")
    assert len(signature_checks) == 6
    assert len(off) == 0


def jose_key_copy(key):
    from jwcrypto import jwk

    return jwk.JWK.from_json(key.export_public())
