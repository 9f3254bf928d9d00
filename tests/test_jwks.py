"""Tests for flask_obdcr.jwks: the URL rule, the fetchers, the cache and the client.

Client logic runs on StaticFetcher with an injected clock; HTTPFetcher runs against a real
HTTPS server on loopback (its own throw-away CA), never the internet.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import NameOID
from jwcrypto.common import base64url_decode
from jwcrypto.jwk import JWK, JWKSet

from flask_obdcr import jwks
from flask_obdcr.jwks import (
    CacheEntry,
    FetchedDocument,
    HTTPFetcher,
    JWKSClient,
    JWKSError,
    JWKSForbidden,
    JWKSUnavailable,
    KeyNotFound,
    MemoryJWKSCache,
    StaticFetcher,
)
from flask_obdcr.testing.pki import CertificateAuthority, generate_key, key_pem, pem

URL = "https://keystore.example/org/software.jwks"
T0 = 1_700_000_000.0


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- keys


@pytest.fixture(scope="module")
def keys() -> dict[str, JWK]:
    # Generated once per module: RSA generation is the slow part of these tests.
    return {
        "rsa1": JWK.generate(kty="RSA", size=2048, kid="rsa1"),
        "rsa2": JWK.generate(kty="RSA", size=2048, kid="rsa2"),
        "p256": JWK.generate(kty="EC", crv="P-256", kid="p256"),
        "p384": JWK.generate(kty="EC", crv="P-384", kid="p384"),
        "p521": JWK.generate(kty="EC", crv="P-521", kid="p521"),
        "ed": JWK.generate(kty="OKP", crv="Ed25519", kid="ed"),
    }


def public(key: JWK, **extra: Any) -> dict[str, Any]:
    return {**key.export_public(as_dict=True), **extra}


def jwks_doc(*members: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(members)}


def kids(found: list[JWK]) -> list[str]:
    return [key["kid"] for key in found]


def make_client(fetcher: StaticFetcher, clock: Clock, **options: Any) -> JWKSClient:
    return JWKSClient(fetcher, clock=clock, **options)


# --------------------------------------------------------------------------- client: caching


def test_fresh_hit_makes_no_call_and_does_not_reparse(keys, monkeypatch):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))})
    clock = Clock()
    client = make_client(fetcher, clock)

    first = client.key_set(URL)
    assert isinstance(first, JWKSet)
    assert [key["kid"] for key in first] == ["rsa1"]
    assert fetcher.calls == [URL]

    # A warm lookup must not parse JSON or import keys again.
    def no_parsing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("warm lookup parsed the JWKS again")

    monkeypatch.setattr(jwks, "_parse_jwks", no_parsing)
    clock.now = T0 + 299
    assert client.key_set(URL) is first
    assert client.find_key(URL, kid="rsa1", alg="PS256") is next(iter(first))
    assert fetcher.calls == [URL]


def test_entry_expires_after_max_age(keys):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))}, max_age=120)
    clock = Clock()
    client = make_client(fetcher, clock)

    client.key_set(URL)
    clock.now = T0 + 119.999
    client.key_set(URL)
    assert fetcher.calls == [URL]

    fetcher.documents[URL] = jwks_doc(public(keys["rsa2"]))
    clock.now = T0 + 120
    assert [key["kid"] for key in client.key_set(URL)] == ["rsa2"]
    assert fetcher.calls == [URL, URL]
    entry = client.cache.get(URL)
    assert (entry.fetched_at, entry.fresh_until, entry.stale_until) == (
        T0 + 120,
        T0 + 240,
        T0 + 240 + 3600,
    )


@pytest.mark.parametrize(
    ("max_age", "ttl"),
    [
        pytest.param(None, 300, id="absent-default"),
        pytest.param(0, 60, id="no-store-clamped-up"),
        pytest.param(10, 60, id="short-clamped-up"),
        pytest.param(60, 60, id="at-min"),
        pytest.param(500, 500, id="within-bounds"),
        pytest.param(86400, 86400, id="at-max"),
        pytest.param(10**9, 86400, id="long-clamped-down"),
    ],
)
def test_ttl_is_max_age_clamped(keys, max_age, ttl):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["p256"]))}, max_age=max_age)
    client = make_client(fetcher, Clock())
    client.key_set(URL)
    entry = client.cache.get(URL)
    assert entry.fetched_at == T0
    assert entry.fresh_until == T0 + ttl
    assert entry.stale_until == T0 + ttl + 3600


def test_ttl_options_are_honoured(keys):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["p256"]))}, max_age=None)
    client = make_client(fetcher, Clock(), default_ttl=42, min_ttl=1, max_ttl=100, stale_ttl=7)
    client.key_set(URL)
    entry = client.cache.get(URL)
    assert (entry.fresh_until, entry.stale_until) == (T0 + 42, T0 + 49)


def test_per_url_fetched_document_max_age(keys):
    body = json.dumps(jwks_doc(public(keys["p256"]))).encode()
    fetcher = StaticFetcher({URL: FetchedDocument(body=body, max_age=900)})
    client = make_client(fetcher, Clock())
    client.key_set(URL)
    assert client.cache.get(URL).fresh_until == T0 + 900


# --------------------------------------------------------------------------- client: refresh


def test_unknown_kid_forces_one_refresh_then_rate_limited(keys):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))})
    clock = Clock()
    client = make_client(fetcher, clock)
    client.key_set(URL)
    assert fetcher.calls == [URL]

    # Right after a fetch, an unknown kid does not refetch (rate limit counts that fetch).
    clock.now = T0 + 29
    with pytest.raises(KeyNotFound):
        client.find_key(URL, kid="rsa2", alg="PS256")
    assert fetcher.calls == [URL]

    # The TPP rotated its keys: the unknown kid causes exactly one refresh, which finds it.
    fetcher.documents[URL] = jwks_doc(public(keys["rsa1"]), public(keys["rsa2"]))
    clock.now = T0 + 100
    assert client.find_key(URL, kid="rsa2", alg="PS256")["kid"] == "rsa2"
    assert fetcher.calls == [URL, URL]
    assert client.cache.get(URL).fresh_until == T0 + 100 + 300

    # Random kids within refresh_interval: no more fetches.
    for second, kid in ((100, "x1"), (110, "x2"), (129.9, "x3")):
        clock.now = T0 + second
        with pytest.raises(KeyNotFound) as caught:
            client.candidate_keys(URL, kid=kid, alg="PS256")
        assert caught.value.url == URL
    assert fetcher.calls == [URL, URL]

    # After refresh_interval one more refresh is allowed, and again only one.
    clock.now = T0 + 130
    with pytest.raises(KeyNotFound) as caught:
        client.candidate_keys(URL, kid="x4", alg="PS256")
    assert str(caught.value) == (f"no key for kid 'x4' and alg 'PS256' in JWKS {URL!r}")
    clock.now = T0 + 131
    with pytest.raises(KeyNotFound):
        client.candidate_keys(URL, kid="x5", alg="PS256")
    assert fetcher.calls == [URL, URL, URL]


def test_refresh_failure_on_unknown_kid_is_key_not_found(keys):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))})
    clock = Clock()
    client = make_client(fetcher, clock)
    client.key_set(URL)
    del fetcher.documents[URL]
    clock.now = T0 + 60
    with pytest.raises(KeyNotFound) as caught:
        client.find_key(URL, kid="rsa2", alg="PS256")
    assert isinstance(caught.value.__cause__, JWKSUnavailable)
    assert fetcher.calls == [URL, URL]
    # The known key is still served from the (still fresh) entry.
    assert client.find_key(URL, kid="rsa1", alg="PS256")["kid"] == "rsa1"
    assert fetcher.calls == [URL, URL]


def test_unsupported_alg_is_key_not_found_without_fetch(keys):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))})
    client = make_client(fetcher, Clock())
    for alg in ("HS256", "none", "ps256"):
        with pytest.raises(KeyNotFound) as caught:
            client.candidate_keys(URL, kid=None, alg=alg)
        assert str(caught.value) == f"no JWKS key can verify alg {alg!r}"
    assert fetcher.calls == []


# --------------------------------------------------------------------------- client: failure


def test_stale_served_while_fetch_fails_until_stale_until(keys):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))}, max_age=300)
    clock = Clock()
    client = make_client(fetcher, clock)
    first = client.key_set(URL)
    del fetcher.documents[URL]

    clock.now = T0 + 300  # expired: a fetch is tried, fails, the stale set is served
    assert client.key_set(URL) is first
    assert fetcher.calls == [URL, URL]

    clock.now = T0 + 329  # within refresh_interval of the failure: no new attempt
    assert client.key_set(URL) is first
    assert fetcher.calls == [URL, URL]

    clock.now = T0 + 330  # back-off over: one more attempt, still failing, still stale
    assert client.key_set(URL) is first
    assert fetcher.calls == [URL, URL, URL]

    clock.now = T0 + 300 + 3600 - 1  # the last second of staleness
    assert client.key_set(URL) is first
    assert fetcher.calls == [URL, URL, URL, URL]

    clock.now = T0 + 300 + 3600  # stale_until reached: nothing usable left
    with pytest.raises(JWKSUnavailable) as caught:
        client.key_set(URL)
    assert str(caught.value) == (f"JWKS fetch of {URL!r} failed 1 s ago; next attempt in 29 s")

    # The host recovers: after the back-off the set is fetched afresh.
    fetcher.documents[URL] = jwks_doc(public(keys["rsa2"]))
    clock.now = T0 + 300 + 3600 + 29
    assert [key["kid"] for key in client.key_set(URL)] == ["rsa2"]
    assert len(fetcher.calls) == 5


def test_cold_and_failing_is_unavailable_with_backoff(keys):
    fetcher = StaticFetcher({})
    clock = Clock()
    client = make_client(fetcher, clock)
    with pytest.raises(JWKSUnavailable) as caught:
        client.key_set(URL)
    assert str(caught.value) == f"no document for {URL!r}"
    assert caught.value.url == URL
    assert fetcher.calls == [URL]
    assert client.cache.get(URL) is None

    fetcher.documents[URL] = jwks_doc(public(keys["rsa1"]))
    clock.now = T0 + 29.5
    with pytest.raises(JWKSUnavailable):
        client.key_set(URL)
    assert fetcher.calls == [URL]

    clock.now = T0 + 30
    assert [key["kid"] for key in client.key_set(URL)] == ["rsa1"]
    assert fetcher.calls == [URL, URL]


def test_zero_refresh_interval_disables_backoff(keys):
    fetcher = StaticFetcher({})
    client = make_client(fetcher, Clock(), refresh_interval=0)
    with pytest.raises(JWKSUnavailable):
        client.key_set(URL)
    fetcher.documents[URL] = jwks_doc(public(keys["rsa1"]))
    assert [key["kid"] for key in client.key_set(URL)] == ["rsa1"]
    assert fetcher.calls == [URL, URL]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"<html>", "is not JSON", id="html"),
        pytest.param(b"\xff\xfe\x00", "is not JSON", id="not-utf8"),
        pytest.param(b"[]", 'is not a JSON object with a "keys" list', id="array"),
        pytest.param(b"{}", 'is not a JSON object with a "keys" list', id="no-keys"),
        pytest.param(b'{"keys": {}}', 'is not a JSON object with a "keys" list', id="keys-obj"),
        pytest.param(b"[" * 100_000, "is not JSON", id="deep-nesting"),
    ],
)
def test_not_a_jwks_is_unavailable_and_not_cached(body, message):
    fetcher = StaticFetcher({URL: body})
    client = make_client(fetcher, Clock())
    with pytest.raises(JWKSUnavailable) as caught:
        client.key_set(URL)
    assert str(caught.value).startswith(f"JWKS at {URL!r} {message}")
    assert client.cache.get(URL) is None


def test_not_a_jwks_on_refresh_serves_stale(keys):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))})
    clock = Clock()
    client = make_client(fetcher, clock)
    first = client.key_set(URL)
    fetcher.documents[URL] = b"<html>maintenance</html>"
    clock.now = T0 + 301
    assert client.key_set(URL) is first
    assert client.cache.get(URL).fetched_at == T0


def test_unexpected_fetcher_exception_becomes_unavailable():
    def broken(url: str) -> FetchedDocument:
        raise RuntimeError("boom")

    client = JWKSClient(broken, clock=Clock())
    with pytest.raises(JWKSUnavailable) as caught:
        client.key_set(URL)
    assert str(caught.value) == f"JWKS fetch of {URL!r} failed: RuntimeError: boom"
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_forbidden_host_raises_before_any_call_and_is_not_cached(keys):
    evil = "https://evil.example/jwks"
    fetcher = StaticFetcher(
        {URL: jwks_doc(public(keys["rsa1"])), evil: jwks_doc(public(keys["rsa2"]))},
        allowed_hosts=["keystore.example"],
    )
    client = make_client(fetcher, Clock())
    for _ in range(2):  # never cached, never rate-limited: refused the same way each time
        with pytest.raises(JWKSForbidden) as caught:
            client.key_set(evil)
        assert str(caught.value) == f"JWKS host 'evil.example' is not allowed: {evil!r}"
        with pytest.raises(JWKSForbidden):
            client.find_key(evil, kid="rsa2", alg="PS256")
    assert fetcher.calls == []
    assert client.cache.get(evil) is None
    assert [key["kid"] for key in client.key_set(URL)] == ["rsa1"]
    assert fetcher.calls == [URL]


def test_forbidden_propagates_from_forced_refresh(keys):
    hosts = {"keystore.example"}
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))}, allowed_hosts=lambda: hosts)
    clock = Clock()
    client = make_client(fetcher, clock)
    client.key_set(URL)
    hosts.clear()  # the operator removed the host from the allow-list
    clock.now = T0 + 60
    with pytest.raises(JWKSForbidden):
        client.find_key(URL, kid="rsa2", alg="PS256")
    assert fetcher.calls == [URL]


# --------------------------------------------------------------------------- client: selection


@pytest.fixture()
def mixed_set(keys) -> dict[str, Any]:
    return jwks_doc(
        public(keys["rsa1"], use="sig"),
        public(keys["p256"]),
        {**public(keys["rsa2"]), "kid": "rsa-enc", "use": "enc"},
        {**public(keys["rsa2"]), "kid": "rsa-rs256", "alg": "RS256"},
        {**public(keys["rsa2"]), "kid": "rsa-ops-encrypt", "key_ops": ["encrypt"]},
        {**public(keys["rsa2"]), "kid": "rsa-ops-verify", "key_ops": ["verify"]},
        public(keys["p384"], alg="ES384"),
        public(keys["p521"], use="sig"),
        public(keys["ed"]),
        {**public(keys["p256"]), "kid": "p256-ps256", "alg": "PS256"},
    )


@pytest.mark.parametrize(
    ("kid", "alg", "expected"),
    [
        pytest.param(None, "PS256", ["rsa1", "rsa-ops-verify"], id="ps256-kidless"),
        pytest.param(None, "RS256", ["rsa1", "rsa-rs256", "rsa-ops-verify"], id="rs256-kidless"),
        pytest.param(None, "ES256", ["p256"], id="es256-kidless"),
        pytest.param(None, "EdDSA", ["ed"], id="eddsa-kidless"),
        pytest.param("rsa1", "PS256", ["rsa1"], id="kid-match"),
        pytest.param("rsa-rs256", "RS256", ["rsa-rs256"], id="kid-with-matching-alg"),
    ],
)
def test_candidate_keys(mixed_set, kid, alg, expected):
    fetcher = StaticFetcher({URL: mixed_set})
    client = make_client(fetcher, Clock())
    assert kids(client.candidate_keys(URL, kid=kid, alg=alg)) == expected
    assert client.find_key(URL, kid=kid, alg=alg)["kid"] == expected[0]
    assert fetcher.calls == [URL]


@pytest.mark.parametrize(
    ("kid", "alg"),
    [
        pytest.param("rsa-enc", "PS256", id="use-enc"),
        pytest.param("rsa-rs256", "PS256", id="alg-mismatch"),
        pytest.param("rsa-ops-encrypt", "PS256", id="key-ops-without-verify"),
        pytest.param("p256", "ES384", id="wrong-curve"),
        pytest.param("p384", "ES384", id="p384-is-below-the-floor"),
        pytest.param("p521", "ES512", id="p521-is-below-the-floor"),
        pytest.param(None, "ES384", id="p384-is-below-the-floor-kidless"),
        pytest.param("p256", "PS256", id="ec-key-rsa-alg"),
        pytest.param("rsa1", "ES256", id="rsa-key-ec-alg"),
        pytest.param("p256-ps256", "PS256", id="alg-claims-rsa-but-ec-key"),
        pytest.param("nope", "PS256", id="unknown-kid"),
    ],
)
def test_no_candidate(mixed_set, kid, alg):
    client = make_client(StaticFetcher({URL: mixed_set}), Clock())
    with pytest.raises(KeyNotFound) as caught:
        client.candidate_keys(URL, kid=kid, alg=alg)
    assert caught.value.url == URL


def test_private_parts_are_stripped(keys):
    private_rsa = json.loads(keys["rsa1"].export_private())
    private_ec = json.loads(keys["p256"].export_private())
    secret = JWK.generate(kty="oct", size=256, kid="hmac")
    document = jwks_doc(private_rsa, private_ec, json.loads(secret.export()))
    fetcher = StaticFetcher({URL: document})
    client = make_client(fetcher, Clock())

    key_set = client.key_set(URL)
    assert sorted(key["kid"] for key in key_set) == ["p256", "rsa1"]
    assert [key.has_private for key in key_set] == [False, False]
    raw = json.loads(client.cache.get(URL).raw)
    assert raw == {"keys": [public(keys["rsa1"]), public(keys["p256"])]}
    assert set(raw["keys"][0]) == {"kty", "kid", "n", "e"}
    assert set(raw["keys"][1]) == {"kty", "kid", "crv", "x", "y"}


def test_document_keeps_public_members_and_is_a_copy(keys):
    x5c = ["MIIBfake=="]
    private_ec = json.loads(keys["p256"].export_private())
    fetcher = StaticFetcher({URL: {"keys": [{**private_ec, "x5c": x5c}], "other": 1}})
    client = make_client(fetcher, Clock())
    document = client.document(URL)
    assert document == {"keys": [public(keys["p256"], x5c=x5c)]}
    document["keys"].clear()
    assert client.document(URL) == {"keys": [public(keys["p256"], x5c=x5c)]}
    assert fetcher.calls == [URL]


def test_unimportable_keys_are_skipped_others_usable(keys):
    document = jwks_doc(
        "not-an-object",
        {"kty": "RSA", "kid": "bad-n", "n": 12, "e": "AQAB"},
        {"kty": "XYZ", "kid": "bad-kty"},
        {"kty": "EC", "kid": "off-curve", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        public(keys["p256"], extra_member="kept"),
        public(keys["p256"], extra_member="kept"),  # exact duplicate: kept once
    )
    client = make_client(StaticFetcher({URL: document}), Clock())
    assert kids(client.candidate_keys(URL, kid=None, alg="ES256")) == ["p256"]
    assert json.loads(client.cache.get(URL).raw) == {
        "keys": [public(keys["p256"], extra_member="kept")]
    }


def test_find_key_without_kid_returns_first_in_document_order(keys):
    document = jwks_doc(public(keys["rsa2"]), public(keys["rsa1"]))
    client = make_client(StaticFetcher({URL: document}), Clock())
    assert client.find_key(URL, kid=None, alg="PS256")["kid"] == "rsa2"


# --------------------------------------------------------------------------- client: key floors


def _b64uint(value: int) -> str:
    import base64

    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture(scope="module")
def weak_members(keys) -> dict[str, dict[str, Any]]:
    """Public JWKs that jwcrypto imports but that are below the JWS key floor, by kid."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_1024 = JWK.from_pyca(rsa.generate_private_key(65537, 1024).public_key())
    rsa_e3 = JWK.from_pyca(rsa.generate_private_key(3, 2048).public_key())
    modulus = int.from_bytes(base64url_decode(keys["rsa1"]["n"]), "big")
    secp256k1 = JWK.generate(kty="EC", crv="secp256k1")
    return {
        "rsa-1024": public(rsa_1024, kid="rsa-1024"),
        "rsa-e3": public(rsa_e3, kid="rsa-e3"),
        # an exponent as long as the modulus: each verification costs a private-key operation
        "rsa-huge-e": {**public(keys["rsa1"]), "kid": "rsa-huge-e", "e": _b64uint(modulus - 2)},
        "p384": public(keys["p384"]),
        "p521": public(keys["p521"]),
        "secp256k1": public(secp256k1, kid="secp256k1"),
    }


WEAK_LOOKUPS = [
    pytest.param("rsa-1024", "PS256", id="rsa-1024"),
    pytest.param("rsa-1024", "RS256", id="rsa-1024-rs256"),
    pytest.param("rsa-e3", "PS256", id="rsa-e3"),
    pytest.param("rsa-huge-e", "PS256", id="rsa-huge-e"),
    pytest.param("p384", "ES384", id="ec-p384"),
    pytest.param("p521", "ES512", id="ec-p521"),
    pytest.param("secp256k1", "ES256", id="ec-secp256k1"),
]


@pytest.mark.parametrize(("kid", "alg"), WEAK_LOOKUPS)
def test_weak_keys_are_never_candidates(keys, weak_members, kid, alg):
    document = jwks_doc(*weak_members.values(), public(keys["rsa1"]), public(keys["p256"]))
    fetcher = StaticFetcher({URL: document})
    client = make_client(fetcher, Clock())
    with pytest.raises(KeyNotFound):
        client.candidate_keys(URL, kid=kid, alg=alg)
    assert kids(client.candidate_keys(URL, kid=None, alg="PS256")) == ["rsa1"]
    assert kids(client.candidate_keys(URL, kid=None, alg="ES256")) == ["p256"]
    assert sorted(key["kid"] for key in client.key_set(URL)) == ["p256", "rsa1"]
    # still in the document: a transport certificate may be published with its key (x5c)
    assert [key.get("kid") for key in client.document(URL)["keys"]] == [
        *weak_members,
        "rsa1",
        "p256",
    ]
    assert fetcher.calls == [URL]


def test_weak_keys_stay_out_after_a_shared_cache_round_trip(keys, weak_members):
    fetcher = StaticFetcher({URL: jwks_doc(*weak_members.values(), public(keys["rsa1"]))})
    shared = JSONCache()
    JWKSClient(fetcher, cache=shared, clock=Clock()).key_set(URL)
    other = JWKSClient(fetcher, cache=shared, clock=Clock())
    assert kids(other.candidate_keys(URL, kid=None, alg="PS256")) == ["rsa1"]
    with pytest.raises(KeyNotFound):
        other.candidate_keys(URL, kid="rsa-1024", alg="PS256")
    assert fetcher.calls == [URL]


def test_weak_keys_are_logged_once_per_fetch(keys, weak_members, caplog):
    fetcher = StaticFetcher({URL: jwks_doc(*weak_members.values(), public(keys["rsa1"]))})
    shared = JSONCache()
    with caplog.at_level("WARNING", logger="flask_obdcr.jwks"):
        JWKSClient(fetcher, cache=shared, clock=Clock()).key_set(URL)
        fetched = [record.getMessage() for record in caplog.records]
        caplog.clear()
        JWKSClient(fetcher, cache=shared, clock=Clock()).key_set(URL)  # parsed from the cache
        assert caplog.records == []
    assert len(fetched) == 1
    assert f"{len(weak_members)} key(s)" in fetched[0]
    assert "'rsa-1024'" in fetched[0]


# --------------------------------------------------------------------------- client: threads


def test_concurrent_cold_misses_fetch_once(keys):
    inner = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))})
    in_flight = threading.Event()

    def slow_fetcher(url: str) -> FetchedDocument:
        in_flight.set()
        time.sleep(0.1)
        return inner(url)

    client = JWKSClient(slow_fetcher, clock=Clock())
    results: list[JWKSet] = []
    threads = [
        threading.Thread(target=lambda: results.append(client.key_set(URL))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert inner.calls == [URL]
    assert len(results) == 8
    assert all(result is results[0] for result in results)
    assert client._locks._slots == {}  # per-URL locks are released, not accumulated


# --------------------------------------------------------------------------- cache


class JSONCache:
    """Stands in for a shared cache (Redis): stores only serialised entries."""

    def __init__(self) -> None:
        self.store: dict[str, str] = {}

    def get(self, url: str) -> CacheEntry | None:
        data = self.store.get(url)
        return None if data is None else CacheEntry.from_dict(json.loads(data))

    def set(self, url: str, entry: CacheEntry) -> None:
        self.store[url] = json.dumps(entry.to_dict())


def test_serialised_cache_round_trip(keys):
    private_rsa = json.loads(keys["rsa1"].export_private())
    fetcher = StaticFetcher({URL: jwks_doc(private_rsa)})
    shared = JSONCache()
    clock = Clock()
    JWKSClient(fetcher, cache=shared, clock=clock).key_set(URL)
    stored = json.loads(shared.store[URL])
    assert json.loads(stored.pop("raw")) == {"keys": [public(keys["rsa1"])]}
    assert stored == {
        "fetched_at": T0,
        "fresh_until": T0 + 300,
        "stale_until": T0 + 3900,
    }

    # Another process (a new client) uses the shared entry without fetching.
    other = JWKSClient(fetcher, cache=shared, clock=clock)
    assert other.find_key(URL, kid="rsa1", alg="PS256") == keys["rsa1"]
    assert fetcher.calls == [URL]

    entry = shared.get(URL)
    assert entry == CacheEntry.from_dict(entry.to_dict())
    assert entry.key_set.get_key("rsa1").has_private is False


def test_corrupt_shared_entry_is_refetched(keys):
    fetcher = StaticFetcher({URL: jwks_doc(public(keys["rsa1"]))})
    shared = JSONCache()
    shared.set(
        URL, CacheEntry(raw="garbage", fetched_at=T0, fresh_until=T0 + 9, stale_until=T0 + 9)
    )
    client = JWKSClient(fetcher, cache=shared, clock=Clock())
    assert [key["kid"] for key in client.key_set(URL)] == ["rsa1"]
    assert fetcher.calls == [URL]


def test_memory_cache_is_bounded_lru():
    cache = MemoryJWKSCache(maxsize=2)
    entries = {
        name: CacheEntry(raw='{"keys":[]}', fetched_at=i, fresh_until=i, stale_until=i)
        for i, name in enumerate("abc")
    }
    cache.set("a", entries["a"])
    cache.set("b", entries["b"])
    assert cache.get("a") is entries["a"]  # "a" is now the most recently used
    cache.set("c", entries["c"])
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (entries["a"], None, entries["c"])
    assert len(cache) == 2


def test_cache_entry_equality_ignores_parsed_set():
    entry = CacheEntry(raw='{"keys":[]}', fetched_at=1.0, fresh_until=2.0, stale_until=3.0)
    twin = CacheEntry(raw='{"keys":[]}', fetched_at=1.0, fresh_until=2.0, stale_until=3.0)
    assert list(entry.key_set) == []
    assert entry == twin
    assert repr(entry) == (
        "CacheEntry(raw='{\"keys\":[]}', fetched_at=1.0, fresh_until=2.0, stale_until=3.0)"
    )


# --------------------------------------------------------------------------- URL rule


ALLOWED = ["keystore.example", "127.0.0.1", "[::1]"]
BAD_CHARS = "JWKS URL contains whitespace, control, backslash or non-ASCII characters"
NOT_ALLOWED = "JWKS host {!r} is not allowed"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://keystore.example/jwks", id="plain"),
        pytest.param("https://KEYSTORE.Example/jwks", id="host-case-insensitive"),
        pytest.param("https://keystore.example:8443/a/b.jwks?x=1", id="port-and-query"),
        pytest.param("https://127.0.0.1/jwks", id="ipv4"),
        pytest.param("https://[::1]:4443/jwks", id="ipv6"),
    ],
)
def test_allowed_urls(url):
    fetcher = StaticFetcher({url: {"keys": []}}, allowed_hosts=ALLOWED)
    assert fetcher(url) == FetchedDocument(body=b'{"keys": []}', max_age=300)
    assert fetcher.calls == [url]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://keystore.example/jwks", "JWKS URL must use https"),
        ("HTTPS://keystore.example/jwks", "JWKS URL must use https"),
        ("ftp://keystore.example/jwks", "JWKS URL must use https"),
        ("//keystore.example/jwks", "JWKS URL must use https"),
        ("https:/keystore.example/jwks", "JWKS URL must use https"),
        ("https://evil.example/jwks", "JWKS host 'evil.example' is not allowed"),
        ("https://keystore.example.evil/", NOT_ALLOWED.format("keystore.example.evil")),
        ("https://keystore.example@evil.example/", "JWKS URL must not contain userinfo"),
        ("https://user:pw@keystore.example/", "JWKS URL must not contain userinfo"),
        ("https://evil.example#@keystore.example/", "JWKS host 'evil.example' is not allowed"),
        ("https://evil.example?@keystore.example/", "JWKS host 'evil.example' is not allowed"),
        ("https://keystore.example\\@evil.example/", BAD_CHARS),
        ("https://keystore.example /", BAD_CHARS),
        (" https://keystore.example/", BAD_CHARS),
        ("https://keystore.example\t.evil/", BAD_CHARS),
        ("https://keystore.examplé/", BAD_CHARS),
        ("https://keystore%2eexample/", "JWKS host 'keystore%2eexample' is not allowed"),
        ("https://keystore.example:99999/", "JWKS URL is malformed (Port out of range 0-65535)"),
        (
            "https://keystore.example:x/",
            "JWKS URL is malformed (Port could not be cast to integer value as 'x')",
        ),
        ("https:///jwks", "JWKS URL has no host"),
        ("https://[::1]x/", "JWKS URL is malformed"),  # urllib and urllib3 disagree: refused
        ("https://keystore.example./jwks", "JWKS host 'keystore.example.' is not allowed"),
        ("https://[::1/jwks", "JWKS URL is malformed (Invalid IPv6 URL)"),
    ],
)
def test_forbidden_urls_make_no_request(url, message):
    class NoNetwork(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> requests.Response:
            raise AssertionError("a forbidden URL reached the network")

    fetcher = HTTPFetcher(allowed_hosts=ALLOWED, session=NoNetwork())
    with pytest.raises(JWKSForbidden) as caught:
        fetcher(url)
    assert str(caught.value) == f"{message}: {url!r}"
    assert caught.value.url == url

    static = StaticFetcher({url: {"keys": []}}, allowed_hosts=ALLOWED)
    with pytest.raises(JWKSForbidden):
        static(url)
    assert static.calls == []


def test_non_string_and_overlong_urls_are_forbidden():
    fetcher = StaticFetcher({}, allowed_hosts=ALLOWED)
    with pytest.raises(JWKSForbidden) as caught:
        fetcher(b"https://keystore.example/")  # type: ignore[arg-type]
    assert str(caught.value) == "JWKS URL must be a string, got bytes"
    long_url = "https://keystore.example/" + "a" * 2100
    with pytest.raises(JWKSForbidden) as caught:
        fetcher(long_url)
    assert str(caught.value).startswith("JWKS URL is longer than 2048 characters: ")
    assert fetcher.calls == []


def test_allowed_hosts_must_not_be_a_string():
    with pytest.raises(TypeError):
        HTTPFetcher(allowed_hosts="keystore.example")
    with pytest.raises(TypeError):
        StaticFetcher({}, allowed_hosts="keystore.example")
    with pytest.raises(TypeError):
        StaticFetcher({}, allowed_hosts=lambda: "keystore.example")("https://k/")


def test_static_fetcher_without_allow_list_and_errors(keys):
    documents: dict[str, Any] = {"http://anything/": b"{}"}
    fetcher = StaticFetcher(documents, max_age=None)
    assert fetcher.documents is documents
    assert fetcher("http://anything/") == FetchedDocument(body=b"{}", max_age=None)
    documents["https://x/"] = JWKSUnavailable("down", url="https://x/")
    with pytest.raises(JWKSUnavailable):
        fetcher("https://x/")
    assert fetcher.calls == ["http://anything/", "https://x/"]
    assert issubclass(JWKSForbidden, JWKSError) and issubclass(KeyNotFound, JWKSError)


@pytest.mark.parametrize(
    ("header", "max_age"),
    [
        (None, None),
        ("", None),
        ("public", None),
        ("max-age=600", 600),
        ("public, max-age=60, s-maxage=10", 60),
        ('Max-Age="120"', 120),
        ("max-age=600, max-age=30", 30),
        ("no-store", 0),
        ("max-age=600, no-cache", 0),
        ('no-cache="Set-Cookie"', 0),
        ("max-age=abc", 0),
        ("max-age=-5", 0),
        ("max-age=99999999999999999999", 2**31 - 1),
    ],
)
def test_cache_control_parsing(header, max_age):
    assert jwks._max_age(header) == max_age


# --------------------------------------------------------------------------- HTTPS server

MAX_BYTES = 1024
JWKS_BODY = b'{"keys": []}'


def _certificates(directory) -> tuple[str, str, str]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost."""
    ca = CertificateAuthority.root("flask-obdcr test CA")
    server_key = generate_key("EC")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    server_cert = ca.issue(
        subject,
        server_key.public_key(),
        usage="server",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    ca_path.write_text(pem(ca.certificate))
    cert_path.write_text(pem(server_cert))
    key_path.write_text(key_pem(server_key))
    return str(ca_path), str(cert_path), str(key_path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str | None]]
    connections: int

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        length: bool = True,
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.server.seen.append((self.path, self.headers.get("Accept")))
        port = self.server.server_address[1]
        path = self.path
        if path == "/jwks.json":
            self._send(
                200,
                JWKS_BODY,
                {
                    "Content-Type": "application/jwk-set+json",
                    "Cache-Control": "public, max-age=600",
                },
            )
        elif path == "/exact":
            self._send(200, b"x" * MAX_BYTES)
        elif path == "/big":  # no Content-Length: only the streaming cap can stop it
            self._send(200, b"x" * (MAX_BYTES + 1), length=False)
        elif path == "/big-declared":
            self._send(200, b"", {"Content-Length": str(MAX_BYTES + 1)}, length=False)
        elif path == "/error":
            self._send(500, b"oops")
        elif path == "/redirect":
            self._send(302, headers={"Location": "/jwks.json"})
        elif path == "/redirect-localhost":
            self._send(301, headers={"Location": f"https://localhost:{port}/jwks.json"})
        elif path == "/redirect-away":
            self._send(302, headers={"Location": "https://evil.example/x"})
        elif path == "/redirect-http":
            self._send(307, headers={"Location": f"http://127.0.0.1:{port}/jwks.json"})
        elif path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif path == "/no-location":
            self._send(302)
        elif path == "/slow":
            time.sleep(0.5)
            try:
                self._send(200, JWKS_BODY)
            except OSError:
                pass  # the client gave up (that is the point of the test)
        else:
            self._send(404)


@pytest.fixture(scope="module")
def _https_server(tmp_path_factory) -> Iterator[tuple[_Server, str]]:
    ca_path, cert_path, key_path = _certificates(tmp_path_factory.mktemp("pki"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server, ca_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class HTTPS:
    def __init__(self, server: _Server, ca_path: str) -> None:
        self.server = server
        self.ca_path = ca_path
        self.port = server.server_address[1]
        self.base = f"https://127.0.0.1:{self.port}"

    def fetcher(self, **options: Any) -> HTTPFetcher:
        options.setdefault("allowed_hosts", ["127.0.0.1", "localhost"])
        options.setdefault("max_bytes", MAX_BYTES)
        return HTTPFetcher(verify=self.ca_path, **options)


@pytest.fixture()
def https(_https_server) -> HTTPS:
    server, ca_path = _https_server
    server.seen = []
    server.connections = 0
    return HTTPS(server, ca_path)


def test_http_fetch_ok_with_max_age(https):
    fetcher = https.fetcher()
    assert fetcher(f"{https.base}/jwks.json") == FetchedDocument(body=JWKS_BODY, max_age=600)
    assert https.server.seen == [("/jwks.json", "application/jwk-set+json, application/json")]


def test_http_fetch_body_of_exactly_max_bytes(https):
    document = https.fetcher()(f"{https.base}/exact")
    assert document == FetchedDocument(body=b"x" * MAX_BYTES, max_age=None)


@pytest.mark.parametrize("path", ["/big", "/big-declared"])
def test_http_size_cap(https, path):
    with pytest.raises(JWKSUnavailable) as caught:
        https.fetcher()(f"{https.base}{path}")
    assert str(caught.value) == f"JWKS at '{https.base}{path}' is larger than 1024 bytes"


def test_http_500_is_unavailable(https):
    with pytest.raises(JWKSUnavailable) as caught:
        https.fetcher()(f"{https.base}/error")
    assert str(caught.value) == f"JWKS fetch of '{https.base}/error' got HTTP 500"


def test_http_redirect_to_allowed_path(https):
    assert https.fetcher()(f"{https.base}/redirect") == FetchedDocument(JWKS_BODY, 600)
    assert [path for path, _ in https.server.seen] == ["/redirect", "/jwks.json"]


def test_http_redirect_to_other_allowed_host(https):
    assert https.fetcher()(f"{https.base}/redirect-localhost") == FetchedDocument(JWKS_BODY, 600)
    assert [path for path, _ in https.server.seen] == ["/redirect-localhost", "/jwks.json"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/redirect-away", "JWKS host 'evil.example' is not allowed: 'https://evil.example/x'"),
        ("/redirect-http", "JWKS URL must use https: 'http://127.0.0.1:{port}/jwks.json'"),
    ],
)
def test_http_redirect_off_the_rules_is_forbidden(https, path, message):
    fetcher = https.fetcher()
    with pytest.raises(JWKSForbidden) as caught:
        fetcher(f"{https.base}{path}")
    assert str(caught.value) == message.format(port=https.port)
    assert [seen_path for seen_path, _ in https.server.seen] == [path]


def test_http_redirect_to_host_not_allowed_is_refused_before_following(https):
    # Same server, but "localhost" not allowed: the hop is refused before connecting.
    fetcher = https.fetcher(allowed_hosts=["127.0.0.1"])
    with pytest.raises(JWKSForbidden):
        fetcher(f"{https.base}/redirect-localhost")
    assert [path for path, _ in https.server.seen] == ["/redirect-localhost"]


def test_http_too_many_redirects(https):
    with pytest.raises(JWKSUnavailable) as caught:
        https.fetcher(max_redirects=2)(f"{https.base}/loop")
    assert str(caught.value) == f"JWKS fetch of '{https.base}/loop' exceeded 2 redirects"
    assert [path for path, _ in https.server.seen] == ["/loop", "/loop", "/loop"]


def test_http_redirect_without_location(https):
    with pytest.raises(JWKSUnavailable) as caught:
        https.fetcher()(f"{https.base}/no-location")
    assert str(caught.value) == (
        f"JWKS fetch of '{https.base}/no-location' got HTTP 302 without a Location"
    )


def test_http_url_is_forbidden_without_connecting(https):
    url = f"http://127.0.0.1:{https.port}/jwks.json"
    with pytest.raises(JWKSForbidden) as caught:
        https.fetcher()(url)
    assert str(caught.value) == f"JWKS URL must use https: {url!r}"
    assert (https.server.seen, https.server.connections) == ([], 0)


def test_host_not_allowed_is_forbidden_without_connecting(https):
    url = f"{https.base}/jwks.json"
    with pytest.raises(JWKSForbidden) as caught:
        https.fetcher(allowed_hosts=["keystore.example"])(url)
    assert str(caught.value) == f"JWKS host '127.0.0.1' is not allowed: {url!r}"
    assert (https.server.seen, https.server.connections) == ([], 0)


def test_allowed_hosts_callable_is_asked_each_time(https):
    hosts = ["127.0.0.1"]
    fetcher = https.fetcher(allowed_hosts=lambda: hosts)
    assert fetcher(f"{https.base}/jwks.json").body == JWKS_BODY
    hosts.clear()
    with pytest.raises(JWKSForbidden):
        fetcher(f"{https.base}/jwks.json")
    assert len(https.server.seen) == 1


def test_http_read_timeout_is_unavailable(https):
    fetcher = https.fetcher(timeout=(1.0, 0.1))
    started = time.monotonic()
    with pytest.raises(JWKSUnavailable) as caught:
        fetcher(f"{https.base}/slow")
    assert time.monotonic() - started < 0.45
    assert str(caught.value).startswith(f"JWKS fetch of '{https.base}/slow' failed: ReadTimeout: ")
    assert isinstance(caught.value.__cause__, requests.exceptions.ReadTimeout)


def test_untrusted_server_certificate_is_unavailable(https):
    # verify=True uses the system CAs, which do not include our throw-away CA.
    fetcher = HTTPFetcher(allowed_hosts=["127.0.0.1"], verify=True)
    with pytest.raises(JWKSUnavailable) as caught:
        fetcher(f"{https.base}/jwks.json")
    assert isinstance(caught.value.__cause__, requests.exceptions.SSLError)
    assert https.server.seen == []


def test_connection_refused_is_unavailable(https):
    fetcher = HTTPFetcher(allowed_hosts=["127.0.0.1"], verify=https.ca_path)
    with pytest.raises(JWKSUnavailable) as caught:
        fetcher("https://127.0.0.1:1/jwks.json")
    assert isinstance(caught.value.__cause__, requests.exceptions.ConnectionError)


def test_client_over_https_end_to_end(https):
    clock = Clock()
    client = JWKSClient(https.fetcher(), clock=clock)
    assert list(client.key_set(f"{https.base}/jwks.json")) == []
    assert client.cache.get(f"{https.base}/jwks.json").fresh_until == T0 + 600
    client.key_set(f"{https.base}/jwks.json")
    assert len(https.server.seen) == 1


def test_supplied_session_is_used_and_reused(https):
    class Counting(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def request(self, *args: Any, **kwargs: Any) -> requests.Response:
            self.count += 1
            assert kwargs["allow_redirects"] is False
            assert kwargs["stream"] is True
            return super().request(*args, **kwargs)

    session = Counting()
    fetcher = https.fetcher(session=session)
    fetcher(f"{https.base}/jwks.json")
    fetcher(f"{https.base}/redirect")
    assert session.count == 3
