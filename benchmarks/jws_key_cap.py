"""A kid-less JWS against a hostile software JWKS: the cost before and after the key floor
and the per-verification key cap (``jose.MAX_KEYS_TRIED``).

The attack (issue item 7): a TPP publishes a software JWKS as large as the fetcher allows
(256 KiB) full of RSA-3072 keys, then sends client assertions without ``kid`` for its
client_id. Before the fix every key was tried on every assertion, and a public exponent as
long as the modulus makes each try cost a private-key-sized operation.

Each row is timed in one run, interleaved per repeat (medians reported), and given as a ratio
to one plain verification (PS256, RSA-2048, the key found by ``kid``) measured in the same
run, so the figures compare across machines:

* **hostile-e, uncapped**: the pre-fix loop over the full-size-exponent set, made the way the
  old ``jose.verify`` made it: jwcrypto's per-algorithm verifier on each key in turn.
* **hostile-e, now**: ``jose.verify`` with the same keys (the floor passes them all over);
  and ``JWKSClient.candidate_keys`` on that set, warm cache (no key is a candidate).
* **F4 keys, uncapped / now**: a set of RSA-3072 keys with e = 65537 (above the floor), as
  many as fit in 256 KiB: the old loop over all of them, then ``jose.verify`` (capped).
* for context: parsing the hostile-e set, which happens once per fetch, not per token.

Hostile moduli are random odd 3072-bit numbers just below 2**3072 (generating hundreds of
real RSA-3072 keys would take minutes): a verification costs the same modular
exponentiation, and the signature is always below the modulus so none is cut short.

    .venv/bin/python -m benchmarks.jws_key_cap
    .venv/bin/python -m benchmarks.jws_key_cap --repeat 9 --clock cpu
    .venv/bin/python -m benchmarks.jws_key_cap --json     # also benchmarks/out/jws_key_cap.json
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk
from jwcrypto.jwa import JWA

from flask_obdcr import jose
from flask_obdcr.jwks import JWKSClient, KeyNotFound, StaticFetcher, _parse_jwks

ROOT = Path(__file__).resolve().parent.parent

OUT_DIR = ROOT / "benchmarks" / "out"
URL = "https://keystore.example/hostile/software.jwks"
JWKS_MAX_BYTES = 256 * 1024  # HTTPFetcher's default cap: the largest set a TPP can serve
BITS = 3072


def b64uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hostile_member(index: int, *, full_size_exponent: bool) -> dict[str, Any]:
    # odd, top 64 bits set: above any BITS-bit signature, so every try reaches the exponentiation
    modulus = (1 << BITS) - 1 - 2 * secrets.randbits(BITS - 65)
    exponent = (secrets.randbits(BITS - 2) | (1 << (BITS - 2)) | 1) if full_size_exponent else 65537
    return {
        "kty": "RSA",
        "use": "sig",
        "kid": f"k{index}",
        "n": b64uint(modulus),
        "e": b64uint(exponent),
    }


def hostile_set(*, full_size_exponent: bool, max_keys: int | None) -> dict[str, Any]:
    """As many hostile keys as fit in JWKS_MAX_BYTES (or ``max_keys``)."""
    members: list[dict[str, Any]] = []
    size = len('{"keys":[]}')
    while max_keys is None or len(members) < max_keys:
        member = hostile_member(len(members), full_size_exponent=full_size_exponent)
        grown = size + len(json.dumps(member, separators=(",", ":"))) + 1
        if grown > JWKS_MAX_BYTES:
            break
        members.append(member)
        size = grown
    return {"keys": members}


def signed(key: jwk.JWK, *, kid: str | None) -> str:
    header = {"alg": "PS256", **({"kid": kid} if kid else {})}
    claims = {"iss": "client", "sub": "client", "aud": "https://bank.example", "exp": 2**31}

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    signing_input = f"{part(header)}.{part(claims)}"
    signature = JWA.signing_alg("PS256").sign(key, signing_input.encode())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"


def uncapped(token: str, keys: list[jwk.JWK]) -> Callable[[], None]:
    """The pre-fix jose.verify loop: every key of the right type, jwcrypto's verifier on each."""
    engine = JWA.signing_alg("PS256")
    head, _, signature_b64 = token.rpartition(".")
    signing_input = head.encode()
    signature = jose.b64url_decode(signature_b64)

    def run() -> None:
        for key in keys:
            try:
                engine.verify(key, signing_input, signature)
            except Exception:  # noqa: BLE001, S112 - as the old loop: any failure is "no"
                continue
        # no key verified: the old code raised BadSignature here

    return run


def refused(call: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            call()
        except (jose.BadSignature, KeyNotFound):
            return
        raise AssertionError("the hostile token verified")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.jws_key_cap", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repeats (median)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--max-keys", type=int, default=None, help="fewer keys (a quick run)")
    parser.add_argument("--json", action="store_true", help="write benchmarks/out/jws_key_cap.json")
    options = parser.parse_args()
    clock = time.perf_counter if options.clock == "wall" else time.process_time

    print("making keys ...", file=sys.stderr)
    plain_key = jwk.JWK.from_pyca(rsa.generate_private_key(65537, 2048))
    plain_key["kid"] = "plain"
    plain_public = jwk.JWK(**plain_key.export_public(as_dict=True))
    plain_token = signed(plain_key, kid="plain")
    attacker = jwk.JWK.from_pyca(rsa.generate_private_key(65537, BITS))
    token = signed(attacker, kid=None)  # kid-less, and made by no key of the set

    hostile_e = hostile_set(full_size_exponent=True, max_keys=options.max_keys)
    f4 = hostile_set(full_size_exponent=False, max_keys=options.max_keys)
    hostile_e_keys = [jwk.JWK(**member) for member in hostile_e["keys"]]
    f4_keys = [jwk.JWK(**member) for member in f4["keys"]]
    for key in hostile_e_keys + f4_keys:
        key.export_to_pem()  # the public key built once, as the JWKS cache does
    client = JWKSClient(StaticFetcher({URL: hostile_e}), clock=lambda: 0.0)
    client.key_set(URL)  # warm

    rows: list[tuple[str, int, Callable[[], object]]] = [
        (
            "plain verification (PS256, RSA-2048, by kid)",
            1,
            lambda: jose.verify(plain_token, [plain_public], "PS256"),
        ),
        (
            "hostile-e, uncapped (pre-fix loop)",
            len(hostile_e_keys),
            uncapped(token, hostile_e_keys),
        ),
        (
            "hostile-e, now: jose.verify",
            len(hostile_e_keys),
            refused(lambda: jose.verify(token, hostile_e_keys, "PS256")),
        ),
        (
            "hostile-e, now: candidate_keys (warm)",
            len(hostile_e_keys),
            refused(lambda: client.candidate_keys(URL, kid=None, alg="PS256")),
        ),
        ("F4 keys, uncapped (pre-fix loop)", len(f4_keys), uncapped(token, f4_keys)),
        (
            f"F4 keys, now: jose.verify (cap {jose.MAX_KEYS_TRIED})",
            len(f4_keys),
            refused(lambda: jose.verify(token, f4_keys, "PS256")),
        ),
        (
            "context: parse the hostile-e set (per fetch)",
            len(hostile_e_keys),
            lambda: _parse_jwks(json.dumps(hostile_e), URL, quiet=True),
        ),
    ]
    # calls per sample: enough for the fast rows to be well above the clock's resolution
    loops = {0: 200, 2: 200, 3: 200, 5: 20}

    samples: dict[int, list[float]] = {index: [] for index in range(len(rows))}
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for repeat in range(options.repeat):
            print(f"repeat {repeat + 1}/{options.repeat} ...", file=sys.stderr)
            for index, (_, _, call) in enumerate(rows):
                count = loops.get(index, 1)
                start = clock()
                for _ in range(count):
                    call()
                samples[index].append((clock() - start) / count)
    finally:
        if gc_was_on:
            gc.enable()

    unit = statistics.median(samples[0])
    print(f"\n{options.clock} clock, median of {options.repeat}; unit = one plain verification\n")
    print("| scenario | keys in set | median ms | x plain |")
    print("|---|---:|---:|---:|")
    results = []
    for index, (name, count, _) in enumerate(rows):
        median = statistics.median(samples[index])
        print(f"| {name} | {count} | {median * 1000:.3f} | {median / unit:.1f} |")
        results.append(
            {"scenario": name, "keys": count, "median_s": median, "ratio": median / unit}
        )
    if options.json:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / "jws_key_cap.json").write_text(
            json.dumps(
                {"clock": options.clock, "repeat": options.repeat, "rows": results}, indent=2
            )
        )


if __name__ == "__main__":
    main()
