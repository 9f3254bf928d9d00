"""The hot path of revocation checking: a warm-cache ``RevocationChecker.check`` on a verified
transport chain, against no check at all.

What a request pays for its client certificate today is the chain verification
(``TransportCertificateVerifier.verify``, warm: it remembers verified chains), which is the
baseline (ratio 1). The scenarios add a warm
``check`` of the chain it returns, in memory and, with ``--redis``, through a
``RedisRevocationCache`` (whose per-process memo answers a warm check). The responder that
warmed the cache is stopped before timing, so a check that tried the network would fail:
every timed call is answered from the cache.

Each scenario is timed in one run, interleaved per repeat (medians reported), and given as a
ratio to the baseline measured in the same run, so the figures compare across machines:

* **verify only**: the warm chain verification of the leaf (the baseline).
* **verify + check, leaf**: the leaf names an OCSP responder and a CRL; the issuing CA names
  nothing (the usual OB chain).
* **verify + check, leaf + intermediate**: the issuing CA names the root's CRL too.
* **check alone**: the leaf-only check without the verification, for its own cost.

    .venv/bin/python -m benchmarks.revocation_hot_path
    .venv/bin/python -m benchmarks.revocation_hot_path --repeat 9 --number 20000
    .venv/bin/python -m benchmarks.revocation_hot_path --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import datetime
import gc
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from flask_obdcr.certificates.verify import TransportCertificateVerifier
from flask_obdcr.fetch import BoundedFetch
from flask_obdcr.revocation import (
    RedisRevocationCache,
    RevocationCache,
    RevocationChecker,
)
from flask_obdcr.testing.pki import CertificateAuthority, generate_key, ob_subject
from flask_obdcr.testing.revocation import RevocationServer

ROOT = Path(__file__).resolve().parent.parent


def timed(call: Callable[[], object], number: int) -> float:
    """Seconds per call, over ``number`` calls."""
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(number):
            call()
        return (time.perf_counter() - started) / number
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.revocation_hot_path", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=7, help="interleaved repeats (median)")
    parser.add_argument("--number", type=int, default=10000, help="calls per timing")
    parser.add_argument("--redis", default=None, help="also time a RedisRevocationCache")
    options = parser.parse_args()

    root = CertificateAuthority.root("Bench Root")
    key = generate_key("EC")
    with RevocationServer(root) as server:
        issuing = root.intermediate("Bench Issuing CA")
        named = root.intermediate("Bench Issuing CA (named)", crl_url=server.crl_url(root))
        server.add(issuing)
        server.add(named)
        subject = ob_subject("bench-software", "bench-org")
        leaf = issuing.issue(
            subject,
            key.public_key(),
            ocsp_url=server.ocsp_url(issuing),
            crl_url=server.crl_url(issuing),
        )
        leaf_2 = named.issue(subject, key.public_key(), ocsp_url=server.ocsp_url(named))
        # the bank trusts the root; the TPP presents its issuing CA alongside its certificate
        verifier = TransportCertificateVerifier([root.certificate])

        def verify(
            certificate: x509.Certificate, intermediate: x509.Certificate
        ) -> tuple[x509.Certificate, ...]:
            now = datetime.datetime.now(datetime.timezone.utc)
            return verifier.verify(certificate, now=now, intermediates=(intermediate,))

        caches: dict[str, RevocationCache | None] = {"memory": None}
        if options.redis:
            caches["redis"] = RedisRevocationCache(
                options.redis, prefix=f"obdcr-bench:{uuid.uuid4().hex}:"
            )
        checkers = {
            name: RevocationChecker(
                mode="require", cache_seconds=3600, fetch=BoundedFetch(timeout=5), cache=cache
            )
            for name, cache in caches.items()
        }
        for checker in checkers.values():  # warm: the OCSP and CRL fetches, once each
            checker.check(verify(leaf, issuing.certificate))
            checker.check(verify(leaf_2, named.certificate))
        warm_requests = len(server.requests)
    # the server is stopped: from here on a fetch would fail, and check() would raise

    scenarios: list[tuple[str, Callable[[], object]]] = [
        ("verify only", lambda: verify(leaf, issuing.certificate)),
    ]

    def checking(
        checker: RevocationChecker, certificate: x509.Certificate, intermediate: x509.Certificate
    ) -> Callable[[], object]:
        return lambda: checker.check(verify(certificate, intermediate))

    for name, checker in checkers.items():
        scenarios += [
            (f"verify + check, leaf ({name})", checking(checker, leaf, issuing.certificate)),
            (
                f"verify + check, leaf + intermediate ({name})",
                checking(checker, leaf_2, named.certificate),
            ),
        ]
    chain = verify(leaf, issuing.certificate)
    scenarios.append(("check alone, leaf (memory)", lambda: checkers["memory"].check(chain)))
    for _, call in scenarios:  # every call must succeed from the cache
        call()

    samples: list[list[float]] = [[] for _ in scenarios]
    for _ in range(options.repeat):
        for index, (_, call) in enumerate(scenarios):
            samples[index].append(timed(call, options.number))

    unit = statistics.median(samples[0])
    print(
        f"\nwall clock, median of {options.repeat} x {options.number} calls; "
        f"unit = verify only; {warm_requests} requests made while warming, none after\n"
    )
    print("| scenario | median us | x verify only |")
    print("|---|---:|---:|")
    for index, (name, _) in enumerate(scenarios):
        median = statistics.median(samples[index])
        print(f"| {name} | {median * 1e6:.2f} | {median / unit:.2f} |")
    redis_cache = caches.get("redis")
    if isinstance(redis_cache, RedisRevocationCache):  # leave nothing behind in Redis
        keys = list(redis_cache.client.scan_iter(match=f"{redis_cache.prefix}*"))
        if keys:
            redis_cache.client.delete(*keys)


if __name__ == "__main__":
    main()
