"""Token endpoint requests per second with private_key_jwt: flask-obdcr against node-oidc-provider.

The same set-up as ``http_registration.py`` (wrk with ``benchmarks/wrk/post_lines.lua``, both
servers side by side on loopback, 1 and 8 connections), for ``POST /token`` with
``grant_type=client_credentials`` and a ``private_key_jwt`` client assertion (RFC 7523,
PS256, a different ``jti`` on every call: both servers refuse a replayed assertion):

* **flask-obdcr**: the example bank under gunicorn behind an (imagined) nginx, the client
  certificate in ``X-SSL-Client-Cert``. The client was registered through ``POST /register``
  first; its keys come from the software's JWKS at the sandbox Directory (HTTPS), fetched once
  per worker and then cached (warm: the warm-up run fills the cache). Per call: the bank checks
  the transport certificate's chain, verifies the assertion with the cached key, looks the
  client up in the store, checks the jti, issues an access token bound to the certificate
  (RFC 8705 ``cnf``) and stores it (hashed) in the same database as the clients.
* **node-oidc-provider**: ``features.clientCredentials``, the client registered through its
  registration endpoint with the same public key inline (``jwks``); per call it verifies the
  assertion, checks the jti and stores an opaque token in its in-memory adapter.

Assertions are signed before each cell (signing is the client's cost) with ``exp`` 10 minutes
ahead (flask-obdcr refuses longer-lived ones).

    .venv/bin/python benchmarks/token_endpoint.py
    .venv/bin/python benchmarks/token_endpoint.py --only flask-sqlite --connections 8
    .venv/bin/python benchmarks/token_endpoint.py --profile --gunicorn sync:2   # py-spy

Output: a markdown table on stdout, ``benchmarks/out/token_endpoint.{json,png}``;
``--profile``: ``benchmarks/out/profile-token-<store>.{svg,txt}`` and ``-summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_registration import (  # noqa: E402
    CERT_HEADER,
    ISSUER,
    OUT_DIR,
    REDIRECT_URIS,
    Cell,
    GunicornOptions,
    Load,
    Onboarded,
    Processes,
    _init_signer,
    add_run_arguments,
    chart,
    git_version,
    node_registration_metadata,
    onboard,
    parallel_sign,
    platform_node_version,
    profiled_run,
    registration_claims,
    require_tools,
    run_undisturbed,
    run_wrk,
    sign_ps256,
    start_bank,
    start_directory,
    start_target,
    stop_bank,
    table,
    wait_for_quiet,
    write_profile_summary,
)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 600  # flask-obdcr's MAX_ASSERTION_LIFETIME
SCOPE = "accounts"

WORK = {
    "node-oidc-provider": "PS256 verification; opaque token in memory",
    "flask-obdcr": (
        "PS256 verification + certificate chain check; certificate-bound token, durable store"
    ),
}


def _sign_assertion_chunk(args: tuple[str, str, int, int]) -> list[str]:
    client_id, aud, count, now = args
    lines = []
    for _ in range(count):
        assertion = sign_ps256(
            {
                "iss": client_id,
                "sub": client_id,
                "aud": aud,
                "jti": str(uuid.uuid4()),
                "iat": now,
                "exp": now + ASSERTION_LIFETIME - 10,
            }
        )
        lines.append(
            urlencode(
                {
                    "grant_type": "client_credentials",
                    "scope": SCOPE,
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion,
                }
            )
        )
    return lines


def write_assertions(tpp: Onboarded, path: Path, client_id: str, aud: str, count: int) -> None:
    now = int(time.time())
    chunk = 1000
    chunks = [(client_id, aud, min(chunk, count - s), now) for s in range(0, count, chunk)]
    with open(path, "w") as handle:
        for lines in parallel_sign(_sign_assertion_chunk, tpp, chunks):
            handle.write("\n".join(lines) + "\n")


def register_at_bank(url: str, tpp: Onboarded) -> str:
    _init_signer(tpp.signing_key_pem, tpp.signing_kid)
    body = sign_ps256(registration_claims(tpp, aud=ISSUER, now=int(time.time()), lifetime=300))
    response = requests.post(
        url + "/register",
        data=body,
        headers={"Content-Type": "application/jwt", CERT_HEADER: tpp.escaped_transport_pem},
        timeout=30,
    )
    if response.status_code != 201:
        raise SystemExit(f"registration at the bank: {response.status_code} {response.text}")
    return response.json()["client_id"]


def register_at_node(url: str, tpp: Onboarded) -> str:
    metadata = node_registration_metadata(tpp, 0)
    metadata.update(grant_types=["client_credentials"], response_types=[], scope=SCOPE)
    metadata.pop("redirect_uris", None)
    response = requests.post(url + "/reg", json=metadata, timeout=30)
    if response.status_code != 201:
        raise SystemExit(f"registration at oidc-provider: {response.status_code} {response.text}")
    return response.json()["client_id"]


def run_cell(
    args: argparse.Namespace,
    work: Path,
    tpp: Onboarded,
    server: dict[str, Any],
    target: str,
    conns: int,
    repeat: int,
) -> Cell:
    """Fresh assertions, a warm-up run and a measured run against a running server."""
    path = work / f"assertions-{target}.form"
    t0 = time.perf_counter()
    write_assertions(tpp, path, server["client_id"], server["aud"], server["count"])
    server["signed_in"] = time.perf_counter() - t0
    warm_lines = server["count"] // 4
    if args.quiet_wait > 0:
        wait_for_quiet(args.quiet_wait)
    form = "application/x-www-form-urlencoded"
    header = server["header"]
    warm = Load(server["url"], "/token", path, 0, warm_lines, form, 200, *header)
    measured = Load(
        server["url"], "/token", path, warm_lines, server["count"] - warm_lines, form, 200, *header
    )
    if args.warmup > 0:
        run_wrk(warm, connections=conns, duration=args.warmup)
    result = run_wrk(
        measured,
        connections=conns,
        duration=args.duration,
        server_pid=server["process"].pid,
        database_process="postgres" if server["store"] == "postgres" else None,
    )
    cell = Cell(
        target if target.startswith("node") else "flask-obdcr",
        server["store"],
        server["setup"],
        conns,
        repeat,
        result,
    )
    print(
        f"  {cell.label:32} c={conns:<2} {result.good_rps:8.0f} req/s"
        f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
        f"  server CPU {result.cpu_text()} us/req  non-200: {result.bad}"
        f"  other load {result.other_cpu_cores:.2f} cores  (signed in {server['signed_in']:.0f} s)"
        + (" (ran out of assertions)" if result.wrapped else ""),
        file=sys.stderr,
    )
    return cell


def profile(args: argparse.Namespace, store: str, connections: int = 8) -> None:
    """py-spy on the bank's gunicorn workers while wrk drives token requests."""
    gunicorn = GunicornOptions.parse(args.gunicorn)
    work = Path(tempfile.mkdtemp(prefix="obdcr-token-profile-"))
    try:
        with Processes() as procs:
            directory_url, ca_file = start_directory(procs, work)
            tpp = onboard(directory_url, ca_file)
            header_file = work / "client-cert.header"
            header_file.write_text(tpp.escaped_transport_pem)
            for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
                process, url = start_bank(
                    procs, work, tpp, store=store, gunicorn=gunicorn, pg_url=args.pg_url,
                    redis_url=args.redis_url,
                )  # fmt: skip
                try:
                    client_id = register_at_bank(url, tpp)
                    path = work / "assertions.form"
                    write_assertions(tpp, path, client_id, ISSUER, args.assertions_flask)
                    warm_lines = args.assertions_flask // 4
                    form = "application/x-www-form-urlencoded"
                    warm = Load(url, "/token", path, 0, warm_lines, form, 200, CERT_HEADER,
                                header_file)  # fmt: skip
                    run_wrk(warm, connections=connections, duration=args.warmup)
                    measured = Load(
                        url, "/token", path, warm_lines, args.assertions_flask - warm_lines,
                        form, 200, CERT_HEADER, header_file,
                    )  # fmt: skip
                    profiled_run(
                        process.pid,
                        measured,
                        connections=connections,
                        duration=args.duration,
                        output=OUT_DIR / f"profile-token-{store}.{suffix}",
                        fmt=fmt,
                        gil=gunicorn.worker_class == "gthread",
                    )
                finally:
                    stop_bank(procs, process)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_profile_summary(OUT_DIR / f"profile-token-{store}.txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        help="instead of the comparison: py-spy on flask-obdcr's token endpoint (8 connections;"
        " use --gunicorn sync:2)",
    )
    args = parser.parse_args(argv)
    if args.profile:
        require_tools(node=False)
        profile(args, args.profile_store)
        return 0

    # what run_undisturbed reads
    plan = argparse.Namespace(max_other_load=args.max_other_load, retries=args.retries)
    targets = args.only or ["node-oidc-provider", "flask-sqlite", "flask-postgres"]
    connections = [int(c) for c in args.connections.split(",")]
    gunicorn = GunicornOptions.parse(args.gunicorn)
    require_tools(node="node-oidc-provider" in targets)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="obdcr-token-bench-"))
    cells: list[Cell] = []
    try:
        with Processes() as procs:
            directory_url, ca_file = start_directory(procs, work)
            tpp = onboard(directory_url, ca_file)
            header_file = work / "client-cert.header"
            header_file.write_text(tpp.escaped_transport_pem)
            # every server up at once (idle servers cost nothing), so the cells can alternate
            servers: dict[str, dict[str, Any]] = {}
            for target in targets:
                process, url, store, setup = start_target(
                    procs,
                    work,
                    tpp,
                    target,
                    gunicorn=gunicorn,
                    pg_url=args.pg_url,
                    redis_url=args.redis_url,
                )
                node = target == "node-oidc-provider"
                servers[target] = dict(
                    process=process,
                    url=url,
                    client_id=register_at_node(url, tpp) if node else register_at_bank(url, tpp),
                    aud=f"{url}/token" if node else ISSUER,
                    count=args.assertions_node if node else args.assertions_flask,
                    header=(None, None) if node else (CERT_HEADER, header_file),
                    store=store,
                    setup=setup,
                )
            for repeat in range(args.repeat):
                for conns in connections:
                    for target in targets:
                        cell = run_undisturbed(
                            plan,
                            lambda t=target, c=conns, r=repeat: run_cell(
                                args, work, tpp, servers[t], t, c, r
                            ),
                        )
                        cells.append(cell)
            for server in servers.values():
                stop_bank(procs, server["process"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    duration = args.duration
    print()
    print(
        f"Token endpoint, client_credentials with private_key_jwt (PS256), over HTTP on"
        f" loopback ({os.cpu_count()} cores, wrk, {duration:g} s per cell after"
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
    record = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "node": platform_node_version(),
            "git": git_version(),
        },
        "options": vars(args),
        "redirect_uris": REDIRECT_URIS,
        "cells": [
            {
                **{k: v for k, v in asdict(c).items() if k != "result"},
                "label": c.label,
                **asdict(c.result),
                "good_rps": c.result.good_rps,
                "server_cpu_us_per_request": c.result.server_cpu_us_per_request,
                "database_cpu_us_per_request": c.result.database_cpu_us_per_request,
            }
            for c in cells
        ],
    }
    (OUT_DIR / "token_endpoint.json").write_text(json.dumps(record, indent=1))
    chart(
        cells,
        OUT_DIR / "token_endpoint.png",
        "client_credentials + private_key_jwt over HTTP (loopback)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
