"""The token endpoint and ``require_token`` in process, against the same requests unchecked.

Issue 13, item 2: what a bank spends per token and per protected API call, beyond what the
web stack itself costs. One bank app (an Authlib ``AuthorizationServer`` wired by
``dcr.configure_authorization_server``, as ``tests/conftest.py``'s ``bank`` fixture), called
directly with a WSGI environ (no HTTP server, no test client: only the app's own work), the
client certificate in ``X-SSL-Client-Cert`` from a trusted proxy address as nginx passes it
(``--cert-source environ``: ``SSL_CLIENT_CERT``, as a TLS-terminating WSGI server sets it).
The same app has the references, so every ratio is within one run and one process:

* **token, tls_client_auth** / **private_key_jwt** / **client_secret_basic**:
  ``POST /token`` ``grant_type=client_credentials``, the token bound to the certificate;
  private_key_jwt assertions are signed beforehand, each with its own ``jti`` (warm JWKS
  cache: the sandbox Directory's documents in process);
* **token, no-op**: ``POST /token-noop``: the same form read, a token made by Authlib's own
  generator and the same JSON answer, nothing checked or stored: the floor of a token endpoint
  in Flask;
* **GET, require_token**: ``GET /accounts`` behind ``@dcr.require_token("accounts")`` with a
  bound token and its certificate;
* **GET, no check**: ``GET /accounts-open``, the same view without the decorator.

Scenarios take turns in blocks of ``--block`` requests within a series, the order rotating
between repeats, the cyclic garbage collector off while timing; the figure is the median over
``--repeat`` series of the CPU time per request (``time.process_time``: steady on a busy
machine), and each ratio is also given paired per repeat (min-max). Targets: ``require_token``
at most 1.2x the unchecked GET.

    .venv/bin/python -m benchmarks.token_hot_path                     # SQLite, revocation on
    .venv/bin/python -m benchmarks.token_hot_path --store memory --revocation off
    .venv/bin/python -m benchmarks.token_hot_path --json   # benchmarks/out/token_hot_path.json
    .venv/bin/python -m benchmarks.token_hot_path --baseline before.json   # adds "before" ratios
    .venv/bin/python -m benchmarks.token_hot_path --profile "GET, require_token" --profile-n 3000

With ``--revocation require`` (the default) the transport certificate names an OCSP responder
and a CRL served by a :class:`~flask_obdcr.testing.revocation.RevocationServer` on loopback;
the warm-up fills the verdict cache and the script fails if the responder sees a request while
timing. ``--json`` writes ``benchmarks/out/token_hot_path.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .harness.common import CERT_HEADER, ISSUER, OUT_DIR

TOKEN_URL = f"{ISSUER}/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
WARMUP = 50
#: the ratio require_token may cost over the same GET unchecked (issue 13)
REQUIRE_TOKEN_TARGET = 1.2

TLS, JWT, BASIC, NOOP = (
    "token, tls_client_auth",
    "token, private_key_jwt",
    "token, client_secret_basic",
    "token, no-op",
)
GUARDED, OPEN = "GET, require_token", "GET, no check"
SCENARIOS = (TLS, JWT, BASIC, NOOP, GUARDED, OPEN)
#: each scenario's reference, for the ratios
REFERENCE = {TLS: NOOP, JWT: NOOP, BASIC: NOOP, GUARDED: OPEN}
#: requests per block, relative to --block: a GET is several times cheaper than a token
SCALE = {TLS: 1, JWT: 1, BASIC: 1, NOOP: 1, GUARDED: 3, OPEN: 3}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


# --------------------------------------------------------------------------- the bank


class Anyone:
    """The no-op endpoint's client: whatever scope it asks for."""

    def get_allowed_scope(self, scope: str) -> str:
        return scope


ANYONE = Anyone()


def make_bank(directory: Any, documents: dict, folder: Path, store_kind: str, args: Any) -> Any:
    from authlib.integrations.flask_oauth2 import AuthorizationServer
    from flask import Flask, request

    from flask_obdcr import OpenBankingDCR
    from flask_obdcr.jwks import StaticFetcher
    from flask_obdcr.storage import ClientStore, MemoryStore, SQLiteStore

    app = Flask("bench_bank", instance_path=str(folder / "instance"))
    extra: dict[str, Any] = {
        "OBDCR_REVOCATION": args.revocation,
        "OBDCR_REVOCATION_CACHE_SECONDS": 3600,  # never refreshed while timing
    }
    if args.cert_source == "header":
        extra.update(OBDCR_CLIENT_CERT_HEADER=CERT_HEADER, OBDCR_TRUSTED_PROXIES=["127.0.0.1"])
    app.config.update(directory.app_config(folder / "ca.pem", issuer=ISSUER, **extra))
    store: ClientStore = (
        SQLiteStore(folder / "obdcr.db") if store_kind == "sqlite" else MemoryStore()
    )
    dcr = OpenBankingDCR(app, store=store, jwks_fetcher=StaticFetcher(documents, max_age=86400))
    server = AuthorizationServer(app, query_client=dcr.query_client, save_token=dcr.save_token)
    dcr.configure_authorization_server(server)

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    @app.post("/token-noop")
    def token_noop() -> Any:
        form = request.form
        token = server.generate_token(
            form["grant_type"], ANYONE, scope=form.get("scope"), include_refresh_token=False
        )
        return token, 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}

    def accounts() -> Any:
        return {"Data": {"Account": [{"AccountId": "22289"}]}}

    app.add_url_rule("/accounts", "accounts", dcr.require_token("accounts")(accounts))
    app.add_url_rule("/accounts-open", "accounts_open", accounts)
    app.store = store  # type: ignore[attr-defined]
    return app


def environ(
    method: str,
    path: str,
    cert: tuple[str, str],
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What a WSGI server hands the app for one request (``wsgi.input`` made fresh by
    :func:`call`)."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "as.bench-bank.test",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "as.bench-bank.test",
        "wsgi.url_scheme": "https",  # Authlib refuses a token endpoint over plain http
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        "body": body,
        cert[0]: cert[1],
    }
    if body:
        env["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        env["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def call(app: WSGIApp, env: dict[str, Any], expect: str = "200") -> bytes:
    """One request through the WSGI app; the answer's body (exits on another status)."""
    env = dict(env)
    env["wsgi.input"] = io.BytesIO(env.pop("body"))
    status: list[str] = []
    body = b"".join(app(env, lambda s, h, e=None: status.append(s)))
    if not status[0].startswith(expect):
        raise SystemExit(f"{env['PATH_INFO']}: {status[0]} {body[:300]!r}")
    return body


# --------------------------------------------------------------------------- the runs


def runners(app: WSGIApp, envs: dict[str, Any], assertions: list[bytes]) -> dict[str, Callable]:
    """One callable per scenario: ``run(count)`` makes ``count`` requests, each checked."""
    used = iter(assertions)

    def repeat(env: dict[str, Any]) -> Callable[[int], None]:
        def run(count: int) -> None:
            for _ in range(count):
                call(app, env)

        return run

    def jwt(count: int) -> None:
        for _ in range(count):
            body = next(used, None)
            if body is None:
                raise SystemExit("out of pre-signed client assertions")
            call(app, {**envs[JWT], "body": body, "CONTENT_LENGTH": str(len(body))})

    run = {name: repeat(env) for name, env in envs.items() if name != JWT}
    run[JWT] = jwt
    return run


def series(runs: dict[str, Callable], order: Sequence[str], count: int, block: int) -> dict:
    """``count`` blocks per scenario, the scenarios taking turns block by block: CPU seconds
    per request of each."""
    cpu = dict.fromkeys(order, 0.0)
    clock = time.process_time
    gc.disable()
    try:
        for _ in range(count):
            for name in order:
                started = clock()
                runs[name](block * SCALE[name])
                cpu[name] += clock() - started
    finally:
        gc.enable()
    return {name: cpu[name] / (count * block * SCALE[name]) for name in order}


def profile(runs: dict[str, Callable], name: str, count: int, top: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    runs[name](count)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    print(f"\n### cProfile: {name}, {count} requests (seconds in all; divide by {count})\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


# --------------------------------------------------------------------------- report


def ratios(cpu: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, reference in REFERENCE.items():
        paired = [a / b for a, b in zip(cpu[name], cpu[reference], strict=True)]
        out[name] = {
            "reference": reference,
            "ratio": statistics.median(cpu[name]) / statistics.median(cpu[reference]),
            "paired_min": min(paired),
            "paired_max": max(paired),
        }
    return out


def table(cpu: dict[str, list[float]], baseline: dict[str, Any] | None) -> str:
    found = ratios(cpu)
    head = "| scenario | CPU µs/request | against | **ratio** | paired (min-max) |"
    rule = "|---|---:|---|---:|---:|"
    if baseline:
        head += " before |"
        rule += "---:|"
    lines = [head, rule]
    for name in SCENARIOS:
        median = statistics.median(cpu[name]) * 1e6
        row = found.get(name)
        if row is None:
            line = f"| {name} | {median:,.0f} | | | |"
            lines.append(line + (" |" if baseline else ""))
            continue
        line = (
            f"| {name} | {median:,.0f} | {row['reference']} | **{row['ratio']:.2f}x** "
            f"| {row['paired_min']:.2f}-{row['paired_max']:.2f} |"
        )
        if baseline:
            before = baseline.get("ratios", {}).get(name, {}).get("ratio")
            line += f" {before:.2f}x |" if before else " |"
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.token_hot_path", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--n", type=int, default=20, help="blocks per scenario in a series (20)")
    p.add_argument("--block", type=int, default=10, help="token requests per block (10)")
    p.add_argument("--repeat", type=int, default=9, help="interleaved series (9)")
    p.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    p.add_argument("--revocation", choices=["require", "off"], default="require")
    p.add_argument("--cert-source", choices=["header", "environ"], default="header")
    p.add_argument("--key-type", choices=["RSA", "EC"], default="RSA")
    p.add_argument("--profile", choices=SCENARIOS, help="cProfile this scenario, then stop")
    p.add_argument("--profile-n", type=int, default=2000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", action="store_true", help="write OUT/token_hot_path.json")
    p.add_argument("--baseline", type=Path, help="a JSON of an earlier run: its ratios beside")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--check", action="store_true", help="exit 1 if require_token > 1.2x")
    return p


@contextlib.contextmanager
def responder(args: Any, ca: Any) -> Iterator[Any]:
    if args.revocation == "off":
        yield None
        return
    from flask_obdcr.testing.revocation import RevocationServer

    with RevocationServer(ca) as server:
        yield server


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if min(args.n, args.block, args.repeat) < 1:
        raise SystemExit("--n, --block and --repeat must be at least 1")
    from flask_obdcr.testing import SandboxDirectory

    print("building the sandbox Directory (key generation) ...", file=sys.stderr)
    directory = SandboxDirectory()
    software = directory.register_software(key_type=args.key_type)
    work = Path(tempfile.mkdtemp(prefix="obdcr-token-hot-path-"))
    try:
        with responder(args, directory.issuing_ca) as revocation:
            if revocation is not None:
                ca = directory.issuing_ca
                directory.issue_transport_certificate(
                    software,
                    key_type=args.key_type,
                    ocsp_url=revocation.ocsp_url(ca),
                    crl_url=revocation.crl_url(ca),
                )
            pem = software.transport_pem()
            cert = (
                ("HTTP_" + CERT_HEADER.upper().replace("-", "_"), quote(pem, safe=""))
                if args.cert_source == "header"
                else ("SSL_CLIENT_CERT", pem)
            )
            app = make_bank(directory, directory.documents(), work, args.store, args)
            return measure(args, app, directory, software, cert, revocation)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: Any, app: Any, directory: Any, software: Any, cert: Any, revocation: Any) -> int:
    def register(method: str) -> dict[str, Any]:
        body = directory.registration_request(
            software, aud=ISSUER, token_endpoint_auth_method=method
        ).encode()
        env = environ("POST", "/register", cert, body)
        env["CONTENT_TYPE"] = "application/jwt"
        return json.loads(call(app, env, "201"))

    tls_id = register("tls_client_auth")["client_id"]
    jwt_id = register("private_key_jwt")["client_id"]
    basic = register("client_secret_basic")
    form = {"grant_type": "client_credentials", "scope": "accounts"}
    credentials = f"{basic['client_id']}:{basic['client_secret']}".encode()
    envs = {
        TLS: environ("POST", "/token", cert, urlencode({**form, "client_id": tls_id}).encode()),
        JWT: environ("POST", "/token", cert),
        BASIC: environ(
            "POST",
            "/token",
            cert,
            urlencode(form).encode(),
            {"Authorization": "Basic " + base64.b64encode(credentials).decode()},
        ),
        NOOP: environ("POST", "/token-noop", cert, urlencode(form).encode()),
    }
    bound = json.loads(call(app, envs[TLS]))["access_token"]
    envs[GUARDED] = environ("GET", "/accounts", cert, headers={"Authorization": f"Bearer {bound}"})
    envs[OPEN] = environ("GET", "/accounts-open", cert, headers={"Authorization": "Bearer x"})
    envs[JWT]["CONTENT_TYPE"] = "application/x-www-form-urlencoded"

    timed = args.n * args.block * args.repeat
    count = WARMUP + (args.profile_n if args.profile == JWT else timed)
    print(f"signing {count} client assertions ...", file=sys.stderr)
    exp = int(time.time()) + 3000  # under OBDCR_MAX_ASSERTION_LIFETIME
    assertions = [
        urlencode(
            {
                **form,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": software.client_assertion(jwt_id, aud=TOKEN_URL, exp=exp),
            }
        ).encode()
        for _ in range(count)
    ]
    runs = runners(app, envs, assertions)
    for name in SCENARIOS:  # caches, imports, first-request paths
        runs[name](WARMUP)
    if args.profile:
        profile(runs, args.profile, args.profile_n, args.top)
        return 0
    seen = len(revocation.requests) if revocation is not None else 0
    cpu: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    for number in range(args.repeat):
        shift = number % len(SCENARIOS)
        order = SCENARIOS[shift:] + SCENARIOS[:shift]
        for name, seconds in series(runs, order, args.n, args.block).items():
            cpu[name].append(seconds)
        print(f"series {number + 1}/{args.repeat}", file=sys.stderr)
    if revocation is not None and len(revocation.requests) != seen:
        raise SystemExit("the revocation responder was asked while timing: caches not warm")
    app.store.close()

    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    print(
        f"\nCPU per request, median of {args.repeat} interleaved series of "
        f"{args.n * args.block} token requests (x3 GETs); store {args.store}, revocation "
        f"{args.revocation}, certificate from {args.cert_source}, {software.signing_alg} "
        f"assertions; Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPU\n"
    )
    print(table(cpu, baseline))
    found = ratios(cpu)
    if args.json:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "token_hot_path.json"
        options = {k: v for k, v in vars(args).items() if k in ("store", "revocation", "key_type")}
        path.write_text(json.dumps({**options, "cpu_s": cpu, "ratios": found}, indent=1))
        print(f"\nraw series: {path}")
    if args.check and found[GUARDED]["ratio"] > REQUIRE_TOKEN_TARGET:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
