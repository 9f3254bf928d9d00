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


# --------------------------------------------------------------------------- helpers


def sign_compact(header, payload, key, alg: str) -> str:
    """A compact JWS over exactly these header and payload bytes (dicts are JSON-encoded),
    signed with jwcrypto's own per-algorithm signer: whatever the bytes, the signature is
    genuine, so only the parsing rules can refuse the token."""
    import json

    from jwcrypto.jwa import JWA

    if isinstance(header, dict):
        header = json.dumps(header).encode()
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = JWA.signing_alg(alg).sign(key, signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def rsa_jwk(*, bits: int = 2048, exponent: int = 65537, huge_exponent: bool = False):
    """A private RSA JWK; ``huge_exponent``: a public exponent as long as the modulus (the
    costly keys of the issue), which key generators never make, so it is built by hand."""
    import math
    import secrets

    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwcrypto import jwk

    private = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
    if huge_exponent:
        numbers = private.private_numbers()
        p, q = numbers.p, numbers.q
        phi = (p - 1) * (q - 1)
        while True:
            e = secrets.randbits(bits - 1) | (1 << (bits - 2)) | 1
            if math.gcd(e, phi) == 1:
                break
        d = pow(e, -1, phi)
        private = rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
        ).private_key()
    return jwk.JWK.from_pyca(private)


# --------------------------------------------------------------------------- strict JSON (#9)

CLAIMS_TEXT = '{"iss": "x", "exp": 1}'


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(CLAIMS_TEXT.encode("utf-16-le"), id="utf-16-le"),
        pytest.param(CLAIMS_TEXT.encode("utf-16-be"), id="utf-16-be"),
        pytest.param(CLAIMS_TEXT.encode("utf-16"), id="utf-16-with-bom"),
        pytest.param(CLAIMS_TEXT.encode("utf-32-le"), id="utf-32-le"),
        pytest.param(CLAIMS_TEXT.encode("utf-32"), id="utf-32-with-bom"),
        pytest.param(b"\xef\xbb\xbf" + CLAIMS_TEXT.encode(), id="utf-8-bom"),
        pytest.param(b'{"iss": "\\ud800"}', id="lone-high-surrogate-escape"),
        pytest.param(b'{"iss": "\\uDFFF"}', id="lone-low-surrogate-escape"),
        pytest.param(b'{"iss": "\\ude00\\ud83d"}', id="reversed-surrogate-pair"),
        pytest.param(b'{"\\ud800": "x"}', id="lone-surrogate-in-a-member-name"),
        pytest.param(b'{"a": [1, {"b": ["\\udbff"]}]}', id="lone-surrogate-nested"),
        pytest.param(b'{"iss": "\xed\xa0\x80"}', id="surrogate-encoded-in-utf-8"),
    ],
)
def test_peek_refuses_a_payload_that_is_not_utf8_json(payload):
    header = b64(b'{"alg": "PS256"}')
    with pytest.raises(jose.MalformedJWS):
        jose.peek(".".join([header, b64(payload), b64(b"sig")]))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param('{"alg": "PS256"}'.encode("utf-16-le"), id="utf-16-le"),
        pytest.param('{"alg": "PS256"}'.encode("utf-32"), id="utf-32-with-bom"),
        pytest.param(b'\xef\xbb\xbf{"alg": "PS256"}', id="utf-8-bom"),
        pytest.param(b'{"alg": "PS256", "kid": "\\ud800"}', id="lone-surrogate"),
    ],
)
def test_peek_refuses_a_header_that_is_not_utf8_json(header):
    with pytest.raises(jose.MalformedJWS):
        jose.peek(".".join([b64(header), b64(b'{"iss": "x"}'), b64(b"sig")]))


def test_peek_accepts_escaped_surrogate_pairs_and_escaped_backslashes():
    payload = b'{"emoji": "\\ud83d\\ude00", "text": "\\\\ud800", "raw": "\xf0\x9f\x98\x80"}'
    token = ".".join([b64(b'{"alg": "PS256"}'), b64(payload), b64(b"sig")])
    _, claims = jose.peek(token)
    assert claims == {"emoji": "\U0001f600", "text": "\\ud800", "raw": "\U0001f600"}


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b'{"alg": "ES256", "kid": "\\ud800"}', id="lone-surrogate"),
        pytest.param('{"alg": "ES256"}'.encode("utf-16-le"), id="utf-16-le"),
        pytest.param('{"alg": "ES256"}'.encode("utf-16"), id="utf-16-with-bom"),
        pytest.param(b'\xef\xbb\xbf{"alg": "ES256"}', id="utf-8-bom"),
    ],
)
def test_verify_refuses_a_genuinely_signed_header_that_is_not_utf8_json(header, ob_ec_software):
    key = ob_ec_software.signing_key
    token = sign_compact(header, {"iss": "x"}, key, "ES256")
    with pytest.raises(jose.MalformedJWS):
        jose.verify(token, [key], "ES256")


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"crit": []}, id="crit-empty"),
        pytest.param({"crit": ["exp"], "exp": 1}, id="crit-unknown"),
        pytest.param({"crit": ["b64"], "b64": True}, id="crit-b64"),
        pytest.param({"crit": "b64", "b64": True}, id="crit-not-a-list"),
        pytest.param({"b64": True}, id="b64-without-crit"),
    ],
)
def test_crit_is_refused_by_peek_and_verify(extra, ob_ec_software):
    key = ob_ec_software.signing_key
    token = sign_compact({"alg": "ES256", **extra}, {"iss": "x"}, key, "ES256")
    with pytest.raises(jose.MalformedJWS):
        jose.peek(token)
    with pytest.raises(jose.MalformedJWS):
        jose.verify(token, [key], "ES256")
    with pytest.raises(jose.MalformedJWS):
        jose.VerifiedTokens().verify(token, [key], "ES256")


# --------------------------------------------------------------------------- key floors (#7)


@pytest.fixture(scope="module")
def weak_keys():
    """Private JWKs that must never verify a JWS, and the alg each one signs with."""
    from jwcrypto import jwk

    return {
        "rsa-1024-ps256": (rsa_jwk(bits=1024), "PS256"),
        "rsa-1024-rs256": (rsa_jwk(bits=1024), "RS256"),
        "rsa-2047": (rsa_jwk(bits=2047), "PS256"),
        "rsa-e3": (rsa_jwk(exponent=3), "PS256"),
        "rsa-huge-exponent": (rsa_jwk(bits=2048, huge_exponent=True), "PS256"),
        "ec-p384": (jwk.JWK.generate(kty="EC", crv="P-384"), "ES384"),
        "ec-p521": (jwk.JWK.generate(kty="EC", crv="P-521"), "ES512"),
        "ec-secp256k1": (jwk.JWK.generate(kty="EC", crv="secp256k1"), "ES256K"),
    }


WEAK_KINDS = [
    "rsa-1024-ps256",
    "rsa-1024-rs256",
    "rsa-2047",
    "rsa-e3",
    "rsa-huge-exponent",
    "ec-p384",
    "ec-p521",
    "ec-secp256k1",
]


@pytest.mark.parametrize("kind", WEAK_KINDS)
def test_weak_keys_never_verify(kind, weak_keys):
    key, alg = weak_keys[kind]
    token = sign_compact({"alg": alg}, {"iss": "x"}, key, alg)
    public = jose_key_copy(key)
    with pytest.raises(jose.BadSignature):
        jose.verify(token, [public], alg)
    with pytest.raises(jose.BadSignature):
        jose.VerifiedTokens().verify(token, [public], alg)
    assert jose.jws_key_problem(public) is not None


def _public_rsa(n: int, e: int = 65537) -> dict:
    def uint(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "n": uint(n), "e": uint(e)}


@pytest.mark.parametrize(
    ("members", "accepted"),
    [
        pytest.param(_public_rsa((1 << 2047) | 1), True, id="rsa-2048"),
        pytest.param(_public_rsa((1 << 8191) | 1), True, id="rsa-8192"),
        pytest.param(_public_rsa((1 << 2046) | 1), False, id="rsa-2047"),
        pytest.param(_public_rsa((1 << 8192) | 1), False, id="rsa-8193"),
        pytest.param(_public_rsa((1 << 2047) | 1, 3), False, id="rsa-e-3"),
        pytest.param(_public_rsa((1 << 2047) | 1, 65539), False, id="rsa-e-65539"),
        pytest.param(_public_rsa((1 << 2047) | 1, (1 << 2046) | 1), False, id="rsa-e-huge"),
        pytest.param(
            {**_public_rsa((1 << 2047) | 1), "e": "AAEAAQ"}, True, id="rsa-e-65537-leading-zero"
        ),
        pytest.param({**_public_rsa((1 << 2047) | 1), "e": "A" * 9}, False, id="rsa-e-too-long"),
        pytest.param(
            {**_public_rsa(1), "n": b64(b"\x00" + ((1 << 8191) | 1).to_bytes(1024, "big"))},
            True,
            id="rsa-8192-leading-zero-octet",
        ),
        pytest.param(
            {**_public_rsa(1), "n": "!!!!" + _public_rsa((1 << 1023) | 1)["n"] + "!!!!" * 200},
            False,
            id="rsa-n-junk-around-a-short-modulus",
        ),
        pytest.param({"kty": "RSA", "n": 12, "e": "AQAB"}, False, id="rsa-n-not-text"),
        pytest.param({"kty": "RSA", "e": "AQAB"}, False, id="rsa-no-n"),
        pytest.param({"kty": "RSA", "n": "!!", "e": "AQAB"}, False, id="rsa-n-not-base64url"),
        pytest.param({"kty": "EC", "crv": "P-256"}, True, id="ec-p256"),
        pytest.param({"kty": "EC", "crv": "P-384"}, False, id="ec-p384"),
        pytest.param({"kty": "EC", "crv": "P-521"}, False, id="ec-p521"),
        pytest.param({"kty": "EC", "crv": "secp256k1"}, False, id="ec-secp256k1"),
        pytest.param({"kty": "EC"}, False, id="ec-no-curve"),
        pytest.param({"kty": "OKP", "crv": "Ed25519"}, True, id="okp-no-floor"),
    ],
)
def test_jws_key_problem(members, accepted):
    assert (jose.jws_key_problem(members) is None) is accepted


def test_verify_tries_at_most_max_keys_tried():
    from jwcrypto import jwk

    cap = jose.MAX_KEYS_TRIED
    keys = [jwk.JWK.generate(kty="EC", crv="P-256") for _ in range(cap + 1)]
    public = [jose_key_copy(key) for key in keys]
    last_allowed = sign_compact({"alg": "ES256"}, {"iss": "x"}, keys[cap - 1], "ES256")
    beyond = sign_compact({"alg": "ES256"}, {"iss": "x"}, keys[cap], "ES256")
    assert jose.verify(last_allowed, public, "ES256") is public[cap - 1]
    with pytest.raises(jose.BadSignature):
        jose.verify(beyond, public, "ES256")  # a kid-less token: only the first keys are tried
    assert jose.verify(beyond, public[1:], "ES256") is public[cap]


def test_keys_that_cannot_be_tried_do_not_use_up_the_cap(weak_keys, ob_ec_software):
    # keys of another type or below the floor cost no public-key operation: not counted
    skipped = [jose_key_copy(weak_keys["ec-p384"][0]), jose_key_copy(weak_keys["rsa-e3"][0])]
    key = ob_ec_software.signing_key
    token = sign_compact({"alg": "ES256"}, {"iss": "x"}, key, "ES256")
    assert jose.verify(token, skipped * jose.MAX_KEYS_TRIED + [key], "ES256") is key


def test_a_key_set_is_checked_key_by_key(weak_keys, ob_ec_software):
    from jwcrypto import jwk

    weak, alg = weak_keys["rsa-1024-ps256"]
    token = sign_compact({"alg": alg}, {"iss": "x"}, weak, alg)
    key_set = jwk.JWKSet()
    key_set.add(jose_key_copy(weak))
    with pytest.raises(jose.BadSignature):
        jose.verify(token, [key_set], alg)
    strong = ob_ec_software.signing_key
    key_set.add(jose_key_copy(strong))
    good = sign_compact({"alg": "ES256"}, {"iss": "x"}, strong, "ES256")
    assert jose.verify(good, [key_set], "ES256") == strong
