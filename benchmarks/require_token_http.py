"""require_token over HTTP: a protected GET with a bound token against the same GET unchecked.

Issue 13's target: ``require_token`` on a certificate-bound token costs at most 1.2x the same
GET with no check, in the same app under the same server. The app is
:func:`benchmarks.harness.apps.protected_api` (the extension, Authlib's authorization server,
the bank's settings and store, behind the same ProxyFix as the bank) under gunicorn or
granian (``--server``, both side by side when given twice), on plain HTTP on loopback behind
an (imagined) nginx: wrk passes the URL-escaped client certificate in ``X-SSL-Client-Cert``,
honoured from 127.0.0.1 only, on every request of both GETs alike.

* **GET, require_token**: ``GET /accounts`` behind ``@dcr.require_token("accounts")``, with
  ``Authorization: Bearer`` and a ``client_credentials`` token issued to a ``tls_client_auth``
  client and bound to the certificate (RFC 8705). Per call: the certificate read from the
  header and checked (its chain remembered), the token looked up (one read by primary key,
  then answered from the process for a second), its expiry, scope, client and binding checked.
* **GET, no check**: ``GET /accounts-open``, the same view and the same headers, no
  decorator: the server, Flask and the view alone.

Before the load the script checks that the check is real: the protected GET answers 200 with
the token and the certificate, 401 without the certificate and 401 with another token. The
same request is sent on every call (a GET varies nothing); a fresh token is issued before
each cell (tokens live an hour). The figures: requests/s and server CPU per request (the
server's processes' CPU time, workers included, over the successful requests), each as a
ratio to the unchecked GET under the same server in the same repeat; the target is on CPU
per request (what the check costs), at 1 and 8 connections.

    .venv/bin/python -m benchmarks.require_token_http
    .venv/bin/python -m benchmarks.require_token_http --server gunicorn --server granian
    .venv/bin/python -m benchmarks.require_token_http --store postgres --connections 8

Output: a markdown table on stdout, ``benchmarks/out/require_token_http.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import requests

from .harness.common import CERT_HEADER, OUT_DIR
from .harness.onboarding import Onboarded, onboard, register_at_bank, start_directory
from .harness.processes import Processes, require_tools
from .harness.report import Cell, cells_record, machine, table
from .harness.runs import add_run_arguments, measure_cell, run_undisturbed, server_settings
from .harness.servers import Running, ServerOptions, start_wsgi, stop
from .harness.wrk import Load

GUARDED, OPEN = "GET, require_token", "GET, no check"
PATHS = {GUARDED: "/accounts", OPEN: "/accounts-open"}
#: the most require_token may cost over the unchecked GET, CPU per request (issue 13)
TARGET = 1.2
WORK = {
    GUARDED: "certificate (chain remembered), token lookup, expiry, scope, client, binding",
    OPEN: "the same view, nothing checked",
}


@dataclass
class Api:
    """The protected API under one server, with its tls_client_auth client."""

    running: Running
    client_id: str


def issue_token(api: Api, tpp: Onboarded) -> str:
    """A client_credentials token for the tls_client_auth client, bound to the certificate."""
    response = requests.post(
        f"{api.running.url}/token",
        data={"grant_type": "client_credentials", "scope": "accounts", "client_id": api.client_id},
        headers={CERT_HEADER: tpp.escaped_transport_pem},
        timeout=30,
    )
    if response.status_code != 200:
        raise SystemExit(f"token request: {response.status_code} {response.text}")
    return response.json()["access_token"]


def smoke_test(api: Api, tpp: Onboarded, token: str) -> None:
    """The protected GET needs both the token and its certificate; the open one neither."""
    url, cert = api.running.url, {CERT_HEADER: tpp.escaped_transport_pem}
    bearer = {"Authorization": f"Bearer {token}"}
    checks = [
        ("protected, token and certificate", PATHS[GUARDED], {**bearer, **cert}, 200),
        ("protected, no certificate", PATHS[GUARDED], bearer, 401),
        ("protected, another token", PATHS[GUARDED], {"Authorization": "Bearer x", **cert}, 401),
        ("open, the same headers", PATHS[OPEN], {**bearer, **cert}, 200),
    ]
    for what, path, headers, expect in checks:
        status = requests.get(url + path, headers=headers, timeout=30).status_code
        if status != expect:
            raise SystemExit(f"smoke test, {what}: {status} (expected {expect})")


def start(
    args: argparse.Namespace, procs: Processes, work: Path, tpp: Onboarded, server: ServerOptions
) -> Api:
    running = start_wsgi(
        procs, work, tpp, target=f"api-{args.store}", server=server,
        pg_url=args.pg_url, redis_url=args.redis_url,
    )  # fmt: skip
    api = Api(running, register_at_bank(running.url, tpp, "tls_client_auth")["client_id"])
    smoke_test(api, tpp, issue_token(api, tpp))
    return api


def run_cell(
    args: argparse.Namespace,
    work: Path,
    tpp: Onboarded,
    api: Api,
    name: str,
    conns: int,
    repeat: int,
) -> Cell:
    """A warm-up run and a measured run of one GET against a running server."""
    load = Load(
        api.running.url, PATHS[name], work / "no-body", 0, 1, "", 200,
        CERT_HEADER, work / "client-cert.header",
        headers={"Authorization": f"Bearer {issue_token(api, tpp)}"}, method="GET", reuse=True,
    )  # fmt: skip
    result = measure_cell(args, api.running, load, load, conns)
    cell = Cell(name, api.running.store, api.running.setup, conns, repeat, result)
    print(cell.line(200), file=sys.stderr)
    return cell


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.require_token_http", description=__doc__.split("\n\n")[0]
    )
    add_run_arguments(parser, gunicorn="sync:2")
    parser.add_argument(
        "--store",
        default="sqlite",
        choices=["sqlite", "postgres"],
        help="where clients and tokens are stored (default sqlite; postgres: --pg-url)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = server_settings(args)
    connections = [int(c) for c in args.connections.split(",")]
    require_tools(node=False, servers=sorted({s.kind for s in settings}))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="obdcr-require-token-"))
    cells: list[Cell] = []
    try:
        with Processes() as procs:
            directory_url, ca_file = start_directory(procs, work)
            tpp = onboard(directory_url, ca_file)
            (work / "client-cert.header").write_text(tpp.escaped_transport_pem)
            apis = [start(args, procs, work, tpp, server) for server in settings]
            for repeat in range(args.repeat):
                for conns in connections:
                    for api in apis:
                        # the order alternates between repeats: neither GET always runs first
                        names = (GUARDED, OPEN) if repeat % 2 == 0 else (OPEN, GUARDED)
                        for name in names:
                            run = partial(run_cell, args, work, tpp, api, name, conns, repeat)
                            cells.append(run_undisturbed(args, run))
            for api in apis:
                stop(procs, api.running)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"require_token over HTTP: GET with a certificate-bound token against the same GET"
        f" unchecked, same app, same server ({os.cpu_count()} cores, wrk, {args.duration:g} s"
        f" per cell after {args.warmup:g} s warm-up, best of {args.repeat}; ratios pair each run"
        f" with the unchecked GET's under the same server in the same repeat; target: CPU/req"
        f" at most {TARGET}x); successful (200) only."
    )
    print()
    print(table(cells, baseline=OPEN, work=WORK, noun="GET", cpu_ratio=True, same_setup=True))
    record = {"machine": machine(), "options": vars(args), "cells": cells_record(cells)}
    (OUT_DIR / "require_token_http.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
