"""Re-validation of many stored clients against the sandbox Directory: clients per second, and
the network fetches a pass makes.

Issue "Trust over time", item "Measure": re-validating 10,000 stored clients must fetch each
distinct JWKS, revoked key set, OCSP response and CRL once, not once per client. The set-up,
everything over real sockets on loopback:

* a sandbox Directory published by :class:`~flask_obdcr.testing.JWKSServer` (HTTPS, its own
  PKI; its documents frozen once onboarding is done, so the server does not rebuild every
  software's JWKS on each request), and a
  :class:`~flask_obdcr.testing.revocation.RevocationServer` (HTTP) for the issuing CA;
* ``--software`` pieces of software (50), each of its own organisation, whose transport
  certificates the issuing CA issues naming its CRL, and, for every other software, its OCSP
  responder too: so a pass asks the responder about half the certificates and takes the
  other half's status from the CA's one CRL;
* a bank (``OpenBankingDCR`` with its real ``HTTPFetcher`` and ``BoundedFetch``) where each
  software registers ``--per-software`` real clients (2: ``private_key_jwt`` and
  ``tls_client_auth``) through ``POST /register``: realistic ``StoredClient`` records, with
  the SSA and ``extra["trust"]`` (the request's key, the transport certificate);
* those records cloned, with new client ids (``StoredClient.with_changes``), into a store of
  ``--clients`` clients (10,000), spread evenly over the software: a ``MemoryStore`` and a
  ``SQLiteStore`` (``--stores``).

What is measured, per store, interleaved per repeat (medians reported):

* **cold pass**: a fresh bank app over the store (empty JWKS and revocation caches, as
  ``flask obdcr revalidate`` from cron starts), ``dcr.revalidate()``: its wall time, clients
  per second, CPU, the time until the first client is judged (the key sets' fetching), and
  every request the two servers saw;
* **warm pass**: ``dcr.revalidate()`` again on the same app: the key sets are fetched again
  (re-validation wants the Directory's current keys), the revocation verdicts come from the
  cache.

The fetch counts are compared with the distinct URLs: 1 Directory JWKS + per software its
JWKS, its revoked set and its organisation's revoked set; one OCSP request per distinct
certificate naming a responder; one CRL request per distinct CRL. A pass that fetched more
than that, or judged a client other than "passed", stops the script with an error
(``--keep-going``: reported with the results instead). CPU time is the process's, so it
includes the two servers' threads (which run in the process).

    .venv/bin/python -m benchmarks.revalidation                   # 10,000 clients, 50 software
    .venv/bin/python -m benchmarks.revalidation --clients 30000 --software 300 --repeat 1
    .venv/bin/python -m benchmarks.revalidation --software 400 --repeat 1 --keep-going
    .venv/bin/python -m benchmarks.revalidation --stores sqlite --json

``--json`` writes ``benchmarks/out/revalidation.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask

from flask_obdcr import OpenBankingDCR
from flask_obdcr.registration import new_client_id
from flask_obdcr.revalidation import Finding, RevalidationReport
from flask_obdcr.storage import ClientStore, MemoryStore, SQLiteStore, StoredClient
from flask_obdcr.testing import JWKSServer, SandboxDirectory, Software
from flask_obdcr.testing.pki import KeyType
from flask_obdcr.testing.revocation import RevocationServer

ROOT = Path(__file__).resolve().parent.parent

ISSUER = "https://as.bench-bank.test"
OUT_DIR = ROOT / "benchmarks" / "out"
METHODS = ("private_key_jwt", "tls_client_auth")


class FrozenDirectory(SandboxDirectory):
    """The sandbox Directory whose published documents can be frozen once onboarding is done:
    :class:`JWKSServer` asks for every document on every request, and rebuilding 50 software
    JWKS each time is the test server's cost, not the bank's."""

    frozen: dict[str, Any] | None = None

    def documents(self) -> dict[str, Any]:
        return self.frozen if self.frozen is not None else super().documents()

    def freeze(self) -> None:
        self.frozen = super().documents()


# --------------------------------------------------------------------------- the bank


def make_bank(
    directory: SandboxDirectory, folder: Path, verify: str, store: ClientStore
) -> tuple[Flask, OpenBankingDCR]:
    """A bank with the real fetchers: JWKS over HTTPS from the JWKSServer, OCSP and CRLs over
    HTTP from the RevocationServer. Each call makes a new app: empty caches."""
    folder.mkdir(parents=True, exist_ok=True)
    app = Flask("bench_bank", instance_path=str(folder / "instance"))
    app.config.update(
        directory.app_config(
            folder / "transport-ca.pem",
            issuer=ISSUER,
            OBDCR_HTTP_VERIFY=verify,
            OBDCR_JWKS_ALLOWED_HOSTS=["127.0.0.1"],
            OBDCR_REVOCATION="require",
        )
    )
    dcr = OpenBankingDCR(app, store=store)  # no jwks_fetcher: the real HTTPFetcher
    return app, dcr


def register_clients(
    directory: SandboxDirectory,
    software: Sequence[Software],
    per_software: int,
    folder: Path,
    verify: str,
) -> list[StoredClient]:
    """``per_software`` real registrations per software, through POST /register."""
    store = MemoryStore()
    app, _ = make_bank(directory, folder, verify, store)
    client = app.test_client()
    for item in software:
        for index in range(per_software):
            method = METHODS[index % len(METHODS)]
            body = directory.registration_request(
                item, aud=ISSUER, token_endpoint_auth_method=method
            )
            response = client.post(
                "/register",
                data=body,
                content_type="application/jwt",
                environ_base=item.environ(),
            )
            if response.status_code != 201:
                raise SystemExit(f"registration refused: {response.get_data(as_text=True)}")
    registered = list(store.list())
    for record in registered:
        if "certificate" not in record.extra.get("trust", {}):
            raise SystemExit(f"client {record.client_id} was stored without its trust record")
    return registered


def clones(templates: Sequence[StoredClient], count: int) -> list[StoredClient]:
    """``count`` clients, the templates' records under new client ids, in turn (so every
    software has count / len(software) clients)."""
    issued_at = int(time.time())
    return [
        templates[index % len(templates)].with_changes(
            client_id=new_client_id(), client_id_issued_at=issued_at
        )
        for index in range(count)
    ]


# --------------------------------------------------------------------------- a pass


@dataclass
class Pass:
    store: str
    kind: str  # "cold" or "warm"
    wall: float
    cpu: float
    #: wall seconds until the first client was judged: listing the store, fetching every
    #: key set
    until_first: float
    #: wall seconds of ``list(store.list())`` alone, just before the pass
    listing: float
    clients: int
    outcomes: dict[str, int]
    report_fetched: int
    report_fetch_failures: int
    jwks_requests: int
    jwks_distinct: int
    ocsp_requests: int
    crl_requests: int

    @property
    def per_second(self) -> float:
        return self.clients / self.wall

    @property
    def judging_per_second(self) -> float:
        return self.clients / max(self.wall - self.until_first, 1e-9)


@dataclass
class Expected:
    jwks_urls: set[str]
    #: distinct certificates naming an OCSP responder; distinct CRL URLs (per issuer)
    ocsp_certificates: int
    crls: int


def run_pass(
    store_name: str,
    kind: str,
    app: Flask,
    dcr: OpenBankingDCR,
    servers: tuple[JWKSServer, RevocationServer],
    directory: SandboxDirectory,
    clients: int,
    workers: int,
) -> Pass:
    jwks_server, responder = servers
    started = time.perf_counter()
    listed = len(list(dcr.store.list()))
    listing = time.perf_counter() - started
    if listed != clients:
        raise SystemExit(f"the {store_name} store lists {listed} clients, not {clients}")
    jwks_server.reset()
    responder.reset()
    first: list[float] = []

    def on_finding(finding: Finding, client: StoredClient) -> None:
        if not first:
            first.append(time.perf_counter())

    started_wall, started_cpu = time.perf_counter(), time.process_time()
    with app.app_context():
        report: RevalidationReport | None = dcr.revalidate(
            max_workers=workers, on_finding=on_finding
        )
    wall = time.perf_counter() - started_wall
    cpu = time.process_time() - started_cpu
    if report is None:
        raise SystemExit("another re-validation pass held the store's lock")
    ca = directory.issuing_ca
    return Pass(
        store=store_name,
        kind=kind,
        wall=wall,
        cpu=cpu,
        until_first=(first[0] - started_wall) if first else wall,
        listing=listing,
        clients=len(report.findings),
        outcomes=dict(Counter(finding.outcome for finding in report.findings)),
        report_fetched=report.fetched,
        report_fetch_failures=report.fetch_failures,
        jwks_requests=len(jwks_server.requests),
        jwks_distinct=len(set(jwks_server.requests)),
        ocsp_requests=responder.count(ca, "ocsp"),
        crl_requests=responder.count(ca, "crl"),
    )


def check(result: Pass, expected: Expected, clients: int) -> list[str]:
    """What is wrong with a pass: not every client judged sound, or not one fetch per
    distinct URL (cold) and no revocation fetch at all (warm)."""
    problems = []
    if result.clients != clients or result.outcomes != {"passed": clients}:
        problems.append(f"outcomes {result.outcomes} for {result.clients} of {clients} clients")
    distinct = len(expected.jwks_urls)
    if (result.jwks_requests, result.jwks_distinct, result.report_fetched) != (distinct,) * 3:
        problems.append(
            f"{result.jwks_requests} JWKS requests ({result.jwks_distinct} distinct, "
            f"report: {result.report_fetched}) for {distinct} distinct URLs"
        )
    want = (expected.ocsp_certificates, expected.crls) if result.kind == "cold" else (0, 0)
    if (result.ocsp_requests, result.crl_requests) != want:
        problems.append(
            f"{result.ocsp_requests} OCSP and {result.crl_requests} CRL requests, expected "
            f"{want[0]} and {want[1]}"
        )
    return [f"{result.store} {result.kind} pass: {problem}" for problem in problems]


# --------------------------------------------------------------------------- reporting


def table(passes: Sequence[Pass], expected: Expected) -> str:
    lines = [
        "| store | pass | clients | wall s | **clients/s** "
        "| before 1st verdict s (listing alone) | judging clients/s | CPU s "
        "| JWKS fetches (distinct URLs) | OCSP requests (certs naming one) "
        "| CRL requests (distinct CRLs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[Pass]] = {}
    for result in passes:
        groups.setdefault((result.store, result.kind), []).append(result)
    for (store, kind), results in groups.items():

        def median(attribute: str, results: list[Pass] = results) -> float:
            return statistics.median(getattr(result, attribute) for result in results)

        last = results[-1]  # the counts are the same in every repeat (unless --keep-going)
        ocsp_want = expected.ocsp_certificates if kind == "cold" else 0
        crl_want = expected.crls if kind == "cold" else 0
        lines.append(
            f"| {store} | {kind} | {last.clients:,} | {median('wall'):.2f} "
            f"| **{median('per_second'):,.0f}** | {median('until_first'):.2f} "
            f"({median('listing'):.2f}) "
            f"| {median('judging_per_second'):,.0f} | {median('cpu'):.2f} "
            f"| {last.jwks_requests} ({len(expected.jwks_urls)}) "
            f"| {last.ocsp_requests} ({ocsp_want}) | {last.crl_requests} ({crl_want}) |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.revalidation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=10000, help="stored clients (10,000)")
    parser.add_argument("--software", type=int, default=50, help="distinct software (50)")
    parser.add_argument(
        "--per-software", type=int, default=2, help="real registrations per software (2)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats (3)")
    parser.add_argument("--stores", default="memory,sqlite", help="comma-separated: memory, sqlite")
    parser.add_argument(
        "--key-type", choices=["EC", "RSA"], default="EC", help="the software's keys (EC)"
    )
    parser.add_argument("--workers", type=int, default=8, help="concurrent key-set fetches (8)")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="report a pass that fetched more than once per distinct URL (or judged a client "
        "other than passed) instead of stopping there",
    )
    parser.add_argument("--json", action="store_true", help="write OUT/revalidation.json")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    if not stores or set(stores) - {"memory", "sqlite"}:
        parser.error("--stores takes memory and/or sqlite")
    if min(args.clients, args.software, args.per_software, args.repeat, args.workers) < 1:
        parser.error("every count must be at least 1")
    if args.clients < args.software * args.per_software:
        parser.error("--clients must be at least --software x --per-software")

    workdir = Path(tempfile.mkdtemp(prefix="obdcr-revalidation-"))
    key_type: KeyType = args.key_type
    setup_started = time.perf_counter()
    print("building the sandbox Directory (key generation) ...", file=sys.stderr)
    directory = FrozenDirectory()
    ca = directory.issuing_ca
    passes: list[Pass] = []
    problems: list[str] = []
    timings: dict[str, float] = {}
    try:
        with JWKSServer(directory) as jwks_server, RevocationServer(ca) as responder:
            verify = jwks_server.ca_file(workdir / "jwks-ca.pem")
            print(f"onboarding {args.software} software ...", file=sys.stderr)
            software: list[Software] = []
            for index in range(args.software):
                item = directory.register_software(roles=["AISP", "PISP"], key_type=key_type)
                # every certificate names the CA's CRL; every other one its OCSP responder too
                naming = {"crl_url": responder.crl_url(ca)}
                if index % 2 == 0:
                    naming["ocsp_url"] = responder.ocsp_url(ca)
                directory.issue_transport_certificate(item, key_type=key_type, **naming)
                software.append(item)
            directory.freeze()
            expected = Expected(
                jwks_urls={directory.jwks_url}
                | {url for s in software for url in (s.jwks_url, s.revoked_jwks_url)}
                | {s.org_revoked_jwks_url for s in software},
                ocsp_certificates=(args.software + 1) // 2,
                crls=1,
            )
            print(f"registering {args.software * args.per_software} clients ...", file=sys.stderr)
            templates = register_clients(
                directory, software, args.per_software, workdir / "registration", verify
            )
            filled: dict[str, ClientStore] = {}
            for name in stores:
                print(f"storing {args.clients:,} clients in {name} ...", file=sys.stderr)
                started = time.perf_counter()
                store: ClientStore = (
                    SQLiteStore(workdir / "clients.db") if name == "sqlite" else MemoryStore()
                )
                for record in clones(templates, args.clients):
                    store.add(record)
                timings[f"store {name}"] = time.perf_counter() - started
                filled[name] = store
            timings["set-up"] = time.perf_counter() - setup_started

            servers = (jwks_server, responder)
            for repeat in range(args.repeat):
                order = stores if repeat % 2 == 0 else stores[::-1]
                for name in order:
                    folder = workdir / f"bank-{name}-{repeat}"
                    app, dcr = make_bank(directory, folder, verify, filled[name])
                    for kind in ("cold", "warm"):
                        result = run_pass(
                            name, kind, app, dcr, servers, directory, args.clients, args.workers
                        )
                        found = check(result, expected, args.clients)
                        if found and not args.keep_going:
                            raise SystemExit("; ".join(found))
                        problems += found
                        passes.append(result)
                        print(
                            f"repeat {repeat + 1}/{args.repeat}, {name}, {kind}: "
                            f"{result.wall:.2f} s, {result.per_second:,.0f} clients/s",
                            file=sys.stderr,
                        )
            for store in filled.values():
                store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\n{args.clients:,} clients over {args.software} software ({args.per_software} real "
        f"registrations each, {args.key_type} keys), median of {args.repeat} interleaved "
        f"repeats; {args.workers} fetch workers; Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPU"
    )
    print(
        f"set-up {timings['set-up']:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k != "set-up")
        + ")"
    )
    if problems:
        print("NOT one fetch per distinct URL, or not every client passed:")
        for problem in problems:
            print(f"- {problem}")
        print()
    else:
        print("every client passed, and every pass fetched each distinct URL once (checked)\n")
    print(table(passes, expected))
    if args.json:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "revalidation.json"
        path.write_text(
            json.dumps(
                {
                    "clients": args.clients,
                    "software": args.software,
                    "per_software": args.per_software,
                    "repeat": args.repeat,
                    "key_type": args.key_type,
                    "expected": {
                        "jwks_urls": len(expected.jwks_urls),
                        "ocsp_certificates": expected.ocsp_certificates,
                        "crls": expected.crls,
                    },
                    "timings_s": timings,
                    "problems": problems,
                    "passes": [
                        {**vars(result), "per_second": result.per_second} for result in passes
                    ],
                },
                indent=1,
            )
        )
        print(f"\nraw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
