"""The token endpoint and ``require_token`` with revocation on (warm cache) against off.

Issue "Trust over time", item "Measure": the hot path must not slow by more than 5% when
revocation is on. Banks built alike and measured in one run differ in one setting:

* **on**: ``OBDCR_REVOCATION="require"``: every verification of the client certificate also
  checks its revocation status (OCSP first, the CRL as fallback: ``RevocationChecker``), and
  the SSA's revoked key sets are consulted for the certificate's key and the client
  assertion's key (``RevokedKeys``);
* **off**: ``OBDCR_REVOCATION="off"``: neither.

and, to split the difference between the two checks (``--no-split`` leaves them out), two
"on" banks with one of them switched off on the bank's own objects after ``init_app``:

* **OCSP/CRL only**: ``state.revoked_keys.mode = "off"``;
* **revoked keys only**: ``state.certificates.revocation.mode = "off"``.

Each bank is the one of ``tests/conftest.py``'s ``bank`` fixture, called through Flask's test
client: an Authlib ``AuthorizationServer`` wired by ``dcr.configure_authorization_server``,
``POST /token`` and a ``GET /accounts`` behind ``@dcr.require_token("accounts")``, a
``MemoryStore`` (``--store sqlite``: a ``SQLiteStore`` and its token table in a temporary
directory), the sandbox Directory's JWKS in process (fresh for the whole run). The TPP's
transport certificate is issued by the sandbox Directory's issuing CA **with** an OCSP
responder and a CRL distribution point, both served by a
:class:`~flask_obdcr.testing.revocation.RevocationServer` on loopback and fetched by the
bank's real ``BoundedFetch``. The two clients (``tls_client_auth``, ``private_key_jwt``) are
registered through ``POST /register`` once and the records put in every bank's store, so one
list of client assertions serves every bank (each bank has its own replay cache). The warm-up
fills each bank's revocation cache (one OCSP request each); the script then asserts that the
responder sees no request while timing, so every timed check is answered from the cache, and
at the end, with the responder stopped, that the "on" bank's verdict is a cached "good".

What is timed, interleaved per repeat (the banks' order rotates between repeats; medians
reported; the cyclic garbage collector off while a series runs):

* **token, tls_client_auth**: ``POST /token`` ``grant_type=client_credentials``;
* **token, private_key_jwt**: the same with a client assertion (PS256 by default; each with
  its own ``jti``, signed before timing: signing is the TPP's cost);
* **require_token GET**: ``GET /accounts`` with a certificate-bound token and its certificate.

Each row gives the wall-clock median per request on and off and their ratio, and the CPU time
per request (``time.process_time``) on and off and its ratio: on a machine busy with other
work the CPU ratio is the steadier one. Target: every ratio at most 1.05. ``--control`` is an
A/A run (the "on" bank gets ``"off"`` too): its ratios are the noise floor of the method.

    .venv/bin/python -m benchmarks.token_revocation
    .venv/bin/python -m benchmarks.token_revocation --n 400 --repeat 21 --json
    .venv/bin/python -m benchmarks.token_revocation --control          # A/A: the noise floor
    .venv/bin/python -m benchmarks.token_revocation --store sqlite
    .venv/bin/python -m benchmarks.token_revocation --profile          # cProfile, on vs off

``--json`` writes ``benchmarks/out/token_revocation.json`` (gitignored); ``--check`` exits 1
when a ratio is above the target.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from flask import Flask
from flask.testing import FlaskClient

from flask_obdcr import OpenBankingDCR
from flask_obdcr.jwks import StaticFetcher
from flask_obdcr.revocation import RevocationChecker
from flask_obdcr.revoked_keys import key_thumbprint
from flask_obdcr.state import EXTENSION_KEY, DCRState
from flask_obdcr.storage import ClientStore, MemoryStore, SQLiteStore
from flask_obdcr.testing import SandboxDirectory, Software
from flask_obdcr.testing.pki import KeyType
from flask_obdcr.testing.revocation import RevocationServer

ROOT = Path(__file__).resolve().parent.parent

ISSUER = "https://as.bench-bank.test"
TOKEN_URL = f"{ISSUER}/token"
BASE = "https://localhost"  # Authlib refuses a token endpoint over plain http
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OUT_DIR = ROOT / "benchmarks" / "out"
TARGET = 1.05
WARMUP = 30

OFF, ON, OCSP_ONLY, KEYS_ONLY = "off", "on", "OCSP/CRL only", "revoked keys only"

SCENARIOS = ("token, tls_client_auth", "token, private_key_jwt", "require_token GET")
#: requests per series, relative to --n: a GET is several times cheaper than a token request
SCALE = {SCENARIOS[0]: 1, SCENARIOS[1]: 1, SCENARIOS[2]: 3}


# --------------------------------------------------------------------------- the banks


@dataclass
class Bank:
    name: str
    app: Flask
    client: FlaskClient
    state: DCRState
    store: ClientStore
    bound_token: str = ""
    #: the next unused client assertion (the list is shared by every bank)
    next_assertion: int = 0

    @property
    def checker(self) -> RevocationChecker:
        checker = self.state.certificates.revocation
        assert isinstance(checker, RevocationChecker)
        return checker


def make_bank(
    name: str,
    setting: str,
    directory: SandboxDirectory,
    documents: dict[str, Any],
    folder: Path,
    store_kind: str,
) -> Bank:
    """The ``bank`` fixture of tests/conftest.py with ``OBDCR_REVOCATION=setting``."""
    folder.mkdir()
    app = Flask("bench_bank", instance_path=str(folder / "instance"))
    app.config.update(
        directory.app_config(
            folder / "ca.pem",
            issuer=ISSUER,
            OBDCR_REVOCATION=setting,
            # longer than any run: a verdict is never refreshed while timing
            OBDCR_REVOCATION_CACHE_SECONDS=3600,
        )
    )
    store: ClientStore = (
        SQLiteStore(folder / "obdcr.db") if store_kind == "sqlite" else MemoryStore()
    )
    # the JWKS in process, fresh for a day: only revocation goes over the network
    fetcher = StaticFetcher(documents, max_age=86400)
    dcr = OpenBankingDCR(app, store=store, jwks_fetcher=fetcher)
    server = AuthorizationServer(app, query_client=dcr.query_client, save_token=dcr.save_token)
    dcr.configure_authorization_server(server)

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    @app.get("/accounts")
    @dcr.require_token("accounts")
    def accounts() -> Any:
        return {"Data": {"Account": [{"AccountId": "22289"}]}}

    bank = Bank(name, app, app.test_client(), app.extensions[EXTENSION_KEY], store)
    if name == OCSP_ONLY:
        bank.state.revoked_keys.mode = "off"
    elif name == KEYS_ONLY:
        bank.checker.mode = "off"
    return bank


def register(bank: Bank, directory: SandboxDirectory, software: Software, method: str) -> str:
    body = directory.registration_request(software, aud=ISSUER, token_endpoint_auth_method=method)
    response = bank.client.post(
        "/register",
        data=body,
        content_type="application/jwt",
        environ_base=software.environ(),
        base_url=BASE,
    )
    if response.status_code != 201:
        raise SystemExit(f"[{bank.name}] registration refused: {response.get_data(as_text=True)}")
    return str(response.get_json()["client_id"])


# --------------------------------------------------------------------------- the requests


@dataclass(frozen=True)
class Clients:
    tls_client_id: str
    jwt_client_id: str
    #: client assertions for jwt_client_id, signed before timing, each with its own jti
    assertions: list[str]


def runners(
    bank: Bank, clients: Clients, environ: dict[str, str]
) -> dict[str, Callable[[int], None]]:
    """One callable per scenario: ``run(count)`` makes ``count`` requests, each checked."""
    client = bank.client
    tls_form = {
        "grant_type": "client_credentials",
        "client_id": clients.tls_client_id,
        "scope": "accounts",
    }
    bearer = {"Authorization": f"Bearer {bank.bound_token}"}
    assertions = clients.assertions

    def fail(what: str, response: Any) -> None:
        raise SystemExit(
            f"[{bank.name}] {what}: {response.status_code} {response.get_data(as_text=True)}"
        )

    def tls(count: int) -> None:
        post = client.post
        for _ in range(count):
            response = post("/token", data=tls_form, base_url=BASE, environ_base=environ)
            if response.status_code != 200:
                fail("token (tls_client_auth)", response)

    def jwt(count: int) -> None:
        post = client.post
        first = bank.next_assertion
        if first + count > len(assertions):
            raise SystemExit(f"[{bank.name}] out of pre-signed client assertions")
        bank.next_assertion += count
        for assertion in assertions[first : first + count]:
            form = {
                "grant_type": "client_credentials",
                "scope": "accounts",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            }
            response = post("/token", data=form, base_url=BASE, environ_base=environ)
            if response.status_code != 200:
                fail("token (private_key_jwt)", response)

    def get(count: int) -> None:
        open_get = client.get
        for _ in range(count):
            response = open_get("/accounts", headers=bearer, base_url=BASE, environ_base=environ)
            if response.status_code != 200:
                fail("require_token GET", response)

    return {SCENARIOS[0]: tls, SCENARIOS[1]: jwt, SCENARIOS[2]: get}


def timed_series(
    runs: Sequence[Callable[[int], None]], count: int, block: int
) -> list[tuple[float, float]]:
    """One series of ``count`` requests per bank, interleaved in blocks of ``block`` requests
    (bank 1, bank 2, ..., bank 1, ...) so that whatever else the machine does falls on every
    bank alike: (wall seconds, CPU seconds) per request for each of ``runs``."""
    wall = [0.0] * len(runs)
    cpu = [0.0] * len(runs)
    perf_counter, process_time = time.perf_counter, time.process_time
    gc_was = gc.isenabled()
    gc.disable()  # a collection landing in one series and not another is noise
    try:
        done = 0
        while done < count:
            size = min(block, count - done)
            for index, run in enumerate(runs):
                started_wall, started_cpu = perf_counter(), process_time()
                run(size)
                cpu[index] += process_time() - started_cpu
                wall[index] += perf_counter() - started_wall
            done += size
    finally:
        if gc_was:
            gc.enable()
    return [(w / count, c / count) for w, c in zip(wall, cpu, strict=True)]


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    scenario: str
    n: int
    banks: Sequence[str]
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.banks:
            self.wall[name], self.cpu[name] = [], []

    def median(self, series: str, bank: str) -> float:
        return statistics.median(getattr(self, series)[bank])

    def ratio(self, series: str, bank: str = ON) -> float:
        return self.median(series, bank) / self.median(series, OFF)

    def paired(self, series: str, bank: str = ON) -> list[float]:
        values = getattr(self, series)
        return [on / off for on, off in zip(values[bank], values[OFF], strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "requests_per_series": self.n,
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "ratio_wall": {bank: self.ratio("wall", bank) for bank in self.banks},
            "ratio_cpu": {bank: self.ratio("cpu", bank) for bank in self.banks},
            "paired_ratios_wall": self.paired("wall"),
            "paired_ratios_cpu": self.paired("cpu"),
        }


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| scenario | off µs | on µs | **on/off** | paired on/off (min-max) "
        "| CPU off µs | CPU on µs | **CPU on/off** | ≤ 1.05 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        paired = row.paired("wall")
        verdict = "yes" if max(row.ratio("wall"), row.ratio("cpu")) <= TARGET else "**no**"
        lines.append(
            f"| {row.scenario} | {row.median('wall', OFF) * 1e6:,.0f} "
            f"| {row.median('wall', ON) * 1e6:,.0f} | **{row.ratio('wall'):.3f}** "
            f"| {min(paired):.3f}-{max(paired):.3f} "
            f"| {row.median('cpu', OFF) * 1e6:,.0f} | {row.median('cpu', ON) * 1e6:,.0f} "
            f"| **{row.ratio('cpu'):.3f}** | {verdict} |"
        )
    return "\n".join(lines)


def split_table(rows: Sequence[Row]) -> str:
    """The CPU each check adds, from the banks with one of the two switched off."""
    lines = [
        "| scenario | on - off | OCSP/CRL check only - off | revoked key sets only - off |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        cells = []
        for bank in (ON, OCSP_ONLY, KEYS_ONLY):
            delta = row.median("cpu", bank) - row.median("cpu", OFF)
            cells.append(f"{delta * 1e6:+.1f} µs ({row.ratio('cpu', bank):.3f}x)")
        lines.append(f"| {row.scenario} | {' | '.join(cells)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the parts

CHECK = "RevocationChecker.check(chain), warm"
FIND_CERT = "RevokedKeys.find(ssa, key=certificate)"
FIND_KEY = "RevokedKeys.find(ssa, kid, key=assertion key)"
DOCUMENT = "- of which, per revoked set (2 per find): JWKSClient.document(url)"
THUMB_KEY = "- of which: key_thumbprint(assertion key), not memoised"
THUMB_CERT = "- of which: key_thumbprint(certificate), memoised"


def parts(bank: Bank, software: Software, clients: Clients, environ: dict[str, str]) -> dict:
    """What revocation adds to a request, each alone, on the "on" bank's own objects (warm):
    what authlib_server.py and management.py call."""
    state = bank.state
    checker = bank.checker
    verified = state.certificates.verified(environ)
    chain, certificate = verified.chain, verified.certificate
    stored = state.store.get(clients.jwt_client_id)
    assert stored is not None
    ssa = stored.ssa_claims
    kid, alg = software.signing_key["kid"], software.signing_alg
    # the very key object the token endpoint gets from the JWKS cache
    [key] = state.jwks.candidate_keys(ssa["software_jwks_endpoint"], kid=kid, alg=alg)
    find = state.revoked_keys.find
    revoked_url = ssa["software_jwks_revoked_endpoint"]
    return {
        CHECK: lambda: checker.check(chain),
        FIND_CERT: lambda: find(ssa, key=certificate),
        FIND_KEY: lambda: find(ssa, kid=kid, key=key),
        DOCUMENT: lambda: state.jwks.document(revoked_url),
        THUMB_KEY: lambda: key_thumbprint(key),
        THUMB_CERT: lambda: key_thumbprint(certificate),
    }


def time_parts(ops: dict[str, Callable[[], Any]], number: int, repeat: int) -> dict[str, float]:
    """Median seconds per call of each op, interleaved repeats."""
    samples: dict[str, list[float]] = {label: [] for label in ops}
    for _ in range(repeat):
        for label, op in ops.items():
            gc.disable()
            try:
                started = time.process_time()
                for _ in range(number):
                    op()
                samples[label].append((time.process_time() - started) / number)
            finally:
                gc.enable()
    return {label: statistics.median(values) for label, values in samples.items()}


def parts_table(medians: dict[str, float]) -> str:
    lines = ["| part, alone in a loop (CPU) | µs per call |", "|---|---:|"]
    lines += [f"| {label} | {seconds * 1e6:.1f} |" for label, seconds in medians.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- profile

#: (label, file suffix, function): inclusive time per request, on and off
PROFILE_POINTS = [
    ("whole request (test client)", "werkzeug/test.py", "open"),
    ("ClientCertificates.verify", "flask_obdcr/certificates/service.py", "verify"),
    ("- TransportCertificateVerifier.verify", "flask_obdcr/certificates/verify.py", "verify"),
    ("- RevocationChecker.check", "flask_obdcr/revocation/checker.py", "check"),
    ("RevokedKeys.find", "flask_obdcr/revoked_keys.py", "find"),
    ("- JWKSClient.document", "flask_obdcr/jwks.py", "document"),
    ("- key_thumbprint", "flask_obdcr/revoked_keys.py", "key_thumbprint"),
]


def inclusive(stats: pstats.Stats, suffix: str, func: str) -> tuple[float, int]:
    """(seconds, primitive calls) of ``func`` (in a file ending in ``suffix``) in ``stats``."""
    entries = stats.stats  # type: ignore[attr-defined]
    found = [
        (ct, cc)
        for (filename, _, funcname), (cc, _, _, ct, _) in entries.items()
        if funcname == func and filename.replace(os.sep, "/").endswith(suffix)
    ]
    return sum(ct for ct, _ in found), sum(cc for _, cc in found)


def own_time_growth(
    off: pstats.Stats, on: pstats.Stats, count: int
) -> list[tuple[str, float, float, float]]:
    """(function, off µs, on µs, on calls) per request, by growth of own time, largest first."""
    before = off.stats  # type: ignore[attr-defined]
    after = on.stats  # type: ignore[attr-defined]
    rows = []
    for key, (cc, _, tt, _, _) in after.items():
        old = before.get(key, (0, 0, 0.0, 0.0, None))[2]
        filename, line, function = key
        short = filename.replace(os.sep, "/")
        for marker in ("site-packages/", "flask_obdcr/", "lib/python3"):
            if marker in short:
                short = short[short.index(marker) :]
                break
        name = f"{short}:{line}({function})" if line else function
        rows.append((name, old / count * 1e6, tt / count * 1e6, cc / count))
    return sorted(rows, key=lambda row: row[1] - row[2])


def profile(run: dict[str, dict[str, Callable[[int], None]]], n: int, top: int, block: int) -> None:
    for scenario in SCENARIOS:
        count = n * SCALE[scenario]
        print(f"\n### cProfile: {scenario}, {count} requests per bank\n")
        print(
            "| where (inclusive; JWKSClient.document is also called with revocation off) "
            "| off µs/request | on µs/request | on: calls/request |\n|---|---:|---:|---:|"
        )
        # interleaved in blocks, as the timed series are: the machine's other work falls on
        # both profiles alike
        profilers = {OFF: cProfile.Profile(), ON: cProfile.Profile()}
        done = 0
        while done < count:
            size = min(block, count - done)
            for bank, profiler in profilers.items():
                profiler.enable()
                run[bank][scenario](size)
                profiler.disable()
            done += size
        stats = {bank: pstats.Stats(profiler) for bank, profiler in profilers.items()}
        for label, suffix, func in PROFILE_POINTS:
            off, _ = inclusive(stats[OFF], suffix, func)
            on, calls = inclusive(stats[ON], suffix, func)
            if off or on:
                print(
                    f"| {label} | {off / count * 1e6:,.1f} | {on / count * 1e6:,.1f} "
                    f"| {calls / count:g} |"
                )
        print(f"\nThe {top} functions whose own time grows most from off to on:\n")
        print("| function | off µs/request | on µs/request | on: calls/request |")
        print("|---|---:|---:|---:|")
        for name, before, after, each in own_time_growth(stats[OFF], stats[ON], count)[:top]:
            print(f"| `{name}` | {before:,.1f} | {after:,.1f} | {each:g} |")


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.token_revocation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=300, help="token requests per series (300)")
    parser.add_argument("--repeat", type=int, default=15, help="interleaved repeats (15)")
    parser.add_argument(
        "--block", type=int, default=10, help="requests per bank in turn within a series (10)"
    )
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument(
        "--key-type",
        choices=["RSA", "EC"],
        default="RSA",
        help="the software's keys: RSA (PS256 assertions, default) or EC (ES256)",
    )
    parser.add_argument(
        "--no-split", action="store_true", help="only the on and off banks (half the time)"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help='an A/A run: the "on" bank gets OBDCR_REVOCATION="off" too (the noise floor)',
    )
    parser.add_argument("--json", action="store_true", help="write OUT/token_revocation.json")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a ratio > {TARGET}")
    parser.add_argument(
        "--part-number", type=int, default=5000, help="calls per sample of each part (5000)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile each scenario too")
    parser.add_argument("--profile-n", type=int, default=300)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if min(args.n, args.repeat, args.block) < 1:
        parser.error("--n, --repeat and --block must be at least 1")
    names = [OFF, ON] if args.no_split or args.control else [OFF, ON, OCSP_ONLY, KEYS_ONLY]
    settings = {name: "off" if name == OFF or args.control else "require" for name in names}

    print("building the sandbox Directory (key generation) ...", file=sys.stderr)
    directory = SandboxDirectory()
    key_type: KeyType = args.key_type
    software = directory.register_software(roles=["AISP", "PISP"], key_type=key_type)
    workdir = Path(tempfile.mkdtemp(prefix="obdcr-token-revocation-"))
    ca = directory.issuing_ca
    banks: dict[str, Bank] = {}
    try:
        with RevocationServer(ca) as responder:
            # the transport certificate names the responder and the CRL (an OB-issued one does)
            directory.issue_transport_certificate(
                software,
                key_type=key_type,
                ocsp_url=responder.ocsp_url(ca),
                crl_url=responder.crl_url(ca),
            )
            environ = software.environ()
            documents = directory.documents()
            for index, name in enumerate(names):
                folder = workdir / f"bank{index}"
                banks[name] = make_bank(
                    name, settings[name], directory, documents, folder, args.store
                )
            # registered once, through the "off" bank; the same records in every store
            first = banks[OFF]
            tls_client_id = register(first, directory, software, "tls_client_auth")
            jwt_client_id = register(first, directory, software, "private_key_jwt")
            for bank in banks.values():
                if bank is not first:
                    for client_id in (tls_client_id, jwt_client_id):
                        stored = first.store.get(client_id)
                        assert stored is not None
                        bank.store.add(stored)
            count = WARMUP + args.n * args.repeat + (args.profile_n if args.profile else 0)
            print(f"signing {count} client assertions ...", file=sys.stderr)
            exp = int(time.time()) + 3000  # under OBDCR_MAX_ASSERTION_LIFETIME
            clients = Clients(
                tls_client_id,
                jwt_client_id,
                [
                    software.client_assertion(jwt_client_id, aud=TOKEN_URL, exp=exp)
                    for _ in range(count)
                ],
            )
            for bank in banks.values():
                response = bank.client.post(
                    "/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": tls_client_id,
                        "scope": "accounts",
                    },
                    base_url=BASE,
                    environ_base=environ,
                )
                bank.bound_token = response.get_json()["access_token"]

            run = {name: runners(bank, clients, environ) for name, bank in banks.items()}
            for name in names:  # warm: revocation caches, imports, the first-request paths
                for scenario in SCENARIOS:
                    run[name][scenario](WARMUP)
            warm = len(responder.requests)
            rows = [Row(scenario, args.n * SCALE[scenario], names) for scenario in SCENARIOS]
            for repeat in range(args.repeat):
                shift = repeat % len(names)
                order = names[shift:] + names[:shift]
                for row in rows:
                    runs = [run[name][row.scenario] for name in order]
                    for name, (wall, cpu) in zip(
                        order, timed_series(runs, row.n, args.block), strict=True
                    ):
                        row.wall[name].append(wall)
                        row.cpu[name].append(cpu)
                print(
                    f"repeat {repeat + 1}/{args.repeat}, CPU on/off: "
                    + ", ".join(f"{row.scenario} {row.paired('cpu')[-1]:.3f}" for row in rows),
                    file=sys.stderr,
                )
            timed_requests = len(responder.requests) - warm
            part_medians = time_parts(
                parts(banks[ON], software, clients, environ), args.part_number, args.repeat
            )
            if args.profile:
                profile(run, args.profile_n, args.top, args.block)
            ocsp_requests, crl_requests = responder.count(ca, "ocsp"), responder.count(ca, "crl")
    finally:
        for bank in banks.values():
            bank.store.close()
        shutil.rmtree(workdir, ignore_errors=True)

    if timed_requests:
        raise SystemExit(f"the responder saw {timed_requests} request(s) while timing")
    chain = banks[ON].state.certificates.verified(environ).chain
    verdict = banks[ON].checker.check(chain)  # the responder is stopped: only the cache answers
    if args.control:
        said = 'control run (A/A): both banks have OBDCR_REVOCATION="off"'
    elif verdict.status != "good" or not all(c.cached for c in verdict.certificates):
        raise SystemExit(f"the 'on' bank did not answer from its cache: {verdict}")
    else:
        source = verdict.certificates[0].source
        said = f"the 'on' bank's verdict: {verdict.status}, from {source}, cached"

    print(
        f"\n{args.n} token requests and {args.n * SCALE[SCENARIOS[2]]} GETs per series, "
        f"median of {args.repeat} interleaved repeats; store {args.store}; software keys "
        f"{args.key_type} ({software.signing_alg} assertions); Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPU"
    )
    print(
        f"responder: {ocsp_requests} OCSP and {crl_requests} CRL request(s) in all, none while "
        f"timing; {said}\n"
    )
    print(table(rows))
    if len(names) > 2:
        print("\nCPU per request each check adds (banks with one check switched off):\n")
        print(split_table(rows))
    print(
        "\nThe parts revocation adds, each alone in a tight loop on the 'on' bank's objects "
        "(warm CPU caches: a floor for their cost inside a request):\n"
    )
    print(parts_table(part_medians))
    if args.json:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "token_revocation-control.json" if args.control else "token_revocation.json"
        path = args.out / name
        path.write_text(
            json.dumps(
                {
                    "n": args.n,
                    "repeat": args.repeat,
                    "store": args.store,
                    "key_type": args.key_type,
                    "target": TARGET,
                    "control": args.control,
                    "responder_requests": {"ocsp": ocsp_requests, "crl": crl_requests},
                    "rows": [row.to_dict() for row in rows],
                    "parts_s": part_medians,
                },
                indent=1,
            )
        )
        print(f"\nraw series: {path}")
    if args.check and any(max(r.ratio("wall"), r.ratio("cpu")) > TARGET for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
