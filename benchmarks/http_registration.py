"""Registrations per second over HTTP on loopback: flask-obdcr against node-oidc-provider and
Authlib's own RFC 7591 endpoint.

All servers run side by side on this machine, driven by the same load generator (wrk, with
``benchmarks/wrk/post_lines.lua``), at the same concurrency levels (1 and 8 connections):

* **flask-obdcr**: the example bank (``benchmarks.harness.apps:bank``, i.e.
  ``example_app.wsgi:behind_nginx``) under gunicorn or granian (``--server``), plain HTTP on
  loopback, the client certificate passed as nginx would pass it (``X-SSL-Client-Cert``: the
  URL-escaped PEM, honoured from ``127.0.0.1`` only), with the SQLite store (the default) and
  with PostgreSQL (``OBDCR_DATABASE_URL``). The Directory's and the software's JWKS come from
  the example sandbox Directory service over HTTPS, fetched once per worker and then cached
  (the warm-up fills the caches). Every call is a full ``POST /register``: a different request
  JWT (own ``jti``) signed PS256 by the software key, carrying an SSA signed PS256 by the
  Directory; the bank verifies both signatures, the transport certificate's chain and its
  binding to the SSA, every claim, stores the client and answers 201.
* **node-oidc-provider** (npm ``oidc-provider``, ``benchmarks/oidc_provider/server.mjs``): its
  dynamic registration endpoint with ``features.registration`` on, no initial access token,
  its in-memory adapter; JSON metadata (the same metadata, with the software's public keys
  inline as ``jwks``, without a software statement), no signature and no certificate to check.
* **Authlib RFC 7591 peer** (``--only authlib-peer``): Authlib's ``ClientRegistrationEndpoint``
  in a Flask app under the same server (:mod:`benchmarks.harness.authlib_peer`): JSON metadata
  with the software statement, whose signature it verifies with the Directory's key, the
  RFC 7591 and OpenID metadata checks, one SQLite insert; no Open Banking rule.
* **References** (not run by default): ``--only flask-noop``, the same server and Flask with a
  handler that reads the body and answers 201 (the ceiling of the web stack);
  ``--only flask-floor``, one PS256 verification of the request and one SQLite insert.

flask-obdcr does more work per request (the request's signature, the SSA's and the certificate
chain's verdicts remembered across requests that share them, every OB rule, a durable store);
the table says so. Requests are built and signed
before the timed runs (signing is the TPP's cost), one per line of a file the Lua script reads;
each cell gets a fresh server (so a fresh jti replay cache), a warm-up run, then a measured
run. Before each cell the script waits for the machine to be idle, and runs a cell again when
other work took more than ``--max-other-load`` cores during it; the table shows that load and
the server's CPU time per request (which other work hardly changes).

    .venv/bin/python -m benchmarks.http_registration                 # the full comparison
    .venv/bin/python -m benchmarks.http_registration --server granian --server gunicorn \\
        --gunicorn sync:2 --only node-oidc-provider --only flask-sqlite --only authlib-peer
    .venv/bin/python -m benchmarks.http_registration --only flask-sqlite --only flask-noop \\
        --connections 8 --gunicorn sync:2,gthread:2x4,gthread:4x2 --tag sweep
    .venv/bin/python -m benchmarks.http_registration --profile --gunicorn sync:2   # py-spy

Needs: ``wrk`` (``apt-get install wrk``), node + ``npm ci`` in ``benchmarks/oidc_provider``,
gunicorn or granian (and py-spy for ``--profile``, matplotlib for the chart) in the venv (the
``bench`` extra), PostgreSQL for the ``flask-postgres`` rows (``--pg-url``; a database
``obdcr_bench`` is created if missing and its ``obdcr_*`` tables are dropped between cells).
Output: a markdown table on stdout, ``benchmarks/out/http_registration[-<tag>].{json,png}``;
``--profile``: ``benchmarks/out/profile-registration-<store>.{svg,txt}`` and
``profile-registration-<store>-summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from .harness import signing
from .harness.common import CERT_HEADER, OUT_DIR
from .harness.onboarding import Onboarded, onboard, start_directory
from .harness.processes import Processes, require_tools
from .harness.profiling import profiled_run, write_profile_summary
from .harness.report import Cell, cells_record, chart, machine, table
from .harness.runs import add_run_arguments, measure_cell, run_undisturbed, server_settings
from .harness.servers import ServerOptions, start_target, start_wsgi, stop
from .harness.wrk import Load, run_wrk, smoke_test

TARGETS = [
    "node-oidc-provider",
    "flask-sqlite",
    "flask-postgres",
    "authlib-peer",
    "flask-noop",
    "flask-floor",
]
DEFAULT_TARGETS = ["node-oidc-provider", "flask-sqlite", "flask-postgres", "authlib-peer"]

#: the server column for the Python targets that are not flask-obdcr
SERVER_NAMES = {
    "flask-noop": "Flask no-op POST (ceiling)",
    "flask-floor": "Flask minimum DCR (floor)",
    "authlib-peer": "Authlib RFC 7591 peer",
}

#: what each server does per registration, for the table
WORK = {
    "node-oidc-provider": "JSON metadata; in memory; no signature, no certificate",
    "flask-obdcr": "1 PS256 verification (request; the one SSA's and certificate chain's"
    " verdicts remembered), certificate binding, every OB rule; durable store",
    "Authlib RFC 7591 peer": "JSON metadata + SSA: 1 PS256 verification, RFC 7591/OIDC"
    " metadata checks; SQLite insert",
    "Flask no-op POST (ceiling)": "reads the body, answers 201: the web stack alone",
    "Flask minimum DCR (floor)": "1 PS256 verification (request), SQLite insert; no other check",
}


def prepare(procs: Processes, work: Path, args: argparse.Namespace) -> tuple[Onboarded, dict]:
    """The Directory, the TPP onboarded, and every request file the targets need."""
    directory_url, ca_file = start_directory(procs, work)
    tpp = onboard(directory_url, ca_file)
    (work / "client-cert.header").write_text(tpp.escaped_transport_pem)
    files: dict[str, Path] = {}
    t0 = time.perf_counter()
    files["flask"] = work / "registration-requests.jwt"
    signing.write_registration_requests(tpp, files["flask"], args.requests, 3 * 3600)
    print(
        f"signed {args.requests:,} registration requests (PS256) in"
        f" {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    files["node"] = work / "registration-requests.json"
    signing.write_node_requests(tpp, files["node"], args.node_requests)
    files["authlib-peer"] = work / "registration-requests-ssa.json"
    signing.write_authlib_requests(tpp, files["authlib-peer"], args.node_requests)
    return tpp, files


def target_load(
    target: str, url: str, files: dict[str, Path], work: Path, args: argparse.Namespace
) -> Load:
    """Every line of ``target``'s request file (the first one is the smoke test's)."""
    if target == "node-oidc-provider":
        return Load(url, "/reg", files["node"], 1, args.node_requests - 1, "application/json", 201)
    if target == "authlib-peer":
        return Load(
            url, "/register", files[target], 1, args.node_requests - 1, "application/json", 201
        )
    return Load(
        url, "/register", files["flask"], 1, args.requests - 1, "application/jwt", 201,
        CERT_HEADER, work / "client-cert.header",
    )  # fmt: skip


def run_target(
    args: argparse.Namespace,
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    target: str,
    files: dict[str, Path],
    connections: int,
    repeat: int,
    server: ServerOptions,
) -> Cell:
    """One cell: a fresh server, a smoke test, a warm-up run, a measured run, the server
    stopped."""
    running = start_target(
        procs, work, tpp, target, server=server, pg_url=args.pg_url, redis_url=args.redis_url
    )
    try:
        load = target_load(target, running.url, files, work, args)
        with open(load.body_file) as handle:
            first = handle.readline().strip()
        header = {}
        if load.header_name and load.header_file:
            header = {load.header_name: load.header_file.read_text()}
        smoke_test(running.url, load.path, first, load.content_type, header, load.expect)
        warm_lines = args.warmup_requests if load.body_file == files["flask"] else load.count // 4
        warm, measured = load.split(warm_lines)
        result = measure_cell(args, running, warm, measured, connections)
    finally:
        stop(procs, running)
    name = SERVER_NAMES.get(target, "flask-obdcr" if target.startswith("flask") else target)
    cell = Cell(name, running.store, running.setup, connections, repeat, result)
    note = ""
    if result.wrapped and target in ("flask-sqlite", "flask-postgres"):
        note = " (ran out of pre-signed requests: raise --requests)"
    print(cell.line(201, note), file=sys.stderr)
    return cell


def profile(
    args: argparse.Namespace,
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    files: dict[str, Path],
    server: ServerOptions,
    connections: int = 8,
) -> None:
    """py-spy on the bank's workers while wrk drives registrations at ``connections``."""
    store = args.profile_store
    stem = f"profile-registration-{store}" + ("-redis" if args.redis_url else "")
    for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
        running = start_wsgi(
            procs, work, tpp, target=f"flask-{store}", server=server, pg_url=args.pg_url,
            redis_url=args.redis_url,
        )  # fmt: skip
        try:
            load = target_load(f"flask-{store}", running.url, files, work, args)
            warm, measured = load.split(args.warmup_requests)
            run_wrk(warm, connections=connections, duration=args.warmup)
            profiled_run(
                running.process.pid,
                measured,
                connections=connections,
                duration=args.duration,
                output=OUT_DIR / f"{stem}.{suffix}",
                fmt=fmt,
                gil=server.multithreaded,
            )
        finally:
            stop(procs, running)
    write_profile_summary(OUT_DIR / f"{stem}.txt")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_registration", description=__doc__.split("\n\n")[0]
    )
    add_run_arguments(parser, gunicorn="sync:2,gevent:2")
    parser.add_argument(
        "--only",
        action="append",
        choices=TARGETS,
        help="run only these targets (repeatable; default: "
        + ", ".join(DEFAULT_TARGETS)
        + "); flask-noop: the server + Flask with an empty POST handler, the ceiling of the"
        " web stack; flask-floor: the minimum any Flask DCR does (one PS256 verification, one"
        " SQLite insert, nothing checked)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=40000,
        help="pre-signed registration requests (each cell reuses them)",
    )
    parser.add_argument(
        "--node-requests",
        type=int,
        default=80000,
        help="JSON registration requests for node-oidc-provider and the Authlib peer",
    )
    parser.add_argument("--warmup-requests", type=int, default=4000)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison: py-spy on flask-obdcr (--profile-store, 8 conns,"
        " the first server setting)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument(
        "--tag", default="", help="suffix for the output files: http_registration-<tag>.json/png"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    targets = args.only or DEFAULT_TARGETS
    settings = server_settings(args)
    connections = [int(c) for c in args.connections.split(",")]
    node = "node-oidc-provider" in targets and not args.profile
    require_tools(node=node, servers=sorted({s.kind for s in settings}))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="obdcr-http-bench-"))
    cells: list[Cell] = []
    try:
        with Processes() as procs:
            tpp, files = prepare(procs, work, args)
            if args.profile:
                profile(args, procs, work, tpp, files, settings[0])
                return 0
            for repeat in range(args.repeat):
                for conns in connections:
                    for target in targets:
                        python = target != "node-oidc-provider"
                        for server in settings if python else settings[:1]:
                            cells.append(
                                run_undisturbed(
                                    args,
                                    partial(
                                        run_target,
                                        args,
                                        procs,
                                        work,
                                        tpp,
                                        target,
                                        files,
                                        conns,
                                        repeat,
                                        server,
                                    ),
                                )  # fmt: skip
                            )
    finally:
        if args.keep:
            print(f"working folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"Registrations over HTTP on loopback ({os.cpu_count()} cores, wrk, "
        f"{args.duration:g} s per cell after {args.warmup:g} s warm-up, best of"
        f" {args.repeat}; the ratio column pairs each run with node-oidc-provider's run of the"
        " same repeat); successful registrations only (201)."
    )
    print()
    print(table(cells, work=WORK))
    print()
    print(
        "flask-obdcr does more work per registration than node-oidc-provider and the Authlib"
        " peer: it verifies the request (PS256, software key) and the SSA (PS256, Directory key;"
        " every request here carries the same SSA and certificate, so their verdicts are"
        " remembered after the first), checks the transport certificate's binding to the SSA and"
        " every Open Banking rule, and stores the client durably; node-oidc-provider checks"
        " JSON metadata and keeps the client in memory; the Authlib peer verifies the SSA's"
        " signature on every request, checks the metadata and inserts into SQLite."
    )
    record = {
        "machine": machine(),
        "options": {**vars(args), "only": targets},
        "cells": cells_record(cells),
    }
    stem = "http_registration" + (f"-{args.tag}" if args.tag else "")
    (OUT_DIR / f"{stem}.json").write_text(json.dumps(record, indent=1))
    chart(cells, OUT_DIR / f"{stem}.png", "Dynamic client registration over HTTP (loopback)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
