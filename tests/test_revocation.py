"""Revocation of transport certificates (flask_obdcr/revocation/): OCSP first, the CRL as the
fallback, verified verdicts cached (docs/architecture.md, "Revocation").

Everything crosses a real socket: a :class:`~flask_obdcr.testing.revocation.RevocationServer`
on loopback serves the test CA's CRL and OCSP responses (right, or wrong on purpose) and counts
the requests; the checker fetches with the real :class:`~flask_obdcr.fetch.BoundedFetch`. The
checker and the server share a :class:`~flask_obdcr.testing.clock.FrozenClock`, so a test can
stand exactly at a nextUpdate or one cache period later. The verdict caches themselves (memory,
Redis) run their contract in test_revocation_cache.py and test_redis.py.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from flask_obdcr.errors import InvalidClient, InvalidToken, TemporarilyUnavailable
from flask_obdcr.fetch import BoundedFetch, FetchFailed
from flask_obdcr.revocation import NoAnswer, RevocationChecker, StatusRecord
from flask_obdcr.revocation.crl import crl_urls
from flask_obdcr.revocation.ocsp import build_request, ocsp_urls, verify_response
from flask_obdcr.revocation.signature import SignatureRefused, verify_signature
from flask_obdcr.testing.clock import FrozenClock
from flask_obdcr.testing.pki import CertificateAuthority, generate_key, ob_subject, pem
from flask_obdcr.testing.revocation import Endpoint, RevocationServer

CACHE_SECONDS = 300
RETRY_AFTER = 30
TIMEOUT = 1.0  # the whole-fetch deadline
HOUR = datetime.timedelta(hours=1)
CHECKER_LOG = "flask_obdcr.revocation.checker"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root() -> CertificateAuthority:
    return CertificateAuthority.root("Revocation Test Root")


@pytest.fixture(scope="module")
def stranger() -> CertificateAuthority:
    """Another CA: its key and name make the wrong CRLs and responses."""
    return CertificateAuthority.root("Some Other CA")


@pytest.fixture
def ca(root) -> CertificateAuthority:
    # a CA of its own per test: its revocation register starts empty
    return root.intermediate("Revocation Test Issuing CA")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(time.time())


@pytest.fixture
def server(ca, root, clock) -> Iterator[RevocationServer]:
    with RevocationServer(ca, root, clock=clock, trickle_interval=0.2) as running:
        yield running


@pytest.fixture
def fetch() -> Iterator[BoundedFetch]:
    bounded = BoundedFetch(timeout=TIMEOUT)
    yield bounded
    bounded.close()


@pytest.fixture
def checker_factory(fetch, clock) -> Callable[..., RevocationChecker]:
    def make(**options: Any) -> RevocationChecker:
        options.setdefault("mode", "require")
        options.setdefault("cache_seconds", CACHE_SECONDS)
        options.setdefault("fetch", fetch)
        options.setdefault("clock", clock)
        options.setdefault("retry_after", RETRY_AFTER)
        return RevocationChecker(**options)

    return make


@pytest.fixture
def checker(checker_factory) -> RevocationChecker:
    return checker_factory()


@pytest.fixture(scope="module")
def tpp_key():
    return generate_key("EC")


def transport(ca, server, tpp_key, *, ocsp=True, crl=True, **extra) -> x509.Certificate:
    """A transport certificate of ``ca`` naming the server's responder and/or CRL."""
    return ca.issue(
        ob_subject("software-1", "org-1"),
        tpp_key.public_key(),
        ocsp_url=server.ocsp_url(ca) if ocsp else None,
        crl_url=server.crl_url(ca) if crl else None,
        **extra,
    )


@pytest.fixture
def chain(ca, root) -> Callable[[x509.Certificate], tuple[x509.Certificate, ...]]:
    def make(leaf: x509.Certificate) -> tuple[x509.Certificate, ...]:
        return (leaf, ca.certificate, root.certificate)  # leaf first, trust anchor last

    return make


def assert_revoked(caught, error_class=InvalidClient) -> None:
    error = caught.value
    assert type(error) is error_class
    assert error.status == 401
    assert error.to_dict() == {
        "error": error_class.error,
        "error_description": "The client certificate has been revoked.",
    }


def assert_unknown(caught, retry_after: int = RETRY_AFTER) -> None:
    error = caught.value
    assert type(error) is TemporarilyUnavailable
    assert error.status == 503
    assert error.error == "temporarily_unavailable"
    assert error.headers["Retry-After"] == str(retry_after)
    assert error.detail.startswith("revocation status unknown: ")


# -- the verdicts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ocsp", "crl", "source", "ocsp_requests", "crl_requests"),
    [
        pytest.param(True, True, "ocsp", 1, 0, id="ocsp-first"),
        pytest.param(True, False, "ocsp", 1, 0, id="ocsp-only"),
        pytest.param(False, True, "crl", 0, 1, id="crl-only"),
    ],
)
def test_good(checker, ca, server, chain, tpp_key, ocsp, crl, source, ocsp_requests, crl_requests):
    leaf = transport(ca, server, tpp_key, ocsp=ocsp, crl=crl)
    status = checker.check(chain(leaf))
    assert status.status == "good"
    [found] = status.certificates
    assert (found.status, found.source, found.cached, found.serial) == (
        "good",
        source,
        False,
        leaf.serial_number,
    )
    assert found.url == (server.ocsp_url(ca) if source == "ocsp" else server.crl_url(ca))
    assert (server.count(ca, "ocsp"), server.count(ca, "crl")) == (ocsp_requests, crl_requests)


@pytest.mark.parametrize(
    ("ocsp", "crl", "crl_format", "source"),
    [
        pytest.param(True, True, "der", "ocsp", id="by-ocsp"),
        pytest.param(False, True, "der", "crl", id="by-crl-der"),
        pytest.param(False, True, "pem", "crl", id="by-crl-pem"),
    ],
)
def test_revoked(checker, ca, server, chain, tpp_key, ocsp, crl, crl_format, source):
    server.endpoint(ca).crl_format = crl_format
    leaf = transport(ca, server, tpp_key, ocsp=ocsp, crl=crl)
    ca.revoke(leaf)
    with pytest.raises(InvalidClient) as caught:
        checker.check(chain(leaf))
    assert_revoked(caught)
    assert f"(serial {leaf.serial_number:x}) is revoked at " in caught.value.detail
    assert caught.value.detail.endswith(
        f"(key_compromise) according to {source} '{server.url(f'/ca0/{source}')}'"
    )


def test_revoked_is_invalid_token_where_the_caller_says(checker, ca, server, chain, tpp_key):
    leaf = transport(ca, server, tpp_key)
    ca.revoke(leaf)
    with pytest.raises(InvalidToken) as caught:
        checker.check(chain(leaf), revoked_error=InvalidToken)
    assert_revoked(caught, InvalidToken)
    assert caught.value.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_a_revoked_intermediate_is_caught(checker, ca, root, server, tpp_key):
    intermediate = root.intermediate("Issuing CA 2", crl_url=server.crl_url(root))
    leaf = intermediate.issue(ob_subject("software-1", "org-1"), tpp_key.public_key())
    full_chain = (leaf, intermediate.certificate, root.certificate)
    assert checker.check(full_chain).certificates[0].subject == "CN=Issuing CA 2,O=OpenBanking,C=GB"
    root.revoke(intermediate.certificate)
    with pytest.raises(InvalidClient):
        checker_for_a_new_process(checker).check(full_chain)


def checker_for_a_new_process(checker: RevocationChecker, **changes: Any) -> RevocationChecker:
    """The same settings with nothing remembered."""
    options: dict[str, Any] = {
        "mode": checker.mode,
        "cache_seconds": checker.cache_seconds,
        "fetch": checker.fetch,
        "clock": checker.clock,
        "retry_after": checker.retry_after,
    }
    options.update(changes)
    return RevocationChecker(**options)


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        pytest.param("require", "503", id="require"),
        pytest.param("prefer", "unknown", id="prefer"),
        pytest.param("off", "off", id="off"),
    ],
)
def test_ocsp_says_unknown_and_there_is_no_crl(
    checker_factory, ca, server, chain, tpp_key, caplog, mode, outcome
):
    server.endpoint(ca).ocsp_status = "unknown"
    leaf = transport(ca, server, tpp_key, crl=False)
    checker = checker_factory(mode=mode)
    caplog.set_level(logging.WARNING, logger=CHECKER_LOG)
    if outcome == "503":
        with pytest.raises(TemporarilyUnavailable) as caught:
            checker.check(chain(leaf))
        assert_unknown(caught)
        assert "the responder does not know the certificate" in caught.value.detail
    else:
        status = checker.check(chain(leaf))
        assert status.status == outcome
    if outcome == "unknown":
        [found] = status.certificates
        assert (found.status, found.source) == ("unknown", None)
        assert "does not know the certificate" in (found.detail or "")
        assert any(
            "carrying on (OBDCR_REVOCATION=prefer)" in record.getMessage()
            for record in caplog.records
        )
    assert server.count(ca, "ocsp") == (0 if mode == "off" else 1)


def test_ocsp_unknown_falls_back_to_the_crl(checker, ca, server, chain, tpp_key):
    server.endpoint(ca).ocsp_status = "unknown"
    leaf = transport(ca, server, tpp_key)
    ca.revoke(leaf)
    with pytest.raises(InvalidClient):
        checker.check(chain(leaf))
    assert (server.count(ca, "ocsp"), server.count(ca, "crl")) == (1, 1)


# -- OCSP responses that are refused -----------------------------------------------------------


def _wrong_key(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.ocsp_signing_key = stranger.key  # the responder ID still names the CA


def _delegate_without_eku(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.responder = endpoint.ca.ocsp_responder(ocsp_signing=False)


def _delegate_of_another_ca(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.responder = stranger.ocsp_responder()


def _delegate_signed_by_another_key(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    # names the CA as its issuer, but the CA never signed it
    endpoint.responder = endpoint.ca.ocsp_responder(signing_key=stranger.key)


def _delegate_not_included(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.responder = endpoint.ca.ocsp_responder()
    endpoint.include_responder = False


def _past_next_update(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.ocsp_age = 2 * HOUR  # thisUpdate two hours ago, nextUpdate one hour ago


def _this_update_in_the_future(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.ocsp_age = -datetime.timedelta(minutes=10)


def _old_without_next_update(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.ocsp_validity = None
    endpoint.ocsp_age = datetime.timedelta(days=1)


def _failing(failure: str) -> Callable[[Endpoint, CertificateAuthority], None]:
    def apply(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
        endpoint.ocsp_failure = failure  # type: ignore[assignment]

    return apply


BROKEN_OCSP = [
    pytest.param(_wrong_key, "signature does not verify", id="signed-by-wrong-key"),
    pytest.param(_delegate_without_eku, "lacks the OCSP-signing", id="delegate-without-eku"),
    pytest.param(
        _delegate_of_another_ca, "not issued by the certificate's", id="delegate-of-other-ca"
    ),
    pytest.param(_delegate_signed_by_another_key, "does not verify", id="delegate-forged"),
    pytest.param(_delegate_not_included, "neither the issuer nor", id="delegate-missing"),
    pytest.param(_past_next_update, "past its nextUpdate", id="past-next-update"),
    pytest.param(_this_update_in_the_future, "is in the future", id="this-update-future"),
    pytest.param(_old_without_next_update, "no nextUpdate", id="stale-no-next-update"),
    pytest.param(_failing("garbage"), "not a DER OCSP response", id="garbage"),
    pytest.param(_failing("error"), "got HTTP 500", id="http-500"),
    pytest.param(_failing("refuse"), "ConnectionError", id="connection-closed"),
]


@pytest.mark.parametrize(("breakage", "reason"), BROKEN_OCSP)
def test_a_refused_ocsp_answer_falls_back_to_the_crl(
    checker, ca, stranger, server, chain, tpp_key, breakage, reason
):
    breakage(server.endpoint(ca), stranger)
    server.endpoint(ca).ocsp_status = "good"  # what it says must not count
    leaf = transport(ca, server, tpp_key)
    ca.revoke(leaf)
    with pytest.raises(InvalidClient) as caught:
        checker.check(chain(leaf))
    assert_revoked(caught)
    assert "according to crl" in caught.value.detail
    assert (server.count(ca, "ocsp"), server.count(ca, "crl")) == (1, 1)


@pytest.mark.parametrize(("breakage", "reason"), BROKEN_OCSP)
def test_a_refused_ocsp_answer_without_a_crl_is_unknown(
    checker, ca, stranger, server, chain, tpp_key, breakage, reason
):
    breakage(server.endpoint(ca), stranger)
    leaf = transport(ca, server, tpp_key, crl=False)
    with pytest.raises(TemporarilyUnavailable) as caught:
        checker.check(chain(leaf))
    assert_unknown(caught)
    assert reason in caught.value.detail


@pytest.mark.parametrize("key_type", ["EC", "RSA"])
def test_a_delegated_responder_with_the_ocsp_signing_usage(
    checker, ca, server, chain, tpp_key, key_type
):
    server.endpoint(ca).responder = ca.ocsp_responder(key_type=key_type)
    leaf = transport(ca, server, tpp_key, crl=False)
    assert checker.check(chain(leaf)).status == "good"
    ca.revoke(leaf)
    with pytest.raises(InvalidClient):
        checker_for_a_new_process(checker).check(chain(leaf))


def test_sha256_cert_ids_and_a_sha384_signature(checker_factory, ca, server, chain, tpp_key):
    server.endpoint(ca).ocsp_algorithm = hashes.SHA384()
    leaf = transport(ca, server, tpp_key, crl=False)
    assert checker_factory(ocsp_hash="sha256").check(chain(leaf)).status == "good"


def _rsa(bits: int) -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@pytest.mark.parametrize(
    ("key", "algorithm", "hash_algorithm", "sign", "reason"),
    [
        pytest.param(
            "rsa2048",
            SignatureAlgorithmOID.RSA_WITH_SHA1,
            hashes.SHA1(),  # noqa: S303 - the weak signature under test
            "pkcs1",
            "signature algorithm 1.2.840.113549.1.1.5 is not accepted",
            id="rsa-sha1",
        ),
        pytest.param(
            "p256",
            SignatureAlgorithmOID.ECDSA_WITH_SHA1,
            hashes.SHA1(),  # noqa: S303
            "ecdsa",
            "is not accepted",
            id="ecdsa-sha1",
        ),
        pytest.param(
            "rsa1024",
            SignatureAlgorithmOID.RSA_WITH_SHA256,
            hashes.SHA256(),
            "pkcs1",
            "the signer's RSA key has 1024 bits",
            id="rsa-1024",
        ),
        pytest.param(
            "p256",
            SignatureAlgorithmOID.RSA_WITH_SHA256,
            hashes.SHA256(),
            "ecdsa",
            "the signer's key is not RSA",
            id="alg-key-mismatch",
        ),
        pytest.param(
            "rsa2048",
            SignatureAlgorithmOID.RSASSA_PSS,
            hashes.SHA1(),  # noqa: S303
            "pss",
            "signature hash sha1 is not accepted",
            id="pss-sha1",
        ),
        pytest.param(
            "secp256k1",
            SignatureAlgorithmOID.ECDSA_WITH_SHA256,
            hashes.SHA256(),
            "ecdsa",
            "curve secp256k1 is refused",
            id="odd-curve",
        ),
    ],
)
def test_signature_allow_list(key, algorithm, hash_algorithm, sign, reason):
    private = {
        "rsa2048": lambda: _rsa(2048),
        "rsa1024": lambda: _rsa(1024),
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    }[key]()
    data = b"tbs bytes"
    if sign == "ecdsa":
        signature = private.sign(data, ec.ECDSA(hash_algorithm))
    elif sign == "pss":
        pss = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=32)
        signature = private.sign(data, pss, hash_algorithm)
    else:
        signature = private.sign(data, padding.PKCS1v15(), hash_algorithm)
    with pytest.raises(SignatureRefused) as caught:
        verify_signature(
            private.public_key(),
            signature,
            data,
            algorithm=algorithm,
            hash_algorithm=hash_algorithm,
        )
    assert reason in str(caught.value)


@pytest.mark.parametrize("hash_algorithm", [hashes.SHA256(), hashes.SHA512()])
def test_signature_allow_list_accepts_pss(hash_algorithm):
    private = _rsa(2048)
    pss = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
    signature = private.sign(b"data", pss, hash_algorithm)
    verify_signature(
        private.public_key(),
        signature,
        b"data",
        algorithm=SignatureAlgorithmOID.RSASSA_PSS,
        hash_algorithm=hash_algorithm,
    )
    with pytest.raises(SignatureRefused, match="does not verify"):
        verify_signature(
            private.public_key(),
            signature,
            b"other data",
            algorithm=SignatureAlgorithmOID.RSASSA_PSS,
            hash_algorithm=hash_algorithm,
        )


def test_a_response_about_another_certificate_is_refused(ca, server, tpp_key, clock):
    leaf = transport(ca, server, tpp_key)
    other = transport(ca, server, tpp_key)
    response = ca.ocsp_response(build_request(other, ca.certificate))
    with pytest.raises(NoAnswer) as caught:
        verify_response(response, leaf, ca.certificate, now=clock(), skew=30, max_age=300)
    assert str(caught.value) == "the response holds no answer about this certificate"


# -- CRLs that are refused -----------------------------------------------------------------------


def _crl_wrong_key(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.crl_signing_key = stranger.key


def _crl_other_issuer(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.crl_issuer_name = stranger.name
    endpoint.crl_signing_key = stranger.key


def _crl_past_next_update(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.crl_age = datetime.timedelta(days=2)  # nextUpdate a day ago


def _crl_in_the_future(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
    endpoint.crl_age = -HOUR


def _crl_failing(failure: str) -> Callable[[Endpoint, CertificateAuthority], None]:
    def apply(endpoint: Endpoint, stranger: CertificateAuthority) -> None:
        endpoint.crl_failure = failure  # type: ignore[assignment]

    return apply


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        pytest.param(_crl_wrong_key, "signature does not verify", id="signed-by-another-ca"),
        pytest.param(_crl_other_issuer, "not by the certificate's issuer", id="other-issuer"),
        pytest.param(_crl_past_next_update, "past its nextUpdate", id="past-next-update"),
        pytest.param(_crl_in_the_future, "is in the future", id="this-update-future"),
        pytest.param(_crl_failing("garbage"), "not a CRL", id="garbage"),
        pytest.param(_crl_failing("error"), "got HTTP 500", id="http-500"),
    ],
)
def test_a_refused_crl_is_unknown(checker, ca, stranger, server, chain, tpp_key, breakage, reason):
    breakage(server.endpoint(ca), stranger)
    leaf = transport(ca, server, tpp_key, ocsp=False)
    ca.revoke(leaf)  # a refused CRL must not even count as revoked: it is no answer
    with pytest.raises(TemporarilyUnavailable) as caught:
        checker.check(chain(leaf))
    assert_unknown(caught)
    assert reason in caught.value.detail


def test_one_crl_serves_every_certificate_of_its_ca(checker, ca, server, chain, tpp_key):
    first, second = (transport(ca, server, tpp_key, ocsp=False) for _ in range(2))
    ca.revoke(second)
    assert checker.check(chain(first)).status == "good"
    with pytest.raises(InvalidClient):
        checker.check(chain(second))  # listed in the CRL already fetched (the register)
    assert server.count(ca, "crl") == 1


# -- the cache ------------------------------------------------------------------------------------


def test_a_warm_cache_makes_no_request(checker, ca, server, chain, tpp_key):
    leaf = transport(ca, server, tpp_key)
    assert checker.check(chain(leaf)).certificates[0].cached is False
    for _ in range(100):
        assert checker.check(chain(leaf)).certificates[0].cached is True
    assert server.requests == ["/ca0/ocsp"]


def test_a_cached_status_is_refreshed_after_cache_seconds(
    checker, ca, server, chain, tpp_key, clock
):
    leaf = transport(ca, server, tpp_key)
    checker.check(chain(leaf))
    ca.revoke(leaf)
    clock.advance(CACHE_SECONDS - 1)
    assert checker.check(chain(leaf)).status == "good"  # still the cached verdict
    assert server.count(ca, "ocsp") == 1
    clock.advance(1)
    with pytest.raises(InvalidClient):
        checker.check(chain(leaf))
    assert server.count(ca, "ocsp") == 2


def test_a_warm_chain_is_answered_without_the_cache_until_a_record_is_due(
    checker_factory, ca, server, chain, tpp_key, clock
):
    """require_token asks at every call: a chain whose records were all fresh and good is
    answered without reading them again, until the first of them is due for refresh; then it
    is read (and refreshed) as before. A verdict another process puts in a shared cache is
    seen from that moment, as it is without the shortcut: a record is only replaced once due."""
    from flask_obdcr.storage.memory import MemoryRevocationCache

    class Counting(MemoryRevocationCache):
        reads = 0

        def get(self, key: str) -> StatusRecord | None:
            Counting.reads += 1
            return super().get(key)

    shared = Counting()
    checker, other_process = checker_factory(cache=shared), checker_factory(cache=shared)
    leaf = transport(ca, server, tpp_key, crl=False)
    path = chain(leaf)  # one tuple, as ClientCertificates keeps a verified chain
    assert checker.check(path).certificates[0].cached is False  # fetched
    assert checker.check(path).certificates[0].cached is True  # read: fresh, kept
    reads = Counting.reads
    for _ in range(50):
        status = checker.check(path)
        assert (status.status, status.certificates[0].cached) == ("good", True)
    assert Counting.reads == reads  # not read again
    assert checker.check(chain(leaf)).status == "good"  # another tuple: read, same answer
    assert Counting.reads == reads + 1
    assert server.count(ca, "ocsp") == 1

    ca.revoke(leaf)
    clock.advance(CACHE_SECONDS - 1)
    assert checker.check(path).status == "good"  # the cached verdict, as before
    clock.advance(1)  # due: the other process refreshes the shared record first
    with pytest.raises(InvalidClient):
        other_process.check(chain(leaf))
    with pytest.raises(InvalidClient):
        checker.check(path)  # seen here at once, not fetched again
    assert server.count(ca, "ocsp") == 2


def test_the_warm_chains_are_bounded(checker_factory, ca, server, chain, tpp_key):
    checker = checker_factory(max_targets=2)
    leaves = [transport(ca, server, tpp_key, crl=False) for _ in range(3)]
    for leaf in leaves:
        path = chain(leaf)
        checker.check(path)
        checker.check(path)
    assert len(checker._warm) == 2


def test_a_verdict_is_refreshed_by_its_next_update_if_sooner(
    checker, ca, server, chain, tpp_key, clock
):
    server.endpoint(ca).ocsp_validity = datetime.timedelta(seconds=60)
    leaf = transport(ca, server, tpp_key, crl=False)
    checker.check(chain(leaf))
    clock.advance(60)
    checker.check(chain(leaf))
    assert server.count(ca, "ocsp") == 2


@pytest.mark.parametrize(
    ("failure", "source"),
    [
        pytest.param("refuse", "ocsp", id="ocsp-refused"),
        pytest.param("error", "ocsp", id="ocsp-500"),
        pytest.param("refuse", "crl", id="crl-refused"),
    ],
)
def test_a_failed_refresh_keeps_the_cached_status_until_its_next_update(
    checker, ca, server, chain, tpp_key, clock, caplog, failure, source
):
    leaf = transport(ca, server, tpp_key, ocsp=source == "ocsp", crl=source == "crl")
    first = checker.check(chain(leaf)).certificates[0]
    assert first.next_update is not None
    server.fail(failure)  # type: ignore[arg-type]
    clock.advance(CACHE_SECONDS + 1)  # due for refresh, well within nextUpdate
    caplog.set_level(logging.WARNING, logger=CHECKER_LOG)
    status = checker.check(chain(leaf))
    assert (status.status, status.certificates[0].cached) == ("good", True)
    assert any("stands until its nextUpdate" in r.getMessage() for r in caplog.records)
    assert server.count(ca, source) == 2  # the refresh was tried
    clock.set(first.next_update)  # the nextUpdate itself: no longer usable
    with pytest.raises(TemporarilyUnavailable) as caught:
        checker.check(chain(leaf))
    assert_unknown(caught)


def test_a_response_without_next_update_is_not_kept_past_cache_seconds(
    checker, ca, server, chain, tpp_key, clock
):
    server.endpoint(ca).ocsp_validity = None
    leaf = transport(ca, server, tpp_key, crl=False)
    assert checker.check(chain(leaf)).certificates[0].next_update is None
    server.fail("refuse")
    clock.advance(CACHE_SECONDS)
    with pytest.raises(TemporarilyUnavailable):
        checker.check(chain(leaf))


def test_after_a_failure_no_fetch_for_retry_after(checker, ca, server, chain, tpp_key, clock):
    server.fail("refuse")
    leaf = transport(ca, server, tpp_key)
    with pytest.raises(TemporarilyUnavailable) as caught:
        checker.check(chain(leaf))
    assert_unknown(caught, RETRY_AFTER)
    clock.advance(20)
    with pytest.raises(TemporarilyUnavailable) as caught:
        checker.check(chain(leaf))  # answered at once: no request
    assert_unknown(caught, RETRY_AFTER - 20)
    assert (server.count(ca, "ocsp"), server.count(ca, "crl")) == (1, 1)
    server.fail(None)
    clock.advance(10)
    assert checker.check(chain(leaf)).status == "good"
    assert server.count(ca, "ocsp") == 2


def test_a_revocation_is_final(checker, ca, server, chain, tpp_key, clock):
    leaf = transport(ca, server, tpp_key, crl=False)
    ca.revoke(leaf)
    with pytest.raises(InvalidClient):
        checker.check(chain(leaf))
    ca.reinstate(leaf)
    server.fail("refuse")
    clock.advance(2 * 86400)  # far past cache_seconds and the response's nextUpdate
    with pytest.raises(InvalidClient):
        checker.check(chain(leaf))
    assert server.count(ca, "ocsp") == 1


def test_a_hold_is_refreshed_and_can_be_lifted(checker, ca, server, chain, tpp_key, clock):
    leaf = transport(ca, server, tpp_key, crl=False)
    ca.revoke(leaf, reason=x509.ReasonFlags.certificate_hold)
    with pytest.raises(InvalidClient) as caught:
        checker.check(chain(leaf))
    assert "(certificate_hold)" in caught.value.detail
    ca.reinstate(leaf)
    clock.advance(CACHE_SECONDS)
    assert checker.check(chain(leaf)).status == "good"


def test_concurrent_checks_of_one_certificate_make_one_fetch(checker, ca, server, chain, tpp_key):
    server.endpoint(ca).delay = 0.3  # every thread arrives while the first fetch is under way
    leaf = transport(ca, server, tpp_key)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def check() -> None:
        barrier.wait()
        results.append(checker.check(chain(leaf)).status)

    threads = [threading.Thread(target=check) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["good"] * 8
    assert server.requests == ["/ca0/ocsp"]


def test_off_makes_no_fetch(ca, server, chain, tpp_key):
    def no_fetch(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("mode off fetched")

    leaf = transport(ca, server, tpp_key)
    ca.revoke(leaf)
    checker = RevocationChecker(mode="off", fetch=no_fetch)
    assert checker.check(chain(leaf)).status == "off"
    assert RevocationChecker(mode="off").check(chain(leaf)).status == "off"  # no fetch needed
    assert server.requests == []


def test_a_certificate_naming_neither_is_not_checked(checker, ca, root, server, tpp_key):
    plain = ca.issue(ob_subject("software-1", "org-1"), tpp_key.public_key())
    assert checker.check((plain, ca.certificate, root.certificate)).status == "not_checked"
    ldap_only = ca.issue(
        ob_subject("software-1", "org-1"),
        tpp_key.public_key(),
        crl_url="ldap://directory.example/cn=CRL",
    )
    assert crl_urls(ldap_only) == () and ocsp_urls(ldap_only) == ()
    assert checker.check((ldap_only, ca.certificate)).status == "not_checked"
    assert checker.check((plain,)).status == "not_checked"  # nothing to check it against
    assert server.requests == []


# -- never a 500, always bounded ----------------------------------------------------------------


def test_a_trickling_responder_is_cut_at_the_deadline(checker, ca, server, chain, tpp_key):
    server.fail("trickle")
    leaf = transport(ca, server, tpp_key)
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailable) as caught:
        checker.check(chain(leaf))
    # one OCSP fetch and one CRL fetch, each cut at its deadline
    assert time.monotonic() - started < 2 * TIMEOUT + 0.5
    assert caught.value.detail.count("took longer than 1 s") == 2


def test_a_failing_custom_fetch_is_no_answer(checker_factory, ca, server, chain, tpp_key):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    leaf = transport(ca, server, tpp_key)
    with pytest.raises(TemporarilyUnavailable) as caught:
        checker_factory(fetch=broken).check(chain(leaf))
    assert "RuntimeError: boom" in caught.value.detail


def test_a_failing_cache_is_bypassed(checker_factory, ca, server, chain, tpp_key):
    class Broken:
        def get(self, key: str) -> StatusRecord | None:
            raise ConnectionError("cache down")

        def set(self, key: str, record: StatusRecord) -> None:
            raise ConnectionError("cache down")

    leaf = transport(ca, server, tpp_key)
    assert checker_factory(cache=Broken()).check(chain(leaf)).status == "good"


def test_https_responder(checker_factory, ca, root, clock, tpp_key, tmp_path):
    with RevocationServer(ca, clock=clock, tls_ca=root) as tls_server:
        bundle = tmp_path / "ca.pem"
        bundle.write_text(pem(root.certificate))
        fetch = BoundedFetch(timeout=TIMEOUT, verify=str(bundle))
        leaf = transport(ca, tls_server, tpp_key)
        assert tls_server.ocsp_url(ca).startswith("https://")
        checker = checker_factory(fetch=fetch)
        assert checker.check((leaf, ca.certificate)).certificates[0].source == "ocsp"
        with pytest.raises(FetchFailed):  # the system CAs do not know our root
            BoundedFetch(timeout=TIMEOUT)(tls_server.ocsp_url(ca), method="POST", body=b"")


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"mode": "sometimes"}, id="mode"),
        pytest.param({"mode": "require", "fetch": None}, id="no-fetch"),
        pytest.param({"cache_seconds": -1}, id="cache-seconds"),
        pytest.param({"ocsp_hash": "md5"}, id="ocsp-hash"),
        pytest.param({"max_crls": 0}, id="max-crls"),
    ],
)
def test_bad_options(options):
    options.setdefault("fetch", BoundedFetch())
    with pytest.raises(ValueError):
        RevocationChecker(**options)
