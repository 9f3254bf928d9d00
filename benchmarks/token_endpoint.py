"""Token endpoint requests per second with private_key_jwt: flask-obdcr against node-oidc-provider.

The same set-up as ``benchmarks.http_registration`` (wrk with ``benchmarks/wrk/post_lines.lua``,
both servers side by side on loopback, 1 and 8 connections), for ``POST /token`` with
``grant_type=client_credentials`` and a ``private_key_jwt`` client assertion (RFC 7523,
PS256, a different ``jti`` on every call: both servers refuse a replayed assertion):

* **flask-obdcr**: the example bank under gunicorn or granian (``--server``) behind an
  (imagined) nginx, the client certificate in ``X-SSL-Client-Cert``. The client was registered
  through ``POST /register`` first; its keys come from the software's JWKS at the sandbox
  Directory (HTTPS), fetched once per worker and then cached (warm: the warm-up run fills the
  cache). Per call: the bank checks the transport certificate's chain, verifies the assertion
  with the cached key, looks the client up in the store, checks the jti, issues an access token
  bound to the certificate (RFC 8705 ``cnf``) and stores it (hashed) in the same database as the
  clients.
* **node-oidc-provider**: ``features.clientCredentials``, the client registered through its
  registration endpoint with the same public key inline (``jwks``); per call it verifies the
  assertion, checks the jti and stores an opaque token in its in-memory adapter.

Assertions are signed before each cell (signing is the client's cost) with ``exp`` 10 minutes
ahead (flask-obdcr refuses longer-lived ones).

    .venv/bin/python -m benchmarks.token_endpoint
    .venv/bin/python -m benchmarks.token_endpoint --only flask-sqlite --connections 8
    .venv/bin/python -m benchmarks.token_endpoint --server gunicorn --server granian
    .venv/bin/python -m benchmarks.token_endpoint --profile --gunicorn sync:2   # py-spy

Output: a markdown table on stdout, ``benchmarks/out/token_endpoint.{json,png}``;
``--profile``: ``benchmarks/out/profile-token-<store>.{svg,txt}`` and ``-summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .harness.common import CERT_HEADER, ISSUER, OUT_DIR
from .harness.onboarding import (
    Onboarded,
    onboard,
    register_at_bank,
    register_at_node,
    start_directory,
)
from .harness.processes import Processes, require_tools, wait_for_quiet
from .harness.profiling import profiled_run, write_profile_summary
from .harness.report import Cell, cells_record, chart, machine, table
from .harness.runs import add_run_arguments, run_undisturbed, server_settings
from .harness.servers import Running, ServerOptions, start_target, start_wsgi, stop
from .harness.signing import write_assertions
from .harness.wrk import Load, run_wrk

WORK = {
    "node-oidc-provider": "PS256 verification; opaque token in memory",
    "flask-obdcr": (
        "PS256 verification + certificate chain check; certificate-bound token, durable store"
    ),
}


@dataclass
class Target:
    """A server under test kept running through the run, with its registered client."""

    name: str  # node-oidc-provider | flask-sqlite | flask-postgres
    running: Running
    client_id: str
    aud: str
    count: int
    header: tuple[str, Path] | tuple[None, None]


def start(
    args: argparse.Namespace,
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    name: str,
    server: ServerOptions,
) -> Target:
    """A server, and one client_credentials client registered at it."""
    running = start_target(
        procs, work, tpp, name, server=server, pg_url=args.pg_url, redis_url=args.redis_url
    )
    if name == "node-oidc-provider":
        client_id = register_at_node(running.url, tpp)["client_id"]
        return Target(
            name, running, client_id, f"{running.url}/token", args.assertions_node, (None, None)
        )
    client_id = register_at_bank(running.url, tpp)["client_id"]
    header = (CERT_HEADER, work / "client-cert.header")
    return Target(name, running, client_id, ISSUER, args.assertions_flask, header)


def run_cell(
    args: argparse.Namespace, work: Path, tpp: Onboarded, target: Target, conns: int, repeat: int
) -> Cell:
    """Fresh assertions, a warm-up run and a measured run against a running server."""
    path = work / f"assertions-{target.name}.form"
    t0 = time.perf_counter()
    write_assertions(tpp, path, target.client_id, target.aud, target.count)
    signed_in = time.perf_counter() - t0
    if args.quiet_wait > 0:
        wait_for_quiet(args.quiet_wait)
    load = Load(
        target.running.url, "/token", path, 0, target.count,
        "application/x-www-form-urlencoded", 200, *target.header,
    )  # fmt: skip
    warm, measured = load.split(target.count // 4)
    if args.warmup > 0:
        run_wrk(warm, connections=conns, duration=args.warmup)
    result = run_wrk(
        measured,
        connections=conns,
        duration=args.duration,
        server_pid=target.running.process.pid,
        database_process="postgres" if target.running.store == "postgres" else None,
    )
    name = target.name if target.name.startswith("node") else "flask-obdcr"
    cell = Cell(name, target.running.store, target.running.setup, conns, repeat, result)
    note = f"  (signed in {signed_in:.0f} s)" + (
        " (ran out of assertions)" if result.wrapped else ""
    )
    print(cell.line(200, note), file=sys.stderr)
    return cell


def profile(args: argparse.Namespace, server: ServerOptions, connections: int = 8) -> None:
    """py-spy on the bank's workers while wrk drives token requests."""
    store = args.profile_store
    work = Path(tempfile.mkdtemp(prefix="obdcr-token-profile-"))
    try:
        with Processes() as procs:
            directory_url, ca_file = start_directory(procs, work)
            tpp = onboard(directory_url, ca_file)
            (work / "client-cert.header").write_text(tpp.escaped_transport_pem)
            for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
                running = start_wsgi(
                    procs, work, tpp, target=f"flask-{store}", server=server,
                    pg_url=args.pg_url, redis_url=args.redis_url,
                )  # fmt: skip
                try:
                    client_id = register_at_bank(running.url, tpp)["client_id"]
                    path = work / "assertions.form"
                    write_assertions(tpp, path, client_id, ISSUER, args.assertions_flask)
                    load = Load(
                        running.url, "/token", path, 0, args.assertions_flask,
                        "application/x-www-form-urlencoded", 200, CERT_HEADER,
                        work / "client-cert.header",
                    )  # fmt: skip
                    warm, measured = load.split(args.assertions_flask // 4)
                    run_wrk(warm, connections=connections, duration=args.warmup)
                    profiled_run(
                        running.process.pid,
                        measured,
                        connections=connections,
                        duration=args.duration,
                        output=OUT_DIR / f"profile-token-{store}.{suffix}",
                        fmt=fmt,
                        gil=server.multithreaded,
                    )
                finally:
                    stop(procs, running)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_profile_summary(OUT_DIR / f"profile-token-{store}.txt")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.token_endpoint", description=__doc__.split("\n\n")[0]
    )
    add_run_arguments(parser, gunicorn="sync:2")
    parser.add_argument(
        "--only", action="append", choices=["node-oidc-provider", "flask-sqlite", "flask-postgres"]
    )
    parser.add_argument(
        "--assertions-flask",
        type=int,
        default=40000,
        help="assertions signed per flask-obdcr cell (warm-up + measured)",
    )
    parser.add_argument(
        "--assertions-node",
        type=int,
        default=60000,
        help="assertions signed per node-oidc-provider cell",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison: py-spy on flask-obdcr's token endpoint (8 connections,"
        " the first server setting; use --gunicorn sync:2)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = server_settings(args)
    if args.profile:
        require_tools(node=False, servers=[settings[0].kind])
        profile(args, settings[0])
        return 0

    targets = args.only or ["node-oidc-provider", "flask-sqlite", "flask-postgres"]
    connections = [int(c) for c in args.connections.split(",")]
    require_tools(node="node-oidc-provider" in targets, servers=sorted({s.kind for s in settings}))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="obdcr-token-bench-"))
    cells: list[Cell] = []
    try:
        with Processes() as procs:
            directory_url, ca_file = start_directory(procs, work)
            tpp = onboard(directory_url, ca_file)
            (work / "client-cert.header").write_text(tpp.escaped_transport_pem)
            # every server up at once (idle servers cost nothing), so the cells can alternate
            running: list[Target] = []
            for name in targets:
                for server in settings if name != "node-oidc-provider" else settings[:1]:
                    running.append(start(args, procs, work, tpp, name, server))
            for repeat in range(args.repeat):
                for conns in connections:
                    for target in running:
                        cell = run_undisturbed(
                            args,
                            partial(run_cell, args, work, tpp, target, conns, repeat),
                        )
                        cells.append(cell)
            for target in running:
                stop(procs, target.running)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"Token endpoint, client_credentials with private_key_jwt (PS256), over HTTP on"
        f" loopback ({os.cpu_count()} cores, wrk, {args.duration:g} s per cell after"
        f" {args.warmup:g} s warm-up, best of {args.repeat}; the ratio column pairs each run"
        " with node-oidc-provider's run of the same repeat); successful (200) only."
    )
    print()
    print(table(cells, work=WORK, noun="token request"))
    print()
    print(
        "flask-obdcr does more per token request: it also checks the transport certificate's"
        " chain (mutual TLS behind the proxy), binds the token to the certificate and stores"
        " it durably; both verify the PS256 assertion with a cached key and check its jti."
    )
    record = {"machine": machine(), "options": vars(args), "cells": cells_record(cells)}
    (OUT_DIR / "token_endpoint.json").write_text(json.dumps(record, indent=1))
    chart(
        cells,
        OUT_DIR / "token_endpoint.png",
        "client_credentials + private_key_jwt over HTTP (loopback)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
