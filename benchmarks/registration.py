"""In-process registrations per second, measured against the cryptographic floor.

A successful ``POST /register`` cannot avoid three public-key operations: the Directory's
signature on the software statement, the software key's signature on the request, and the
chain check of the mutual-TLS transport certificate. This script times, in one run:

* **registration**: ``POST /register`` through Flask's test client, end to end (Werkzeug
  request, the whole validation pipeline, a ``SQLiteStore`` insert + commit in a temporary
  directory, the JSON response) with a warm JWKS cache (the sandbox Directory's in-process
  ``StaticFetcher``). N distinct requests (distinct ``jti``) are signed *before* timing:
  signing is the TPP's cost, not ours;
* **the floor**: the same three operations with ``cryptography`` alone on pre-parsed inputs:
  the two signature verifications on public key objects and decoded signatures, and the chain
  check with ``cryptography.x509.verification`` as ``TransportCertificateVerifier`` does it
  (leaf -> "OpenBanking Issuing CA" anchor, same extension policies);
* for the breakdown (informational): ``Registrar.register`` called directly (the protocol core,
  no HTTP), ``SQLiteStore.add`` alone, and a no-op ``POST`` through the same test client;

and reports the ratio registration / floor (target: under 4x). Variants: ``PS256`` (SSA and
request PS256, RSA transport certificate) and ``PS256+ES256`` (SSA PS256 by the Directory,
request ES256 by an EC software key, EC transport certificate; the CA signatures are RSA).

    .venv/bin/python -m benchmarks.registration                  # table + PNG chart
    .venv/bin/python -m benchmarks.registration --n 1000 --repeat 7
    .venv/bin/python -m benchmarks.registration --profile        # + where the time goes
    .venv/bin/python -m benchmarks.registration --json --baseline before.json

The chart needs matplotlib (``pip install matplotlib``); without it the chart is skipped
with a note. Output goes to ``benchmarks/out/`` (gitignored).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import datetime
import gc
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store
from flask import Flask, jsonify, request

from flask_obdcr import OpenBankingDCR
from flask_obdcr.certificates import verify as obcerts_verify
from flask_obdcr.storage import SQLiteStore
from flask_obdcr.testing import SandboxDirectory, Software
from flask_obdcr.testing.pki import KeyType

ISSUER = "https://as.bench-bank.test"
OUT_DIR = Path(__file__).resolve().parent / "out"
TARGET_RATIO = 4.0
WARMUP = 20

VARIANTS: dict[str, tuple[KeyType, KeyType]] = {
    # name: (software signing key type, transport certificate key type)
    "PS256": ("RSA", "RSA"),
    "PS256+ES256": ("EC", "EC"),
}

#: the timer: wall clock (time.perf_counter) by default; --clock cpu switches to the process's
#: CPU time (time.process_time), which a busy machine's other processes do not inflate
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock: Callable[[], float] = time.perf_counter

CORE = "core: Registrar.register, no HTTP"
STORE = "SQLiteStore.add alone"
NOOP = "no-op POST, same test client"
GLUE = "POST, Registrar.register answering at once: HTTP + view glue"


# --------------------------------------------------------------------------- set-up


@dataclass
class Scenario:
    name: str
    directory: SandboxDirectory
    software: Software
    app: Flask
    store: SQLiteStore
    environ: dict[str, str]
    tmpdir: tempfile.TemporaryDirectory
    ssa: str

    def close(self) -> None:
        self.store.close()
        self.tmpdir.cleanup()


def build_scenario(name: str, directory: SandboxDirectory) -> Scenario:
    key_type, transport_key_type = VARIANTS[name]
    software = directory.register_software(
        roles=["AISP", "PISP"], key_type=key_type, transport_key_type=transport_key_type
    )
    tmpdir = tempfile.TemporaryDirectory(prefix="obdcr-bench-")
    app = Flask("bench_bank", instance_path=os.path.join(tmpdir.name, "instance"))
    app.config.update(directory.app_config(Path(tmpdir.name) / "ca.pem", issuer=ISSUER))
    store = SQLiteStore(os.path.join(tmpdir.name, "obdcr.db"))
    OpenBankingDCR(app, store=store, jwks_fetcher=directory.fetcher)
    # one SSA, as a TPP reuses the one the Directory gave it
    ssa = directory.ssa(software)
    return Scenario(name, directory, software, app, store, software.environ(), tmpdir, ssa)


def sign_bodies(scenario: Scenario, count: int) -> list[str]:
    """``count`` registration requests with distinct jti, signed before any timing."""
    directory, software = scenario.directory, scenario.software
    exp = int(time.time()) + 3600  # outlives the whole run
    return [
        directory.registration_request(software, aud=ISSUER, ssa=scenario.ssa, exp=exp)
        for _ in range(count)
    ]


def post_runner(scenario: Scenario) -> Callable[[Sequence[str]], None]:
    """POST /register through the Flask test client, as tests/conftest.py does."""
    client = scenario.app.test_client()
    environ = scenario.environ

    def run(bodies: Sequence[str]) -> None:
        post = client.post
        for body in bodies:
            response = post(
                "/register", data=body, content_type="application/jwt", environ_base=environ
            )
            if response.status_code != 201:
                raise SystemExit(f"registration failed: {response.status_code} {response.data!r}")

    return run


def core_runner(scenario: Scenario) -> Callable[[Sequence[str]], None]:
    """The protocol core alone: what views.register calls, minus HTTP and the response."""
    state = scenario.app.extensions["obdcr"]
    registrar, environ = state.registrar, scenario.environ

    def load() -> x509.Certificate | None:
        return state.certificates.from_environ(environ)

    def run(bodies: Sequence[str]) -> None:
        for body in bodies:
            registrar.register(body.encode("ascii"), "application/jwt", load)

    return run


def store_runner(scenario: Scenario) -> Callable[[int], None]:
    """``SQLiteStore.add`` of a client like the ones registered (fresh client_id each)."""
    template = next(iter(scenario.store.list()))
    store = scenario.store

    def run(count: int) -> None:
        clients = [template.with_changes(client_id=str(uuid.uuid4())) for _ in range(count)]
        gc_was = gc.isenabled()
        gc.disable()
        start = clock()
        for client in clients:
            store.add(client)
        run.elapsed = clock() - start  # type: ignore[attr-defined]
        if gc_was:
            gc.enable()

    return run


def noop_runner(body: str, environ: dict[str, str]) -> Callable[[int], None]:
    """The same POST to a view that reads the body and returns a small JSON 201: the cost of
    the test client + Werkzeug + Flask alone."""
    app = Flask("bench_noop")

    @app.post("/register")
    def noop() -> Any:
        return jsonify(length=len(request.get_data())), 201

    client = app.test_client()

    def run(count: int) -> None:
        post = client.post
        for _ in range(count):
            post("/register", data=body, content_type="application/jwt", environ_base=environ)

    return run


def glue_runner(scenario: Scenario, body: str) -> Callable[[int], None]:
    """POST /register with ``Registrar.register`` answering at once with a registration made
    beforehand: the test client, Werkzeug, Flask and the view's own work (the body read, the
    JSON answer, the signal, the log call), none of the core's. Stores nothing."""
    from flask_obdcr.registration import TRUST, Registration

    registrar = scenario.app.extensions["obdcr"].registrar
    template = next(iter(scenario.store.list()))
    context = registrar.new_context(b"", "application/jwt", lambda: None)
    context.certificate_binding = template.extra[TRUST]["certificate_binding"]
    answer = {**template.to_response(), "registration_access_token": "x" * 36}

    def register(*_: Any) -> Registration:
        return Registration(template, dict(answer), context)

    client = scenario.app.test_client()
    environ = scenario.environ

    def run(count: int) -> None:
        registrar.register = register  # this instance, for this series only
        try:
            post = client.post
            for _ in range(count):
                response = post(
                    "/register", data=body, content_type="application/jwt", environ_base=environ
                )
                if response.status_code != 201:
                    raise SystemExit(f"stubbed registration: {response.status_code}")
        finally:
            del registrar.register

    return run


# --------------------------------------------------------------------------- the floor


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _verify_op(token: str, public_key: Any, alg: str) -> Callable[[], None]:
    """A closure verifying ``token``'s signature with cryptography alone, inputs pre-decoded."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    signature = _b64(signature_b64)
    if alg == "PS256":
        assert isinstance(public_key, rsa.RSAPublicKey)
        # as JWS (RFC 7518 3.5) and jwcrypto define it: MGF1-SHA256, salt = digest length
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        sha256 = hashes.SHA256()

        def op() -> None:
            public_key.verify(signature, signing_input, pss, sha256)

        return op
    if alg == "ES256":
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        ecdsa = ec.ECDSA(hashes.SHA256())

        def op() -> None:
            public_key.verify(der, signing_input, ecdsa)

        return op
    raise ValueError(alg)


def _public_key(jwk_key: Any) -> Any:
    return serialization.load_pem_public_key(jwk_key.export_to_pem())


def floor_ops(scenario: Scenario, request_jwt: str) -> dict[str, Callable[[], None]]:
    directory, software = scenario.directory, scenario.software
    anchors = x509.load_pem_x509_certificates(directory.transport_ca_pem().encode())
    leaf = software.transport_certificate
    verifier = (
        PolicyBuilder()
        .store(Store(anchors))
        .time(datetime.datetime.now(datetime.timezone.utc))
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=obcerts_verify._ee_policy(),  # the profile TransportCertificateVerifier uses
        )
        .build_client_verifier()
    )

    def chain() -> None:
        verifier.verify(leaf, [])

    return {
        f"SSA signature ({directory.ssa_alg}, Directory key)": _verify_op(
            scenario.ssa, _public_key(directory.ssa_key), directory.ssa_alg
        ),
        f"request signature ({software.signing_alg}, software key)": _verify_op(
            request_jwt, _public_key(software.signing_key), software.signing_alg
        ),
        "transport certificate chain (x509.verification)": chain,
    }


# --------------------------------------------------------------------------- timing


def _timed(func: Callable[[], None]) -> float:
    gc_was = gc.isenabled()
    gc.disable()  # a collection landing in one series and not another is noise
    try:
        start = clock()
        func()
        return clock() - start
    finally:
        if gc_was:
            gc.enable()


def time_op(op: Callable[[], None], n: int) -> float:
    """Seconds per call of ``op`` over ``n`` calls."""

    def loop() -> None:
        for _ in range(n):
            op()

    return _timed(loop) / n


@dataclass
class Result:
    variant: str
    n: int
    repeat: int
    registration: list[float] = field(default_factory=list)  # s/registration, per repeat
    floor: dict[str, list[float]] = field(default_factory=dict)  # s/op, per repeat
    info: dict[str, list[float]] = field(default_factory=dict)  # s/op, per repeat

    @property
    def registration_median(self) -> float:
        return statistics.median(self.registration)

    @property
    def floor_medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.floor.items()}

    @property
    def floor_total(self) -> float:
        return sum(self.floor_medians.values())

    @property
    def ratio(self) -> float:
        return self.registration_median / self.floor_total

    def info_median(self, name: str) -> float | None:
        values = self.info.get(name)
        return statistics.median(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "n": self.n,
            "repeat": self.repeat,
            "registration_s": self.registration,
            "floor_s": self.floor,
            "info_s": self.info,
            "ratio": self.ratio,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        return cls(
            data["variant"],
            data["n"],
            data["repeat"],
            data["registration_s"],
            data["floor_s"],
            data.get("info_s", {}),
        )


def bench_variant(
    name: str, directory: SandboxDirectory, n: int, repeat: int, *, breakdown: bool
) -> Result:
    scenario = build_scenario(name, directory)
    try:
        series = 2 if breakdown else 1  # POST, and the core alone
        total = WARMUP + series * n * repeat
        print(f"[{name}] signing {total} requests (not timed) ...", file=sys.stderr)
        bodies = sign_bodies(scenario, total)
        post, core = post_runner(scenario), core_runner(scenario)
        post(bodies[:WARMUP])  # JWKS cache, SQLite connection and schema, imports: warm
        bodies = bodies[WARMUP:]
        ops = floor_ops(scenario, bodies[0])
        noop, store = noop_runner(bodies[0], scenario.environ), store_runner(scenario)
        glue = glue_runner(scenario, bodies[0])
        noop(WARMUP)
        glue(WARMUP)
        result = Result(name, n, repeat, floor={label: [] for label in ops})
        if breakdown:
            result.info = {CORE: [], STORE: [], NOOP: [], GLUE: []}
        # Series interleaved within each repeat, so drifting machine load hits all of them.
        for r in range(repeat):
            chunk = bodies[r * series * n : (r * series + 1) * n]
            result.registration.append(_timed(partial(post, chunk)) / n)
            for label, op in ops.items():
                result.floor[label].append(time_op(op, n))
            if breakdown:
                chunk = bodies[(r * series + 1) * n : (r * series + 2) * n]
                result.info[CORE].append(_timed(partial(core, chunk)) / n)
                store(n)
                result.info[STORE].append(store.elapsed / n)  # type: ignore[attr-defined]
                result.info[NOOP].append(_timed(lambda: noop(n)) / n)
                result.info[GLUE].append(_timed(lambda: glue(n)) / n)
            print(
                f"[{name}] repeat {r + 1}/{repeat}: {result.registration[-1] * 1e6:,.0f} µs"
                f" per registration, floor {sum(v[-1] for v in result.floor.values()) * 1e6:,.0f}"
                " µs",
                file=sys.stderr,
            )
        expected = WARMUP + series * n * repeat + (n * repeat if breakdown else 0)
        if len(scenario.store) != expected:
            raise SystemExit(f"expected {expected} stored clients, found {len(scenario.store)}")
        return result
    finally:
        scenario.close()


# --------------------------------------------------------------------------- reporting


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def _per_s(seconds: float) -> str:
    return f"{1 / seconds:,.0f}"


def markdown_table(results: list[Result], baseline: dict[str, Result] | None = None) -> str:
    before = baseline or {}
    head = "| variant | what | median µs | per second |"
    rule = "|---|---|---:|---:|"
    if before:
        head += " before: µs |"
        rule += "---:|"
    lines = [head, rule]

    def row(variant: str, what: str, now: float, then: float | None = None, *, bold=False):
        cells = [_us(now), _per_s(now)]
        if bold:
            cells = [f"**{cell}**" for cell in cells]
            what = f"**{what}**"
        line = f"| {variant} | {what} | {cells[0]} | {cells[1]} |"
        if before:
            line += f" {_us(then) if then else '-'} |"
        lines.append(line)

    for res in results:
        old = before.get(res.variant)
        old_floor = old.floor_medians if old else {}
        for label, value in res.floor_medians.items():
            row(res.variant, f"floor: {label}", value, old_floor.get(label))
        row(
            res.variant, "floor total", res.floor_total, old.floor_total if old else None, bold=True
        )
        row(
            res.variant,
            "registration: POST /register (test client, SQLite)",
            res.registration_median,
            old.registration_median if old else None,
            bold=True,
        )
        for name in (CORE, STORE, NOOP, GLUE):
            info = res.info_median(name)
            if info is not None:
                row(res.variant, f"(info) {name}", info, old.info_median(name) if old else None)
        verdict = "OK" if res.ratio < TARGET_RATIO else "above target"
        line = (
            f"| {res.variant} | **ratio registration / floor** | **{res.ratio:.2f}x** "
            f"| target < {TARGET_RATIO:g}x: {verdict} |"
        )
        if before:
            line += f" {old.ratio:.2f}x |" if old else " - |"
        lines.append(line)
    return "\n".join(lines)


def breakdown_table(results: list[Result]) -> str:
    """Where the time beyond the floor goes, from the wall-clock series (no profiler)."""
    lines = [
        "| variant | floor | core beyond floor, excl. store | SQLite insert+commit "
        "| HTTP: test client + Flask + view glue | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        parts = _parts(res)
        if parts is None:
            continue
        total = res.registration_median
        cells = " | ".join(f"{_us(v)} ({v / total:.0%})" for v in parts.values())
        lines.append(f"| {res.variant} | {cells} | {_us(total)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _parts(res: Result) -> dict[str, float] | None:
    core, store = res.info_median(CORE), res.info_median(STORE)
    if core is None or store is None:
        return None
    glue = res.info_median(GLUE)
    if glue is not None:
        # the core as it runs inside a POST (registration - HTTP and view glue): slower than
        # in the core-only loop, whose code and data stay in the CPU's caches
        return {
            "floor": res.floor_total,
            "core beyond floor (Python: JOSE parsing, policies, JSON, ...)": max(
                res.registration_median - glue - res.floor_total - store, 0.0
            ),
            "SQLite insert + commit": store,
            "HTTP: test client, Werkzeug, Flask, view glue": glue,
        }
    return {
        "floor": res.floor_total,
        "core beyond floor (Python: JOSE parsing, policies, JSON, ...)": max(
            core - res.floor_total - store, 0.0
        ),
        "SQLite insert + commit": store,
        "HTTP: test client, Werkzeug, Flask, view glue": max(res.registration_median - core, 0.0),
    }


def environment_line(n: int, repeat: int, clock_name: str) -> str:
    versions = ", ".join(
        f"{dist} {version(dist)}" for dist in ("flask", "werkzeug", "cryptography", "jwcrypto")
    )
    return (
        f"{n} registrations x {repeat} repeats, median per series, {clock_name} clock "
        f"({CLOCKS[clock_name].__name__}); Python "
        f"{platform.python_version()}, {versions}; {platform.machine()}, {os.cpu_count()} CPU"
    )


def write_chart(results: list[Result], path: Path, baseline: dict[str, Result]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "\nnote: matplotlib is not installed, so no chart "
            "(pip install matplotlib for benchmarks/out/registration.png)"
        )
        return False
    rows: list[tuple[str, Result, bool]] = []
    for res in results:
        if res.variant in baseline:
            rows.append((f"{res.variant}\nbefore", baseline[res.variant], True))
        rows.append((f"{res.variant}\nnow" if baseline else res.variant, res, False))
    colours = {
        "floor": "#4c72b0",
        "core beyond floor (Python: JOSE parsing, policies, JSON, ...)": "#dd8452",
        "SQLite insert + commit": "#55a868",
        "HTTP: test client, Werkzeug, Flask, view glue": "#8172b3",
        "registration (no breakdown)": "#937860",
    }
    fig, ax = plt.subplots(figsize=(10, 2.2 + 0.75 * len(rows)))
    used: set[str] = set()
    for y, (_label, res, _old) in enumerate(reversed(rows)):
        parts = _parts(res) or {
            "floor": res.floor_total,
            "registration (no breakdown)": res.registration_median - res.floor_total,
        }
        left = 0.0
        for name, seconds in parts.items():
            ax.barh(
                y,
                seconds * 1e6,
                left=left,
                color=colours[name],
                label=None if name in used else name,
            )
            used.add(name)
            left += seconds * 1e6
        ax.text(
            res.registration_median * 1e6,
            y,
            f"  {res.registration_median * 1e6:,.0f} µs = {res.ratio:.1f}x floor",
            va="center",
            fontsize=8,
        )
        target = res.floor_total * TARGET_RATIO * 1e6
        ax.plot([target, target], [y - 0.4, y + 0.4], color="black", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"median µs per registration (dotted: {TARGET_RATIO:g}x floor target)")
    ax.set_title("flask-obdcr: in-process POST /register vs the cryptographic floor", fontsize=10)
    fig.legend(fontsize=7, loc="lower center", ncol=2, frameon=False)
    ax.margins(x=0.22)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- profile

#: (label, file suffix, function name) for the inclusive-time listing, in tree order
PROFILE_POINTS: list[tuple[str, str, str]] = [
    ("test-client POST, whole", "werkzeug/test.py", "open"),
    ("  Flask wsgi_app", "flask/app.py", "wsgi_app"),
    ("    views.register", "flask_obdcr/views.py", "register"),
    ("      Registrar.register", "flask_obdcr/registration.py", "register"),
    ("        Pipeline.run", "flask_obdcr/policies/base.py", "run"),
    ("          request_body", "policies/request_body.py", "__call__"),
    ("          request_jwt", "policies/request_jwt.py", "__call__"),
    ("          software_statement", "policies/software_statement.py", "__call__"),
    ("          request_signature", "policies/request_signature.py", "__call__"),
    ("          request_claims", "policies/request_claims.py", "__call__"),
    ("          redirect_uris", "policies/redirect_uris.py", "__call__"),
    (
        "          token_endpoint_auth + grant_types + scope + ...",
        "policies/client_metadata.py",
        "__call__",
    ),
    ("          transport_certificate", "policies/transport_certificate.py", "__call__"),
    ("        SQLiteStore._add", "flask_obdcr/storage/sqlite.py", "_add"),
    (
        "        StoredClient.to_record (3 JSON encodings)",
        "flask_obdcr/storage/base.py",
        "to_record",
    ),
    ("      json_response (json.dumps of the body)", "flask_obdcr/views.py", "json_response"),
    (
        "      registration_client_uri (from configuration)",
        "flask_obdcr/views.py",
        "_with_client_uri",
    ),
    ("      read_body", "flask_obdcr/views.py", "read_body"),
    ("      blinker signals", "blinker/base.py", "send"),
    ("by function, wherever called:", "", ""),
    ("  jose.decode (the request; an SSA not remembered)", "flask_obdcr/jose.py", "decode"),
    ("  jose.peek, VerifiedTokens.peek (the SSA)", "flask_obdcr/jose.py", "peek"),
    ("  jose.verify (request, SSA)", "flask_obdcr/jose.py", "verify"),
    ("  jwcrypto JWS() objects", "jwcrypto/jws.py", "__init__"),
    ("  JWKSClient.candidate_keys", "flask_obdcr/jwks.py", "candidate_keys"),
    ("  JWKSClient.document", "flask_obdcr/jwks.py", "document"),
    (
        "  client_certificate_from_environ",
        "flask_obdcr/certificates/source.py",
        "client_certificate_from_environ",
    ),
    ("  TransportCertificateVerifier.verify", "flask_obdcr/certificates/verify.py", "verify"),
    (
        "  certificate_belongs_to_software",
        "flask_obdcr/certificates/binding.py",
        "certificate_belongs_to_software",
    ),
]
#: C functions, by own time: the floor's primitives and the store's I/O
PROFILE_BUILTINS: list[tuple[str, str]] = [
    ("  [C] RSA verify", "'cryptography.hazmat.bindings._rust.openssl.rsa.RSAPublicKey"),
    ("  [C] EC verify", "'cryptography.hazmat.bindings._rust.openssl.ec.ECPublicKey"),
    ("  [C] x509 chain verify", "'cryptography.hazmat.bindings._rust.x509.ClientVerifier"),
    ("  [C] PEM certificate parse", "load_pem_x509_certificate"),
    ("  [C] sqlite3 execute", "'sqlite3.Connection"),
]


def profile(name: str, directory: SandboxDirectory, n: int, out_dir: Path, top: int) -> None:
    scenario = build_scenario(name, directory)
    try:
        bodies = sign_bodies(scenario, n + WARMUP)
        run = post_runner(scenario)
        run(bodies[:WARMUP])
        profiler = cProfile.Profile()
        profiler.enable()
        run(bodies[WARMUP:])
        profiler.disable()
    finally:
        scenario.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"registration-{name.replace('+', '_')}.prof"
    profiler.dump_stats(path)
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())

    def inclusive(file_suffix: str, func: str) -> float:
        return sum(
            ct
            for (filename, _, funcname), (_, _, _, ct, _) in entries.items()
            if funcname == func and filename.replace(os.sep, "/").endswith(file_suffix)
        )

    def builtin(fragment: str) -> float:
        return sum(
            tt
            for (filename, _, funcname), (_, _, tt, _, _) in entries.items()
            if filename == "~" and fragment in funcname
        )

    print(f"\n### cProfile of {n} registrations ({name}); raw stats: {path}\n")
    print(
        f"Profiled: {total / n * 1e6:,.0f} µs per registration (the profiler slows Python code"
        " several-fold and C code hardly at all: read shares, not absolute times).\n"
    )
    print("| where (inclusive time) | µs/registration | share |\n|---|---:|---:|")
    for label, suffix, func in PROFILE_POINTS:
        depth = len(label) - len(label.lstrip())
        shown = "&nbsp;" * (2 * depth) + label.lstrip()
        if not suffix:
            print(f"| *{shown}* | | |")
            continue
        value = inclusive(suffix, func)
        if value:
            print(f"| {shown} | {value / n * 1e6:,.0f} | {value / total:.0%} |")
    for label, fragment in PROFILE_BUILTINS:
        value = builtin(fragment)
        if value:
            shown = "&nbsp;" * 4 + label.lstrip()
            print(f"| {shown} | {value / n * 1e6:,.0f} | {value / total:.0%} |")
    print(f"\nTop {top} functions by own time:\n```")
    stats.sort_stats("tottime").print_stats(top)
    print("```")


# --------------------------------------------------------------------------- SQLite settings

#: (label, pragmas before the file's first write, pragmas after WAL + NORMAL, table variant).
#: The first row is what SQLiteStore ships; OFF is there to show what durability costs.
SQLITE_SETTINGS: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    ("as shipped: WAL, synchronous=NORMAL, 4 KiB pages", (), (), "rowid"),
    ("synchronous=FULL (fsync of the WAL at every commit)", (), ("synchronous=FULL",), "rowid"),
    ("synchronous=OFF (not durable; for comparison)", (), ("synchronous=OFF",), "rowid"),
    ("page_size=8192 (a record fits one page)", ("page_size=8192",), (), "rowid"),
    ("page_size=16384", ("page_size=16384",), (), "rowid"),
    ("wal_autocheckpoint=10000 pages", (), ("wal_autocheckpoint=10000",), "rowid"),
    ("WITHOUT ROWID (rows in the client_id b-tree)", (), (), "without_rowid"),
    ("no software_id index", (), (), "no_index"),
    ("no file (:memory:): all but the write itself", (), (), "memory"),
]


def _settings_connection(directory: str, pre: Sequence[str], post: Sequence[str], table: str):
    import sqlite3

    from flask_obdcr.storage import sqlite as store_sqlite

    path = ":memory:" if table == "memory" else os.path.join(directory, f"{uuid.uuid4()}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in pre:
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # as store_sqlite.open_connection
    for pragma in post:
        conn.execute(f"PRAGMA {pragma}")
    # the shipped schema, read from a database SQLiteStore made
    shipped = SQLiteStore(os.path.join(directory, f"schema-{uuid.uuid4()}.db"))
    schema = [
        sql
        for (sql,) in shipped.db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'clients' AND sql IS NOT NULL"
        ).fetchall()
    ]
    shipped.close()
    for sql in schema:
        if sql.startswith("CREATE INDEX") and table == "no_index":
            continue
        if sql.startswith("CREATE TABLE") and table == "without_rowid":
            sql += " WITHOUT ROWID"
        conn.execute(sql)
    return conn, store_sqlite._INSERT, store_sqlite._NAMES


def sqlite_settings(directory: SandboxDirectory, n: int, repeat: int) -> None:
    """One client record (a real registration's) inserted under each setting, interleaved."""
    scenario = build_scenario("PS256", directory)
    try:
        post_runner(scenario)(sign_bodies(scenario, 1))
        record = next(iter(scenario.store.list())).to_record()
        with tempfile.TemporaryDirectory(prefix="obdcr-sqlite-") as work:
            conns = [
                _settings_connection(work, pre, post, table)
                for _, pre, post, table in SQLITE_SETTINGS
            ]
            cpu: list[list[float]] = [[] for _ in SQLITE_SETTINGS]
            wall: list[list[float]] = [[] for _ in SQLITE_SETTINGS]
            for r in range(repeat + 1):  # the first round warms each file up, untimed
                for i, (conn, insert, names) in enumerate(conns):
                    rows = [
                        [str(uuid.uuid4()) if k == "client_id" else record[k] for k in names]
                        for _ in range(n)
                    ]
                    gc.disable()
                    started_cpu, started_wall = time.process_time(), time.perf_counter()
                    for row in rows:
                        conn.execute(insert, row)
                    elapsed_cpu = time.process_time() - started_cpu
                    elapsed_wall = time.perf_counter() - started_wall
                    gc.enable()
                    if r:
                        cpu[i].append(elapsed_cpu / n)
                        wall[i].append(elapsed_wall / n)
            for conn, _, _ in conns:
                conn.close()
    finally:
        scenario.close()
    size = sum(len(v) for v in record.values() if isinstance(v, str))
    print(f"\n## SQLite: one client record ({size:,} characters) per INSERT, autocommit\n")
    print(f"{n} inserts x {repeat} repeats, interleaved; median µs per insert\n")
    print("| setting | CPU µs | wall µs | CPU vs shipped |\n|---|---:|---:|---:|")
    base = statistics.median(cpu[0])
    for (label, *_), c, w in zip(SQLITE_SETTINGS, cpu, wall, strict=True):
        c_med, w_med = statistics.median(c), statistics.median(w)
        print(f"| {label} | {c_med * 1e6:,.1f} | {w_med * 1e6:,.1f} | {c_med / base:.2f}x |")


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.registration",
        description="In-process registrations per second vs the cryptographic floor.",
    )
    parser.add_argument("--n", type=int, default=500, help="registrations per repeat (500)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats; medians reported (5)")
    parser.add_argument(
        "--variant", choices=[*VARIANTS, "all"], default="all", help="which variant(s) (all)"
    )
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the core-only, store-only and no-op series (half the signing time)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile registrations with cProfile and print a breakdown",
    )
    parser.add_argument("--profile-n", type=int, default=300, help="registrations profiled (300)")
    parser.add_argument("--top", type=int, default=25, help="functions listed by the profile")
    parser.add_argument("--no-bench", action="store_true", help="profile only")
    parser.add_argument(
        "--sqlite-settings",
        action="store_true",
        help="also time one client record's INSERT under each SQLite setting considered",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    parser.add_argument("--json", action="store_true", help="write the raw series to OUT/*.json")
    parser.add_argument(
        "--baseline", type=Path, help="a registration.json of an earlier run, shown as 'before'"
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall: time.perf_counter (default); cpu: time.process_time, "
        "for a machine busy with other work",
    )
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if a ratio is not under {TARGET_RATIO:g}x"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.profile_n < 1:
        parser.error("--n, --repeat and --profile-n must be at least 1")

    global clock
    clock = CLOCKS[args.clock]
    baseline: dict[str, Result] = {}
    if args.baseline:
        baseline = {
            r.variant: r for r in map(Result.from_dict, json.loads(args.baseline.read_text()))
        }
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    print("building the sandbox Directory (key generation) ...", file=sys.stderr)
    directory = SandboxDirectory(ssa_alg="PS256")
    results: list[Result] = []
    if not args.no_bench:
        for name in variants:
            results.append(
                bench_variant(name, directory, args.n, args.repeat, breakdown=not args.no_breakdown)
            )
        print("\n## In-process registration vs the cryptographic floor\n")
        print(environment_line(args.n, args.repeat, args.clock) + "\n")
        print(markdown_table(results, baseline))
        breakdown = breakdown_table(results)
        if breakdown:
            print("\nWhere a registration's time goes (by subtraction of the series above):\n")
            print(breakdown)
        args.out.mkdir(parents=True, exist_ok=True)
        if args.json:
            raw = args.out / "registration.json"
            raw.write_text(json.dumps([r.to_dict() for r in results], indent=1))
            print(f"\nraw series: {raw}")
        chart = args.out / "registration.png"
        if write_chart(results, chart, baseline):
            print(f"\nchart: {chart}")
    if args.profile:
        for name in variants:
            profile(name, directory, args.profile_n, args.out, args.top)
    if args.sqlite_settings:
        sqlite_settings(directory, args.n, args.repeat)
    if args.check and any(r.ratio >= TARGET_RATIO for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
