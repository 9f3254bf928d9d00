"""Token endpoint requests per second, per client auth method: flask-obdcr vs node-oidc-provider.

The same set-up as ``benchmarks.http_registration`` (wrk with ``benchmarks/wrk/post_lines.lua``,
both servers side by side on loopback, 1 and 8 connections), for ``POST /token`` with
``grant_type=client_credentials``, one client per auth method (``--auth``, repeatable; all
three by default), each answered by both servers:

* **private_key_jwt** (RFC 7523): a PS256 client assertion, a different ``jti`` on every call
  (both servers refuse a replayed assertion), signed before each cell (signing is the
  client's cost) with ``exp`` 10 minutes ahead (flask-obdcr refuses longer-lived ones);
* **tls_client_auth** (RFC 8705): ``client_id`` in the form, the client authenticated by its
  certificate matching the registered ``tls_client_auth_subject_dn``; the same request on
  every call;
* **client_secret_basic** (RFC 6749): the client's id and secret in an ``Authorization:
  Basic`` header (kept in a file only wrk reads, never printed); the same request on every
  call.

Every request of both servers carries the transport certificate in ``X-SSL-Client-Cert``
(URL-escaped, as nginx's ``$ssl_client_escaped_cert``), honoured from loopback only, and both
servers bind every token to it (RFC 8705 ``cnf`` ``x5t#S256``):

* **flask-obdcr**: the example bank under gunicorn or granian (``--server``) behind an
  (imagined) nginx. Clients are registered through ``POST /register`` first; their keys come
  from the software's JWKS at the sandbox Directory (HTTPS), fetched once per worker and then
  cached (warm: the warm-up run fills the cache). Per call the bank checks the transport
  certificate's chain (remembered per certificate), authenticates the client, looks it up,
  checks a jti, issues an access token bound to the certificate and stores it (hashed) in
  the same database as the clients.
* **node-oidc-provider** (``benchmarks/oidc_provider/server.mjs``): ``features.clientCredentials``
  and ``features.mTLS`` (``tlsClientAuth``, ``certificateBoundAccessTokens``, the certificate
  from the same header); clients registered through its registration endpoint with the same
  public key inline and ``tls_client_certificate_bound_access_tokens``. It trusts the proxy to
  have verified the chain. Before the load the script checks, through node's introspection
  endpoint, that its token is bound to the certificate.

Two references in the same Flask stack, with ``--only``: **flask-noop** answers a token
without any work (the form read, a token string, the JSON answer: the ceiling of any Flask
token endpoint under that server), and **flask-token-floor** does the least a Flask token
endpoint that binds its tokens and keeps them durably must do (:func:`benchmarks.harness.apps.
token_floor`: the certificate header parsed and its thumbprint taken, the PS256 signature or
the secret checked, one SQLite insert), and **flask-token-floor-memory** the same with the
tokens in a dict of the process, as node keeps them. Where the floor itself is below
node-oidc-provider, so is every conforming Flask server that keeps its tokens durably.

    .venv/bin/python -m benchmarks.token_endpoint
    .venv/bin/python -m benchmarks.token_endpoint --only node-oidc-provider --only flask-sqlite \
        --only flask-token-floor --only flask-token-floor-memory --only flask-noop --server granian
    .venv/bin/python -m benchmarks.token_endpoint --auth tls_client_auth --connections 8
    .venv/bin/python -m benchmarks.token_endpoint --server gunicorn --server granian
    .venv/bin/python -m benchmarks.token_endpoint --profile --auth tls_client_auth   # py-spy

Output: one markdown table per auth method on stdout (requests/s, the ratio to
node-oidc-provider paired per repeat, server CPU per request), ``benchmarks/out/
token_endpoint.{json,png}``; ``--profile``: ``benchmarks/out/profile-token-<auth>-<store>.
{svg,txt}`` and ``-summary.md``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import quote, urlencode

import requests

from .harness.common import CERT_HEADER, ISSUER, OUT_DIR
from .harness.onboarding import (
    AUTH_METHODS,
    Onboarded,
    onboard,
    register_at_bank,
    register_at_node,
    start_directory,
)
from .harness.processes import Processes, require_tools
from .harness.profiling import profiled_run, write_profile_summary
from .harness.report import Cell, cells_record, chart, machine, table
from .harness.runs import add_run_arguments, measure_cell, run_undisturbed, server_settings
from .harness.servers import Running, ServerOptions, start_target, start_wsgi, stop
from .harness.signing import write_assertions
from .harness.wrk import Load, run_wrk

FORM = "application/x-www-form-urlencoded"
NODE = "node-oidc-provider"
#: the references in the same Flask stack (benchmarks.harness.apps): nothing checked, and the
#: least a Flask token endpoint that binds and keeps its tokens must do
NOOP, FLOOR, FLOOR_MEMORY = "flask-noop", "flask-token-floor", "flask-token-floor-memory"
REFERENCES = (NOOP, FLOOR, FLOOR_MEMORY)
TARGETS = (NODE, "flask-sqlite", "flask-postgres", *REFERENCES)
_NOOP_WORK = "form read, token string, JSON answer: nothing checked, nothing stored"
_FLOOR_WORK = "certificate header parsed + thumbprint (trusted); token stored hashed, durably"
_MEMORY_WORK = "certificate header parsed + thumbprint (trusted); token hashed, kept in a dict"
WORK = {
    "private_key_jwt": {
        NODE: "PS256 verification, jti; token bound, in memory",
        "flask-obdcr": "PS256 verification, jti, certificate chain; token bound, durable store",
        NOOP: _NOOP_WORK,
        FLOOR: "PS256 verification, jti in a set; " + _FLOOR_WORK,
        FLOOR_MEMORY: "PS256 verification, jti in a set; " + _MEMORY_WORK,
    },
    "tls_client_auth": {
        NODE: "subject DN match (chain trusted to the proxy); token bound, in memory",
        "flask-obdcr": "certificate chain + subject DN match; token bound, durable store",
        NOOP: _NOOP_WORK,
        FLOOR: "client_id present; " + _FLOOR_WORK,
        FLOOR_MEMORY: "client_id present; " + _MEMORY_WORK,
    },
    "client_secret_basic": {
        NODE: "secret comparison; token bound, in memory",
        "flask-obdcr": "secret hash check, certificate chain; token bound, durable store",
        NOOP: _NOOP_WORK,
        FLOOR: "secret comparison; " + _FLOOR_WORK,
        FLOOR_MEMORY: "secret comparison; " + _MEMORY_WORK,
    },
}


@dataclass
class Client:
    """A client registered at a server under test, with what its token requests carry."""

    client_id: str
    secret: str = field(default="", repr=False)


@dataclass
class Target:
    """A server under test kept running through the run, with one client per auth method."""

    name: str  # node-oidc-provider | flask-sqlite | flask-postgres
    running: Running
    clients: dict[str, Client]
    introspector: Client | None = None

    @property
    def aud(self) -> str:
        """The client assertion's audience: node wants its token endpoint, the bank its
        issuer."""
        return f"{self.running.url}/token" if self.name == NODE else ISSUER

    @property
    def server(self) -> str:
        return self.name if self.name in (NODE, *REFERENCES) else "flask-obdcr"


def register(url: str, tpp: Onboarded, name: str, auth: str) -> Client:
    registered = (register_at_node if name == NODE else register_at_bank)(url, tpp, auth)
    return Client(registered["client_id"], registered.get("client_secret", ""))


def start(
    args: argparse.Namespace,
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    name: str,
    server: ServerOptions,
) -> Target:
    """A server, one client_credentials client per auth method registered at it, and one
    token request per method (a server that refuses one would make a meaningless run)."""
    running = start_target(
        procs, work, tpp, name, server=server, pg_url=args.pg_url, redis_url=args.redis_url
    )
    target = Target(name, running, {})
    if name == NODE:
        # the client that asks node's introspection endpoint whether a token is bound
        target.introspector = register(running.url, tpp, name, "tls_client_auth")
    for auth in args.auth:
        target.clients[auth] = register(running.url, tpp, name, auth)
        smoke_test(target, tpp, auth)
    return target


def token_form(target: Target, auth: str) -> str:
    """The form of a tls_client_auth or client_secret_basic token request (the same on every
    call: nothing in it is refused when seen again)."""
    form = {"grant_type": "client_credentials", "scope": "accounts"}
    if auth == "tls_client_auth":
        form["client_id"] = target.clients[auth].client_id
    return urlencode(form)


def auth_headers(target: Target, auth: str) -> dict[str, str]:
    """The headers of every token request besides the certificate's (RFC 6749 section 2.3.1:
    id and secret form-encoded, then joined for HTTP Basic)."""
    if auth != "client_secret_basic":
        return {}
    client = target.clients[auth]
    pair = f"{quote(client.client_id, safe='')}:{quote(client.secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def smoke_test(target: Target, tpp: Onboarded, auth: str) -> None:
    """One token request with ``auth``, answered 200; at node, its token bound to the
    transport certificate (introspection's ``cnf``), as the bank binds every token."""
    headers = {
        "Content-Type": FORM,
        CERT_HEADER: tpp.escaped_transport_pem,
        **auth_headers(target, auth),
    }
    if auth == "private_key_jwt":
        path = Path(tempfile.mkdtemp(prefix="obdcr-token-smoke-")) / "one.form"
        try:
            write_assertions(tpp, path, target.clients[auth].client_id, target.aud, 1)
            body = path.read_text().strip()
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
    else:
        body = token_form(target, auth)
    url = target.running.url
    response = requests.post(f"{url}/token", data=body, headers=headers, timeout=30)
    if response.status_code != 200:
        raise SystemExit(
            f"{target.name}, {auth}: token request {response.status_code}: {response.text}"
        )
    if target.name != NODE:
        return
    # introspection needs an authenticated client: a tls_client_auth one needs no secret and
    # no assertion, only the certificate header every request carries anyway
    introspector = target.introspector
    if introspector is None:
        raise SystemExit(f"{NODE}: no client to ask its introspection endpoint")
    introspected = requests.post(
        f"{url}/token/introspection",
        data={"token": response.json()["access_token"], "client_id": introspector.client_id},
        headers={CERT_HEADER: tpp.escaped_transport_pem},
        timeout=30,
    ).json()
    bound = (introspected.get("cnf") or {}).get("x5t#S256")
    if not introspected.get("active") or bound != tpp.transport_thumbprint:
        raise SystemExit(f"{NODE}, {auth}: the token is not bound to the certificate")


def target_load(
    args: argparse.Namespace, work: Path, tpp: Onboarded, target: Target, auth: str
) -> tuple[Load, str]:
    """The cell's load (fresh assertions for private_key_jwt), and a note for its line."""
    url = target.running.url
    header = (CERT_HEADER, work / "client-cert.header")
    if auth == "private_key_jwt":
        # the references answer as fast as node, or faster
        fast = target.name == NODE or target.name in REFERENCES
        count = args.assertions_node if fast else args.assertions_flask
        path = work / f"assertions-{target.name}.form"
        t0 = time.perf_counter()
        write_assertions(tpp, path, target.clients[auth].client_id, target.aud, count)
        note = f"  (signed in {time.perf_counter() - t0:.0f} s)"
        return Load(url, "/token", path, 0, count, FORM, 200, *header), note
    path = work / f"{auth}-{target.name}.form"
    path.write_text(token_form(target, auth) + "\n")
    load = Load(
        url, "/token", path, 0, 1, FORM, 200, *header,
        headers=auth_headers(target, auth), reuse=True,
    )  # fmt: skip
    return load, ""


def run_cell(
    args: argparse.Namespace,
    work: Path,
    tpp: Onboarded,
    target: Target,
    auth: str,
    conns: int,
    repeat: int,
) -> Cell:
    """A warm-up run and a measured run against a running server."""
    if target.name == NODE:
        # node's in-memory adapter keeps clients and tokens in one LRU of 1,000 entries: the
        # tokens of the previous cells have pushed this method's client out; a new one is in
        target.clients[auth] = register(target.running.url, tpp, target.name, auth)
    load, note = target_load(args, work, tpp, target, auth)
    warm, measured = load.split(load.count // 4) if not load.reuse else (load, load)
    result = measure_cell(args, target.running, warm, measured, conns)
    cell = Cell(target.server, target.running.store, target.running.setup, conns, repeat, result)
    if result.wrapped:
        note += " (ran out of assertions)"
    print(f"  {auth:19}" + cell.line(200, note), file=sys.stderr)
    return cell


def profile(args: argparse.Namespace, server: ServerOptions, connections: int = 8) -> None:
    """py-spy on the bank's workers while wrk drives token requests of the first ``--auth``."""
    store, auth = args.profile_store, args.auth[0]
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
                    target = Target(f"flask-{store}", running, {})
                    target.clients[auth] = register(running.url, tpp, target.name, auth)
                    load, _ = target_load(args, work, tpp, target, auth)
                    warm, measured = load.split(load.count // 4) if not load.reuse else (load, load)
                    run_wrk(warm, connections=connections, duration=args.warmup)
                    profiled_run(
                        running.process.pid,
                        measured,
                        connections=connections,
                        duration=args.duration,
                        output=OUT_DIR / f"profile-token-{auth}-{store}.{suffix}",
                        fmt=fmt,
                        gil=server.multithreaded,
                    )
                finally:
                    stop(procs, running)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_profile_summary(OUT_DIR / f"profile-token-{auth}-{store}.txt")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.token_endpoint", description=__doc__.split("\n\n")[0]
    )
    add_run_arguments(parser, gunicorn="sync:2")
    parser.add_argument(
        "--only",
        action="append",
        choices=TARGETS,
        help=f"the targets (repeatable); default: {NODE}, flask-sqlite, flask-postgres. {NOOP}:"
        f" the same Flask stack answering a token without any work; {FLOOR}: the least a Flask"
        f" token endpoint binding and keeping its tokens durably must do; {FLOOR_MEMORY}: the"
        " same, the tokens in memory",
    )
    parser.add_argument(
        "--auth",
        action="append",
        choices=AUTH_METHODS,
        help="the client auth method (repeatable; default: all three)",
    )
    parser.add_argument(
        "--assertions-flask",
        type=int,
        default=40000,
        help="private_key_jwt assertions signed per flask-obdcr cell (warm-up + measured)",
    )
    parser.add_argument(
        "--assertions-node",
        type=int,
        default=60000,
        help="private_key_jwt assertions signed per node-oidc-provider cell",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison: py-spy on flask-obdcr's token endpoint with the first"
        " --auth (8 connections, the first server setting; use --gunicorn sync:2)",
    )
    return parser


def report(args: argparse.Namespace, cells: dict[str, list[Cell]]) -> None:
    """One table per auth method, the JSON record, one chart per auth method."""
    for auth, auth_cells in cells.items():
        print()
        print(
            f"Token endpoint, client_credentials with {auth}, over HTTP on loopback"
            f" ({os.cpu_count()} cores, wrk, {args.duration:g} s per cell after"
            f" {args.warmup:g} s warm-up, best of {args.repeat}; the ratio column pairs each"
            f" run with {NODE}'s run of the same repeat); successful (200) only; both servers"
            " bind every token to the certificate."
        )
        print()
        print(table(auth_cells, work=WORK[auth], noun="token request", cpu_ratio=True))
        chart(
            auth_cells,
            OUT_DIR / f"token_endpoint-{auth}.png",
            f"client_credentials + {auth} over HTTP (loopback)",
        )
    record = {
        "machine": machine(),
        "options": vars(args),
        "cells": {auth: cells_record(auth_cells) for auth, auth_cells in cells.items()},
    }
    (OUT_DIR / "token_endpoint.json").write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.auth = list(dict.fromkeys(args.auth or AUTH_METHODS))
    settings = server_settings(args)
    if args.profile:
        require_tools(node=False, servers=[settings[0].kind])
        profile(args, settings[0])
        return 0

    targets = args.only or [NODE, "flask-sqlite", "flask-postgres"]
    connections = [int(c) for c in args.connections.split(",")]
    require_tools(node=NODE in targets, servers=sorted({s.kind for s in settings}))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="obdcr-token-bench-"))
    cells: dict[str, list[Cell]] = {auth: [] for auth in args.auth}
    try:
        with Processes() as procs:
            directory_url, ca_file = start_directory(procs, work)
            tpp = onboard(directory_url, ca_file)
            (work / "client-cert.header").write_text(tpp.escaped_transport_pem)
            # every server up at once (idle servers cost nothing), so the cells can alternate
            running: list[Target] = []
            for name in targets:
                for server in settings if name != NODE else settings[:1]:
                    running.append(start(args, procs, work, tpp, name, server))
            for repeat in range(args.repeat):
                for conns in connections:
                    for auth in args.auth:
                        for target in running:
                            run = partial(run_cell, args, work, tpp, target, auth, conns, repeat)
                            cells[auth].append(run_undisturbed(args, run))
            for target in running:
                stop(procs, target.running)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
