"""Registrations per second over HTTP on loopback: flask-obdcr against node-oidc-provider.

Both servers run side by side on this machine, driven by the same load generator (wrk, with
``benchmarks/wrk/post_lines.lua``), at the same concurrency levels (1 and 8 connections):

* **flask-obdcr**: the example bank (``example_app.wsgi:behind_nginx``) under gunicorn, plain
  HTTP on loopback, the client certificate passed as nginx would pass it
  (``X-SSL-Client-Cert``: the URL-escaped PEM, honoured from ``127.0.0.1`` only), with the
  SQLite store (the default) and with PostgreSQL (``OBDCR_DATABASE_URL``). The Directory's and
  the software's JWKS come from the example sandbox Directory service over HTTPS, fetched once
  per worker and then cached (the warm-up fills the caches). Every call is a full
  ``POST /register``: a different request JWT (own ``jti``) signed PS256 by the software key,
  carrying an SSA signed PS256 by the Directory; the bank verifies both signatures, the
  transport certificate's chain and its binding to the SSA, every claim, stores the client and
  answers 201.
* **node-oidc-provider** (npm ``oidc-provider``, ``benchmarks/oidc_provider/server.mjs``): its
  dynamic registration endpoint with ``features.registration`` on, no initial access token,
  its in-memory adapter; JSON metadata (the same metadata, with the software's public keys
  inline as ``jwks``, without a software statement), no signature and no certificate to check.

* **Flask no-op POST** (``--only flask-noop``, not run by default): the same gunicorn and Flask
  with a handler that reads the body and answers 201, the ceiling of the web stack here.

flask-obdcr does strictly more work per request (two signature verifications, a certificate
chain check, a durable store); the table says so. Requests are built and signed before the
timed runs (signing is the TPP's cost), one per line of a file the Lua script reads; each cell
gets a fresh server (so a fresh jti replay cache), a warm-up run, then a measured run. Before
each cell the script waits for the machine to be idle, and runs a cell again when other work
took more than ``--max-other-load`` cores during it; the table shows that load and the server's
CPU time per request (which other work hardly changes).

    .venv/bin/python benchmarks/http_registration.py                 # the full comparison
    .venv/bin/python benchmarks/http_registration.py --duration 15 --repeat 2
    .venv/bin/python benchmarks/http_registration.py --only flask-sqlite --only flask-noop \
        --connections 8 --gunicorn sync:2,gthread:2x4,gthread:4x2 --tag sweep
    .venv/bin/python benchmarks/http_registration.py --profile --gunicorn sync:2   # py-spy

Needs: ``wrk`` (``apt-get install wrk``), node + ``npm ci`` in ``benchmarks/oidc_provider``,
gunicorn (and py-spy for ``--profile``, matplotlib for the chart) in the venv (the ``bench``
extra), PostgreSQL for the ``flask-postgres`` rows (``--pg-url``; a database ``obdcr_bench`` is
created if missing and its ``obdcr_*`` tables are dropped between cells).
Output: a markdown table on stdout, ``benchmarks/out/http_registration[-<tag>].{json,png}``;
``--profile``: ``benchmarks/out/profile-registration-<store>.{svg,txt}`` and
``profile-registration-<store>-summary.md``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
OUT_DIR = BENCH / "out"
LUA_SCRIPT = BENCH / "wrk" / "post_lines.lua"
NODE_DIR = BENCH / "oidc_provider"
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent

#: the bank's issuer (the public URL nginx would serve): what every request JWT has as aud
ISSUER = "https://as.bench-bank.test"
REDIRECT_URIS = ["https://tpp.bench.example/cb"]
ROLES = ["AISP", "PISP"]
SCOPE = "openid accounts payments"
CERT_HEADER = "X-SSL-Client-Cert"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/obdcr_bench"

#: the server column for the flask targets that are not flask-obdcr
SERVER_NAMES = {
    "noop": "Flask no-op POST (ceiling)",
    "floor": "Flask minimum DCR (floor)",
}

#: what each server does per registration, for the table
WORK = {
    "node-oidc-provider": "JSON metadata; in memory; no signature, no certificate",
    "flask-obdcr": "2 PS256 verifications + certificate chain and binding; durable store",
    "Flask no-op POST (ceiling)": "reads the body, answers 201: the web stack alone",
    "Flask minimum DCR (floor)": "1 PS256 verification (request), SQLite insert; no other check",
}


# ----------------------------------------------------------------------------- processes


class Processes:
    """The servers this run started; every one is stopped (by its own pid) on exit."""

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: Sequence[str], *, log: Path, **kw: Any) -> subprocess.Popen:
        handle = open(log, "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(  # noqa: S603
            list(argv), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw
        )
        process._log_handle = handle  # type: ignore[attr-defined]
        process._log_path = log  # type: ignore[attr-defined]
        self._running.append((name, process))
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 10.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        process._log_handle.close()  # type: ignore[attr-defined]
        self._running = [(n, p) for n, p in self._running if p is not process]

    def stop_all(self) -> None:
        for _, process in reversed(list(self._running)):
            self.stop(process)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(process: subprocess.Popen, lines: int = 30) -> str:
    path: Path = process._log_path  # type: ignore[attr-defined]
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(check, process: subprocess.Popen, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}:\n{log_tail(process)}")
        with contextlib.suppress(Exception):
            result = check()
            if result:
                return result
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start within {timeout:.0f} s:\n{log_tail(process)}")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
    for p in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def named_processes_cpu(name: str) -> float:
    """CPU seconds (user + system) used so far by the live processes called ``name`` (e.g.
    ``postgres``: the database server's backends work for the bank, not for "other load")."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if stat[stat.index("(") + 1 : stat.rindex(")")] == name:
                        fields = stat.rsplit(")", 1)[1].split()
                        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy_cpu() -> float:
    """CPU seconds every core has spent busy (not idle or waiting for I/O) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, threshold: float = 0.25, window: float = 3.0) -> float:
    """Wait (at most ``max_wait`` s) until the machine's CPU use over ``window`` is below
    ``threshold`` cores: other work on a 2-core machine skews a throughput run. Returns the
    last CPU use seen (in cores)."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_cpu()
        time.sleep(window)
        busy = (machine_busy_cpu() - before) / window
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                print(
                    f"  (machine still busy: {busy:.2f} cores in use by other work)",
                    file=sys.stderr,
                )
            return busy


def require_tools(*, node: bool = True, gunicorn: bool = True) -> None:
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk (apt-get install -y wrk)")
    if node and not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        missing.append(f"oidc-provider (cd {NODE_DIR.relative_to(ROOT)} && npm install)")
    if node and shutil.which("node") is None:
        missing.append("node")
    if gunicorn and not (VENV_BIN / "gunicorn").exists():
        missing.append("gunicorn (.venv/bin/pip install gunicorn)")
    if missing:
        raise SystemExit("missing: " + "; ".join(missing))


# ----------------------------------------------------------------------------- the Directory


@dataclass
class Onboarded:
    """A TPP's software as the sandbox Directory service issued it."""

    directory_url: str
    ca_file: str
    org_id: str
    software_id: str
    signing_kid: str
    signing_key_pem: str
    transport_pem: str
    ssa: str
    signing_jwk_public: dict[str, Any]

    @property
    def escaped_transport_pem(self) -> str:
        # nginx's $ssl_client_escaped_cert: the PEM, URL-escaped
        return quote(self.transport_pem, safe="")


def start_directory(procs: Processes, work: Path) -> tuple[str, str]:
    """The example sandbox Directory service (HTTPS, loopback); returns (url, CA bundle)."""
    url_file = work / "directory.url"
    process = procs.start(
        "directory",
        [
            PYTHON,
            "-m",
            "example_app.directory",
            "serve",
            "--state",
            str(work / "directory"),
            "--port",
            "0",
            "--url-file",
            str(url_file),
            "--exit-with-parent",
        ],
        log=work / "directory.log",
        cwd=ROOT,
    )
    url = wait_until(
        lambda: url_file.exists() and url_file.read_text().strip(), process, "the Directory"
    )
    return url, str(work / "directory" / "ca-bundle.pem")


def _csr(key, software_id: str, org_id: str) -> bytes:
    from flask_obdcr.testing.pki import ob_subject

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(ob_subject(software_id, org_id))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def onboard(directory_url: str, ca_file: str) -> Onboarded:
    """Onboard an organisation and a piece of software through the Directory's API: transport
    and signing certificates from CSRs (RSA 2048), and a software statement."""
    from jwcrypto import jwk

    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise win over verify=
    http.verify = ca_file

    def call(method: str, path: str, **kw: Any) -> requests.Response:
        response = http.request(method, directory_url + path, timeout=30, **kw)
        if response.status_code >= 300:
            raise SystemExit(f"Directory {method} {path}: {response.status_code} {response.text}")
        return response

    org = call("POST", "/api/organisations", json={"org_name": "Bench TPP Ltd"}).json()
    software = call(
        "POST",
        f"/api/organisations/{org['org_id']}/software",
        json={"client_name": "Bench TPP App", "roles": ROLES, "redirect_uris": REDIRECT_URIS},
    ).json()
    software_id = software["software_id"]
    transport_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    base = f"/api/software/{software_id}/certificates"
    transport = call(
        "POST", f"{base}/transport", data=_csr(transport_key, software_id, org["org_id"])
    ).json()
    signing = call(
        "POST", f"{base}/signing", data=_csr(signing_key, software_id, org["org_id"])
    ).json()
    transport_pem = call("GET", f"{base}/{transport['kid']}.pem").text
    ssa = call("POST", f"/api/software/{software_id}/ssa").text.strip()
    signing_pem = signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = json.loads(jwk.JWK.from_pem(signing_pem.encode()).export_public())
    public.update(kid=signing["kid"], use="sig", alg="PS256")
    return Onboarded(
        directory_url=directory_url,
        ca_file=ca_file,
        org_id=org["org_id"],
        software_id=software_id,
        signing_kid=signing["kid"],
        signing_key_pem=signing_pem,
        transport_pem=transport_pem,
        ssa=ssa,
        signing_jwk_public=public,
    )


# ----------------------------------------------------------------------------- signing


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_SIGNER: dict[str, Any] = {}


def _init_signer(key_pem: str, kid: str) -> None:
    _SIGNER["key"] = serialization.load_pem_private_key(key_pem.encode(), password=None)
    _SIGNER["header"] = b64url(_compact({"alg": "PS256", "typ": "JWT", "kid": kid}))


def sign_ps256(claims: dict[str, Any]) -> str:
    """A compact JWS, PS256 (RSASSA-PSS, SHA-256, salt = hash length), as jwcrypto makes it."""
    signing_input = f"{_SIGNER['header']}.{b64url(_compact(claims))}"
    signature = _SIGNER["key"].sign(
        signing_input.encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )
    return f"{signing_input}.{b64url(signature)}"


def registration_claims(tpp: Onboarded, *, aud: str, now: int, lifetime: int) -> dict[str, Any]:
    """The registration request the sandbox TPP sends (``SandboxDirectory.registration_claims``)."""
    return {
        "iss": tpp.software_id,
        "iat": now,
        "exp": now + lifetime,
        "aud": aud,
        "jti": str(uuid.uuid4()),
        "redirect_uris": REDIRECT_URIS,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "PS256",
        "grant_types": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types": ["code id_token"],
        "software_id": tpp.software_id,
        "scope": SCOPE,
        "software_statement": tpp.ssa,
        "application_type": "web",
        "id_token_signed_response_alg": "PS256",
        "request_object_signing_alg": "PS256",
    }


def _sign_registration_chunk(args: tuple[Onboarded, str, int, int, int]) -> list[str]:
    tpp, aud, count, now, lifetime = args
    return [
        sign_ps256(registration_claims(tpp, aud=aud, now=now, lifetime=lifetime))
        for _ in range(count)
    ]


def parallel_sign(job, tpp: Onboarded, chunks: list[tuple]) -> Iterator[list[str]]:
    """Run ``job`` over ``chunks`` on every core (signing is CPU-bound)."""
    with multiprocessing.get_context("fork").Pool(
        os.cpu_count() or 1,
        initializer=_init_signer,
        initargs=(tpp.signing_key_pem, tpp.signing_kid),
    ) as pool:
        yield from pool.imap(job, chunks)


def write_registration_requests(tpp: Onboarded, path: Path, count: int, lifetime: int) -> None:
    """``count`` distinct signed registration requests, one compact JWS per line."""
    now = int(time.time())
    chunk = 500
    chunks = [
        (tpp, ISSUER, min(chunk, count - start), now, lifetime) for start in range(0, count, chunk)
    ]
    with open(path, "w") as handle:
        for lines in parallel_sign(_sign_registration_chunk, tpp, chunks):
            handle.write("\n".join(lines) + "\n")


def node_registration_metadata(tpp: Onboarded, n: int) -> dict[str, Any]:
    """What node-oidc-provider is sent: the same client metadata, keys inline, no SSA."""
    return {
        "client_name": f"Bench TPP App {n}",
        "redirect_uris": REDIRECT_URIS,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "PS256",
        "grant_types": ["authorization_code", "client_credentials", "refresh_token", "implicit"],
        "response_types": ["code id_token"],
        "scope": SCOPE,
        "application_type": "web",
        "id_token_signed_response_alg": "PS256",
        "request_object_signing_alg": "PS256",
        "jwks": {"keys": [tpp.signing_jwk_public]},
    }


def write_node_requests(tpp: Onboarded, path: Path, count: int) -> None:
    with open(path, "w") as handle:
        for n in range(count):
            handle.write(json.dumps(node_registration_metadata(tpp, n), separators=(",", ":")))
            handle.write("\n")


# ----------------------------------------------------------------------------- servers


@dataclass
class GunicornOptions:
    workers: int = 2
    worker_class: str = "sync"
    threads: int = 1

    def argv(self) -> list[str]:
        argv = ["--workers", str(self.workers), "--worker-class", self.worker_class]
        if self.worker_class == "gthread":
            argv += ["--threads", str(self.threads)]
        return argv

    @classmethod
    def parse(cls, spec: str) -> GunicornOptions:
        """``"2"`` or ``"sync:2"``: 2 sync workers; ``"gthread:2x4"``: 2 workers x 4 threads."""
        kind, _, size = spec.rpartition(":")
        kind = kind or "sync"
        if kind == "gthread":
            workers, _, threads = size.partition("x")
            return cls(int(workers), "gthread", int(threads or 1))
        return cls(int(size), kind, 1)

    def describe(self) -> str:
        if self.worker_class == "gthread":
            return f"gunicorn {self.workers}x{self.threads} gthread"
        return f"gunicorn {self.workers} {self.worker_class}"


def pg_prepare(pg_url: str) -> None:
    """Create the benchmark database if missing; drop the obdcr tables in it."""
    import sqlalchemy as sa

    url = sa.make_url(pg_url)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}
        ).first()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS obdcr_clients, obdcr_access_tokens"))
    engine.dispose()


def bank_config(tpp: Onboarded, store: str, pg_url: str, redis_url: str | None) -> dict[str, Any]:
    from example_app.bank import sandbox_config

    config = sandbox_config(issuer=ISSUER, directory_url=tpp.directory_url, ca_file=tpp.ca_file)
    config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": 3600}
    if store == "postgres":
        config["OBDCR_DATABASE_URL"] = pg_url
    if redis_url:
        config["OBDCR_REDIS_URL"] = redis_url
        config["OBDCR_REDIS_PREFIX"] = f"obdcr-bench-{uuid.uuid4().hex[:8]}:"
    return config


def start_bank(
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    *,
    store: str,
    gunicorn: GunicornOptions,
    pg_url: str,
    redis_url: str | None = None,
) -> tuple[subprocess.Popen, str]:
    """AnyBank under gunicorn, plain HTTP on loopback behind an (imagined) nginx: the client
    certificate arrives in X-SSL-Client-Cert, trusted from 127.0.0.1 only. A fresh instance
    folder (SQLite) or fresh tables (PostgreSQL) every time."""
    instance = Path(tempfile.mkdtemp(prefix=f"bank-{store}-", dir=work))
    if store == "postgres":
        pg_prepare(pg_url)
    (instance / "anybank.json").write_text(
        json.dumps(config := bank_config(tpp, store, pg_url, redis_url), indent=2)
    )
    port = free_port()
    app = (
        f'example_app.wsgi:behind_nginx(header="{CERT_HEADER}",'
        f' trusted_proxies=["127.0.0.1"], instance_path="{instance}")'
    )
    if store == "noop":
        app = "http_registration:noop_app()"
    if store == "floor":
        (instance / "software-key.json").write_text(json.dumps(tpp.signing_jwk_public))
        app = f'http_registration:floor_app(instance_path="{instance}")'
    process = procs.start(
        f"bank-{store}",
        [
            str(VENV_BIN / "gunicorn"),
            "--pythonpath",
            str(BENCH),
            app,
            "--bind",
            f"127.0.0.1:{port}",
            *gunicorn.argv(),
            "--log-level",
            "warning",
            "--graceful-timeout",
            "3",
        ],
        log=instance / "gunicorn.log",
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    if redis_url:
        # stop_bank deletes this run's keys (they would otherwise expire with the jti's exp)
        process._redis = (redis_url, config["OBDCR_REDIS_PREFIX"])  # type: ignore[attr-defined]
    wait_until(lambda: requests.get(url + "/", timeout=2).ok, process, "gunicorn")
    return process, url


def stop_bank(procs: Processes, process: subprocess.Popen) -> None:
    """Stop gunicorn; delete the Redis keys it made (its own prefix), if it used Redis."""
    procs.stop(process)
    redis_url, prefix = getattr(process, "_redis", (None, None))
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()


def noop_app():
    """The stack without the work: gunicorn + Flask (+ the same ProxyFix) and a ``POST
    /register`` that reads the body and answers 201 with a small JSON document. What it
    reaches is the ceiling for any Flask endpoint on this machine."""
    from flask import Flask, request
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = Flask("noop")

    @app.get("/")
    def index():
        return {"service": "no-op"}

    @app.post("/register")
    def register():
        request.get_data()
        return {"client_id": str(uuid.uuid4())}, 201

    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=0, x_proto=1, x_host=1, x_port=1)
    return app


def floor_app(instance_path: str):
    """The least any Flask DCR server must do per registration, and nothing more: the same
    gunicorn, Flask and ProxyFix as the bank; ``POST /register`` splits the request JWT,
    verifies its PS256 signature with the software's key (loaded once: no JWKS lookup, no
    SSA, no certificate, no claim checked), inserts the decoded claims into SQLite (WAL, as
    ``SQLiteStore``) and answers 201 with them. The request signature is the one
    public-key operation no cache can skip (every request JWT is new), and the insert the
    one write no durable store can skip; a conforming server does all of this and more."""
    import sqlite3
    import threading

    from cryptography.hazmat.primitives.asymmetric import padding as pad
    from flask import Flask, Response, request
    from jwcrypto import jwk as jwcrypto_jwk
    from werkzeug.middleware.proxy_fix import ProxyFix

    folder = Path(instance_path)
    public = jwcrypto_jwk.JWK(**json.loads((folder / "software-key.json").read_text()))
    key = public.get_op_key("verify")
    pss = pad.PSS(mgf=pad.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
    local = threading.local()

    def db() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = sqlite3.connect(folder / "floor.db", isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS clients (client_id TEXT PRIMARY KEY, body TEXT)"
            )
            local.conn, local.pid = conn, os.getpid()
        return conn

    app = Flask("floor")

    @app.get("/")
    def index():
        return {"service": "floor"}

    @app.post("/register")
    def register():
        token = request.get_data().decode("ascii")
        signing_input, _, signature = token.rpartition(".")
        key.verify(
            base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
            signing_input.encode("ascii"),
            pss,
            hashes.SHA256(),
        )
        payload = signing_input.partition(".")[2]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["client_id"] = client_id = str(uuid.uuid4())
        body = json.dumps(claims)
        db().execute("INSERT INTO clients VALUES (?, ?)", (client_id, body))
        return Response(body, status=201, mimetype="application/json")

    # Flask's documented way to add WSGI middleware replaces the wsgi_app method
    app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
        app.wsgi_app, x_for=0, x_proto=1, x_host=1, x_port=1
    )
    return app


def start_node(procs: Processes, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    ready = work / f"node-{port}.url"
    process = procs.start(
        "oidc-provider",
        [
            "node",
            str(NODE_DIR / "server.mjs"),
            "--port",
            str(port),
            "--ready-file",
            str(ready),
            "--max-seconds",
            "3600",
        ],
        log=work / "oidc-provider.log",
        cwd=NODE_DIR,
        env={**os.environ, "NODE_ENV": "production"},
    )
    url = wait_until(lambda: ready.exists() and ready.read_text().strip(), process, "node")
    return process, url


# ----------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    good: int
    bad: int
    wrapped: int
    socket_errors: int
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    bad_statuses: dict[str, int]
    server_cpu_s: float = 0.0
    #: CPU of the database server's processes during the run (PostgreSQL), not in server_cpu_s
    database_cpu_s: float = 0.0
    wrk_cpu_s: float = 0.0
    #: CPU (cores, averaged over the run) used by everything else on the machine
    other_cpu_cores: float = 0.0

    @property
    def good_rps(self) -> float:
        return self.good / self.duration_s if self.duration_s else 0.0

    @property
    def server_cpu_us_per_request(self) -> float:
        return 1e6 * self.server_cpu_s / self.good if self.good else float("nan")

    @property
    def database_cpu_us_per_request(self) -> float:
        return 1e6 * self.database_cpu_s / self.good if self.good else float("nan")

    def cpu_text(self) -> str:
        """Server CPU per request, with the database's share when there is one."""
        text = f"{self.server_cpu_us_per_request:,.0f}"
        if self.database_cpu_s > 0:
            text += f" + {self.database_cpu_us_per_request:,.0f} db"
        return text


@dataclass
class Load:
    """One wrk run: which lines of which file go to which endpoint."""

    url: str
    path: str
    body_file: Path
    start: int
    count: int
    content_type: str
    expect: int
    header_name: str | None = None
    header_file: Path | None = None


def wrk_threads(connections: int) -> int:
    return min(connections, 2)


def run_wrk(
    load: Load,
    *,
    connections: int,
    duration: float,
    server_pid: int | None = None,
    database_process: str | None = None,
) -> WrkResult:
    threads = wrk_threads(connections)
    env = {
        **os.environ,
        "BENCH_FILE": str(load.body_file),
        "BENCH_START": str(load.start),
        "BENCH_COUNT": str(load.count),
        "BENCH_THREADS": str(threads),
        "BENCH_PATH": load.path,
        "BENCH_CONTENT_TYPE": load.content_type,
        "BENCH_EXPECT": str(load.expect),
    }
    if load.header_name and load.header_file:
        env["BENCH_HEADER_NAME"] = load.header_name
        env["BENCH_HEADER_FILE"] = str(load.header_file)
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        load.url + load.path,
    ]
    cpu_before = process_tree_cpu(server_pid) if server_pid else 0.0
    db_before = named_processes_cpu(database_process) if database_process else 0.0
    machine_before = machine_busy_cpu()
    started = time.monotonic()
    process = subprocess.Popen(  # noqa: S603
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    cpu_after = process_tree_cpu(server_pid) if server_pid else 0.0
    db_cpu = named_processes_cpu(database_process) - db_before if database_process else 0.0
    machine = machine_busy_cpu() - machine_before
    elapsed = time.monotonic() - started
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({process.returncode}):\n{stdout}\n{stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    duration_s = data["duration_us"] / 1e6
    lat = data["latency_us"]
    if stderr.strip():
        print("  wrk: " + stderr.strip().replace("\n", "\n  wrk: "), file=sys.stderr)
    return WrkResult(
        requests=data["requests"],
        duration_s=duration_s,
        rps=data["requests"] / duration_s,
        good=data["good"],
        bad=data["bad"],
        wrapped=data["wrapped"],
        socket_errors=data["socket_errors"],
        timeouts=data["timeouts"],
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        mean_ms=lat["mean"] / 1000,
        bad_statuses=data["bad_statuses"],
        server_cpu_s=cpu_after - cpu_before,
        database_cpu_s=db_cpu,
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
        other_cpu_cores=max(
            0.0,
            (machine - (cpu_after - cpu_before) - db_cpu - usage.ru_utime - usage.ru_stime)
            / elapsed,
        )
        if server_pid
        else 0.0,
    )


# ----------------------------------------------------------------------------- the runs


@dataclass
class Cell:
    server: str  # node-oidc-provider | flask-obdcr
    store: str  # memory | sqlite | postgres
    setup: str
    connections: int
    repeat: int
    result: WrkResult

    @property
    def label(self) -> str:
        if self.server == "flask-obdcr":
            return f"{self.server} ({self.store})"
        return self.server


@dataclass
class Plan:
    duration: float
    warmup: float
    connections: list[int]
    repeat: int
    targets: list[str]
    gunicorn: GunicornOptions
    pg_url: str
    redis_url: str | None
    requests: int
    warmup_requests: int
    lifetime: int
    node_requests: int = 80000
    quiet_wait: float = 120.0
    max_other_load: float = 0.3
    retries: int = 3
    cells: list[Cell] = field(default_factory=list)


def smoke_test(url: str, path: str, body: str, content_type: str, headers: dict, expect: int):
    response = requests.post(
        url + path, data=body, headers={"Content-Type": content_type, **headers}, timeout=30
    )
    if response.status_code != expect:
        raise SystemExit(
            f"smoke test {url}{path}: {response.status_code} (expected {expect}): {response.text}"
        )
    return response


def start_target(
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    target: str,
    *,
    gunicorn: GunicornOptions,
    pg_url: str,
    redis_url: str | None,
) -> tuple[subprocess.Popen, str, str, str]:
    """Start one server under test: ``(process, url, store, setup)`` for the table."""
    if target == "node-oidc-provider":
        process, url = start_node(procs, work)
        return process, url, "memory", f"node {platform_node_version()}, 1 process"
    store = target.removeprefix("flask-")
    process, url = start_bank(
        procs, work, tpp, store=store, gunicorn=gunicorn, pg_url=pg_url, redis_url=redis_url
    )
    return process, url, store, gunicorn.describe() + (", Redis caches" if redis_url else "")


def run_target(
    plan: Plan,
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    target: str,
    files: dict[str, Path],
    connections: int,
    repeat: int,
    gunicorn: GunicornOptions | None = None,
) -> Cell:
    """One cell: a fresh server, a warm-up run, a measured run, the server stopped."""
    header_file = work / "client-cert.header"
    process, url, store, setup = start_target(
        procs,
        work,
        tpp,
        target,
        gunicorn=gunicorn or plan.gunicorn,
        pg_url=plan.pg_url,
        redis_url=plan.redis_url,
    )
    if target == "node-oidc-provider":
        path, content_type, expect = "/reg", "application/json", 201
        body_file, header = files["node"], {}
        load_header: tuple[str, Path] | tuple[None, None] = (None, None)
    else:
        path, content_type, expect = "/register", "application/jwt", 201
        body_file = files["flask"]
        header = {CERT_HEADER: tpp.escaped_transport_pem}
        load_header = (CERT_HEADER, header_file)
    try:
        with open(body_file) as handle:
            first = handle.readline().strip()
        smoke_test(url, path, first, content_type, header, expect)
        if target == "node-oidc-provider":
            lines, warm_lines = plan.node_requests, plan.node_requests // 4
        else:
            lines, warm_lines = plan.requests, plan.warmup_requests
        warm = Load(url, path, body_file, 1, warm_lines, content_type, expect, *load_header)
        measured = Load(
            url,
            path,
            body_file,
            1 + warm_lines,
            lines - 1 - warm_lines,
            content_type,
            expect,
            *load_header,
        )
        if plan.quiet_wait > 0:
            wait_for_quiet(plan.quiet_wait)
        if plan.warmup > 0:
            run_wrk(warm, connections=connections, duration=plan.warmup)
        result = run_wrk(
            measured,
            connections=connections,
            duration=plan.duration,
            server_pid=process.pid,
            database_process="postgres" if store == "postgres" else None,
        )
    finally:
        stop_bank(procs, process)
    cell = Cell(
        target if target.startswith("node") else SERVER_NAMES.get(store, "flask-obdcr"),
        store,
        setup,
        connections,
        repeat,
        result,
    )
    flag = ""
    if result.wrapped and target in ("flask-sqlite", "flask-postgres"):
        flag = " (ran out of pre-signed requests: raise --requests)"
    print(
        f"  {cell.label:32} c={connections:<2} {result.good_rps:8.0f} req/s"
        f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
        f"  server CPU {result.cpu_text()} us/req"
        f"  non-{expect}: {result.bad}  other load {result.other_cpu_cores:.2f} cores{flag}",
        file=sys.stderr,
    )
    return cell


class RetryPolicy(Protocol):
    """What :func:`run_undisturbed` reads of a plan (a :class:`Plan` or an argparse namespace)."""

    @property
    def max_other_load(self) -> float: ...

    @property
    def retries(self) -> int: ...


def run_undisturbed(plan: RetryPolicy, run) -> Cell:
    """Run a cell; while other work on the machine took more than ``plan.max_other_load``
    cores during it, run it again (at most ``plan.retries`` more times; the last run counts)."""
    cell = run()
    for _ in range(plan.retries):
        if cell.result.other_cpu_cores <= plan.max_other_load:
            break
        print(
            f"  (disturbed: {cell.result.other_cpu_cores:.2f} cores of other work; again)",
            file=sys.stderr,
        )
        cell = run()
    return cell


def git_version() -> str:
    """The commit measured (``git describe --always --dirty``), for the JSON record."""
    try:
        return subprocess.run(  # noqa: S603
            ["git", "describe", "--always", "--dirty"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


_NODE_VERSION: str | None = None


def platform_node_version() -> str:
    global _NODE_VERSION
    if _NODE_VERSION is None:
        try:
            _NODE_VERSION = subprocess.run(  # noqa: S603
                ["node", "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            _NODE_VERSION = "?"
    return _NODE_VERSION


def best_cells(cells: list[Cell]) -> list[Cell]:
    """One cell per (label, setup, connections): the repeat with the highest throughput (other
    work on the machine, or on the host of this virtual machine, only ever slows a run down)."""
    groups: dict[tuple[str, str, int], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.label, cell.setup, cell.connections)].append(cell)
    return [max(group, key=lambda c: c.result.good_rps) for group in groups.values()]


def paired_ratios(cells: list[Cell], baseline: str) -> dict[tuple[str, str, int], list[float]]:
    """Throughput / the baseline's in the same repeat and at the same concurrency: the ratios
    of runs made minutes apart, side by side, which host-level noise moves far less than the
    absolute figures."""
    base = {
        (c.repeat, c.connections): c.result.good_rps
        for c in cells
        if c.label == baseline and c.result.good_rps
    }
    ratios: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for c in cells:
        if (c.repeat, c.connections) in base:
            ratios[(c.label, c.setup, c.connections)].append(
                c.result.good_rps / base[(c.repeat, c.connections)]
            )
    return ratios


def _ratio_text(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}x"


def table(
    cells: list[Cell],
    *,
    baseline: str = "node-oidc-provider",
    work: dict[str, str] = WORK,
    noun: str = "registration",
) -> str:
    ratios = paired_ratios(cells, baseline)
    best = best_cells(cells)
    lines = [
        "| server | store | setup | conns | req/s | p50 ms | p99 ms | server CPU µs/req"
        f" | vs {baseline} (per repeat) | other load | work per {noun} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = {
        "node-oidc-provider": 0,
        "flask-obdcr (sqlite)": 1,
        "flask-obdcr (postgres)": 2,
        "Flask no-op POST (ceiling)": 3,
    }
    for cell in sorted(best, key=lambda c: (c.connections, order.get(c.label, 9), c.label)):
        r = cell.result
        lines.append(
            f"| {cell.server} | {cell.store} | {cell.setup} | {cell.connections} |"
            f" {r.good_rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
            f" {r.cpu_text()} |"
            f" {_ratio_text(ratios.get((cell.label, cell.setup, cell.connections), []))} |"
            f" {r.other_cpu_cores:.2f} |"
            f" {work.get(cell.server, '')} |"
        )
    return "\n".join(lines)


def chart(cells: list[Cell], path: Path, title: str, *, baseline: str = "node-oidc-provider"):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no chart; pip install matplotlib)", file=sys.stderr)
        return
    cells = best_cells(cells)
    setups: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        setups[c.label].add(c.setup)

    def name(c: Cell) -> str:
        return f"{c.label}, {c.setup}" if len(setups[c.label]) > 1 else c.label

    baseline_cells = {c.connections: c.result.good_rps for c in cells if c.label == baseline}
    labels = sorted({name(c) for c in cells}, key=lambda s: (not s.startswith("node"), s))
    conns = sorted({c.connections for c in cells})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        xs, rps, p50, p99 = [], [], [], []
        for j, conn in enumerate(conns):
            match = [c for c in cells if name(c) == label and c.connections == conn]
            if match:
                xs.append(j + (i - (len(labels) - 1) / 2) * width)
                rps.append(match[0].result.good_rps)
                p50.append(match[0].result.p50_ms)
                p99.append(match[0].result.p99_ms)
        bars = ax1.bar(xs, rps, width, label=label)
        base = baseline_cells
        for bar, x in zip(bars, xs, strict=True):
            conn = conns[round(x)]
            if base.get(conn) and label != baseline:
                ax1.annotate(
                    f"{bar.get_height() / base[conn]:.2f}x",
                    (bar.get_x() + width / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        color = bars.patches[0].get_facecolor() if bars.patches else None
        ax2.bar(xs, p99, width, label=f"{label} p99", alpha=0.35, color=color)
        ax2.bar(xs, p50, width * 0.5, label=f"{label} p50", color=color)
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(conns)), [f"{c} connection{'s' if c > 1 else ''}" for c in conns])
    ax1.set_ylabel("requests / s (successful)")
    ax1.set_title(title)
    ax1.legend(fontsize=8)
    ax2.set_ylabel("latency, ms")
    ax2.set_yscale("log")
    ax2.set_title("latency p50 (narrow) and p99 (wide)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path.relative_to(ROOT)}", file=sys.stderr)


# ----------------------------------------------------------------------------- profile


#: buckets for the profile summary (regular expressions on py-spy frames, "function (file:line)");
#: the leaf-most frame matching one decides, the first matching bucket in this order. Native
#: code (OpenSSL, the Rust X.509 verifier) shows as self time of the Python frame calling it.
PROFILE_BUCKETS: list[tuple[str, str]] = [
    (
        "public-key crypto: 2 PS256 verifications, X.509 chain checks (native)",
        r"^(TransportCertificateVerifier\.verify|_RawRSA\.verify|_RawEC\.verify) "
        r"|[(/]cryptography/",
    ),
    (
        "client certificate from the header (URL-unescape, PEM parse)",
        r"^(_parse_escaped_pem|load_certificate|client_certificate_from_environ|_peer_is_trusted)"
        r" |[(/]ipaddress\.py|[(/]urllib/parse\.py",
    ),
    ("certificate binding, DN, thumbprints", r"[(/]flask_obdcr/certificates/"),
    ("JSON encode/decode", r"[(/]json/"),
    ("JOSE parsing (jwcrypto objects, base64)", r"[(/](jwcrypto/|base64\.py|flask_obdcr/jose\.py)"),
    (
        "store (SQLite / PostgreSQL: clients, tokens)",
        r"[(/](sqlite3/|sqlite_utils/|flask_obdcr/storage/|flask_obdcr/tokens\.py|psycopg/"
        r"|sqlalchemy/)",
    ),
    (
        "gunicorn sync worker: response write, graceful close (waits on the client)",
        r"^(write|close_graceful) \(gunicorn/util\.py|^socket\._real_close ",
    ),
    ("gunicorn: accept, HTTP parsing, WSGI environ", r"[(/]gunicorn/|^socket\.accept "),
    ("Flask / Werkzeug request & response", r"[(/](flask|werkzeug|blinker)/"),
    (
        "flask-obdcr, Authlib and the example bank (Python: policies, grant, views)",
        r"[(/](flask_obdcr|example_app|authlib)/",
    ),
]
_BUCKET_RES = [(name, re.compile(pattern)) for name, pattern in PROFILE_BUCKETS]


def summarize_profile(raw: Path, top: int = 30) -> str:
    """Where the samples are: by bucket (leaf-most matching frame), then by function,
    inclusive (a function anywhere in the stack) and self (the leaf)."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        stacks.append((frames, int(count)))
    total = sum(n for _, n in stacks) or 1
    buckets: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for frames, n in stacks:
        # py-spy frames: "function (path/to/file.py:line)"; drop the process/thread frame
        names = [f for f in frames if "(" in f and not f.startswith("process ")]
        for name in set(_short(f) for f in names):
            inclusive[name] += n
        if names:
            leaf[_short(names[-1])] += n
        bucket = "other (interpreter, logging, uuid, ...)"
        for frame in reversed(names):
            hit = next((b for b, regex in _BUCKET_RES if regex.search(frame)), None)
            if hit:
                bucket = hit
                break
        buckets[bucket] += n
    out = [f"samples: {total}", "", "| where (leaf-most matching frame) | share |", "|---|---:|"]
    out += [f"| {b} | {100 * n / total:.1f}% |" for b, n in buckets.most_common()]
    # the frames every sample has (gunicorn's arbiter, the worker loop) say nothing
    inner = [(name, n) for name, n in inclusive.most_common() if n < 0.9 * total]
    out += ["", f"top {top} functions, inclusive (anywhere in the stack; below 90%):", ""]
    out += [f"{100 * n / total:6.1f}%  {name}" for name, n in inner[:top]]
    out += ["", f"top {top} functions, self (leaf):", ""]
    out += [f"{100 * n / total:6.1f}%  {name}" for name, n in leaf.most_common(top)]
    return "\n".join(out)


def _short(frame: str) -> str:
    # "register (flask_obdcr/views.py:58)" -> "register (flask_obdcr/views.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def profiled_run(
    pid: int,
    measured: Load,
    *,
    connections: int,
    duration: float,
    output: Path,
    fmt: str,
    gil: bool,
) -> WrkResult:
    """wrk drives ``measured`` while ``py-spy record`` samples the server ``pid`` and its
    children (``fmt``: ``raw`` collapsed stacks or ``flamegraph`` SVG, written to ``output``)."""
    pyspy = VENV_BIN / "py-spy"
    if not pyspy.exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(  # noqa: S603
        [
            str(pyspy),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--rate",
            "200",
            "--duration",
            f"{duration:g}",
            "--format",
            fmt,
            "--output",
            str(output),
            "--nonblocking",
            # threads waiting for the GIL or for work would otherwise count as busy
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        result = run_wrk(measured, connections=connections, duration=duration - 2, server_pid=pid)
        out, _ = spy.communicate(timeout=duration + 60)
    except BaseException:
        spy.kill()
        spy.wait()
        raise
    if spy.returncode != 0:
        raise SystemExit(f"py-spy failed: {out}")
    print(
        f"profile ({fmt}): {output.relative_to(ROOT)}  [{result.good_rps:.0f} req/s under py-spy]",
        file=sys.stderr,
    )
    return result


def profile(
    plan: Plan,
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    files: dict[str, Path],
    store: str = "sqlite",
    connections: int = 8,
) -> None:
    """py-spy on the gunicorn workers while wrk drives registrations at ``connections``."""
    header_file = work / "client-cert.header"
    stem = f"profile-registration-{store}" + ("-redis" if plan.redis_url else "")
    for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
        process, url = start_bank(
            procs,
            work,
            tpp,
            store=store,
            gunicorn=plan.gunicorn,
            pg_url=plan.pg_url,
            redis_url=plan.redis_url,
        )
        try:
            jwt = "application/jwt"
            warm = Load(
                url, "/register", files["flask"], 1, plan.warmup_requests, jwt, 201,
                CERT_HEADER, header_file,
            )  # fmt: skip
            run_wrk(warm, connections=connections, duration=plan.warmup)
            measured = Load(
                url, "/register", files["flask"], 1 + plan.warmup_requests,
                plan.requests - 1 - plan.warmup_requests, jwt, 201, CERT_HEADER, header_file,
            )  # fmt: skip
            profiled_run(
                process.pid,
                measured,
                connections=connections,
                duration=plan.duration,
                output=OUT_DIR / f"{stem}.{suffix}",
                fmt=fmt,
                gil=plan.gunicorn.worker_class == "gthread",
            )
        finally:
            stop_bank(procs, process)
    write_profile_summary(OUT_DIR / f"{stem}.txt")


def write_profile_summary(raw: Path) -> None:
    summary = summarize_profile(raw)
    raw.with_name(raw.stem + "-summary.md").write_text(summary + "\n")
    print(summary)


# ----------------------------------------------------------------------------- main


def prepare(procs: Processes, work: Path, plan: Plan, *, node: bool) -> tuple[Onboarded, dict]:
    directory_url, ca_file = start_directory(procs, work)
    tpp = onboard(directory_url, ca_file)
    (work / "client-cert.header").write_text(tpp.escaped_transport_pem)
    files: dict[str, Path] = {}
    t0 = time.perf_counter()
    files["flask"] = work / "registration-requests.jwt"
    write_registration_requests(tpp, files["flask"], plan.requests, plan.lifetime)
    print(
        f"signed {plan.requests:,} registration requests (PS256) in"
        f" {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    if node:
        files["node"] = work / "registration-requests.json"
        write_node_requests(tpp, files["node"], plan.node_requests)
    return tpp, files


def add_run_arguments(parser: argparse.ArgumentParser, *, gunicorn: str) -> None:
    """The options every HTTP benchmark here takes: timing, repeats, servers, the quiet check."""
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per cell")
    parser.add_argument("--connections", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (the best is shown)")
    parser.add_argument(
        "--gunicorn",
        default=gunicorn,
        help="sync:N (N sync workers), gevent:N (N gevent workers) or gthread:NxT"
        f" (N workers x T threads); default {gunicorn}",
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument(
        "--redis-url",
        default=None,
        help="share the jti replay and JWKS caches through Redis (as a"
        " multi-worker deployment should), e.g. redis://127.0.0.1:6379/0",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each cell, wait up to this many seconds for the machine to"
        " be idle (other work skews a 2-core machine); 0: do not wait",
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.3,
        help="a cell during which other work used more CPU (cores) than this is run again",
    )
    parser.add_argument("--retries", type=int, default=3, help="at most this many re-runs")
    parser.add_argument("--profile-store", default="sqlite", choices=["sqlite", "postgres"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, gunicorn="sync:2,gevent:2")
    parser.add_argument(
        "--only",
        action="append",
        choices=[
            "node-oidc-provider",
            "flask-sqlite",
            "flask-postgres",
            "flask-noop",
            "flask-floor",
        ],
        help="run only these targets (repeatable); flask-noop: gunicorn + Flask with an empty"
        " POST handler, the ceiling of the web stack; flask-floor: the minimum any Flask DCR"
        " does (one PS256 verification, one SQLite insert, nothing checked) (neither is run"
        " by default)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=40000,
        help="pre-signed registration requests (each cell reuses them)",
    )
    parser.add_argument("--node-requests", type=int, default=80000)
    parser.add_argument("--warmup-requests", type=int, default=4000)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison: py-spy on flask-obdcr (SQLite, 8 conns)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument(
        "--tag", default="", help="suffix for the output files: http_registration-<tag>.json/png"
    )
    args = parser.parse_args(argv)

    targets = args.only or ["node-oidc-provider", "flask-sqlite", "flask-postgres"]
    plan = Plan(
        duration=args.duration,
        warmup=args.warmup,
        connections=[int(c) for c in args.connections.split(",")],
        repeat=args.repeat,
        targets=targets,
        gunicorn=GunicornOptions.parse(args.gunicorn.split(",")[0]),
        pg_url=args.pg_url,
        redis_url=args.redis_url,
        requests=args.requests,
        warmup_requests=args.warmup_requests,
        lifetime=3 * 3600,
        node_requests=args.node_requests,
        quiet_wait=args.quiet_wait,
        max_other_load=args.max_other_load,
        retries=args.retries,
    )
    node = "node-oidc-provider" in targets and not args.profile
    require_tools(node=node)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="obdcr-http-bench-"))
    try:
        with Processes() as procs:
            tpp, files = prepare(procs, work, plan, node=node)
            if args.profile:
                profile(plan, procs, work, tpp, files, store=args.profile_store)
                return 0
            settings: list[GunicornOptions | None] = [
                GunicornOptions.parse(spec) for spec in args.gunicorn.split(",")
            ]
            for repeat in range(plan.repeat):
                for connections in plan.connections:
                    for target in targets:
                        for gunicorn in settings if target.startswith("flask") else [None]:
                            plan.cells.append(
                                run_undisturbed(
                                    plan,
                                    lambda g=gunicorn, t=target, c=connections, r=repeat: (
                                        run_target(plan, procs, work, tpp, t, files, c, r, g)
                                    ),
                                )
                            )
    finally:
        if args.keep:
            print(f"working folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"Registrations over HTTP on loopback ({os.cpu_count()} cores, wrk, "
        f"{plan.duration:g} s per cell after {plan.warmup:g} s warm-up, best of"
        f" {plan.repeat}; the ratio column pairs each run with node-oidc-provider's run of the"
        " same repeat); successful registrations only (201)."
    )
    print()
    print(table(plan.cells))
    print()
    print(
        "flask-obdcr does strictly more work per registration than node-oidc-provider: it"
        " verifies the SSA (PS256, Directory key) and the request (PS256, software key),"
        " checks the transport certificate's chain and its binding to the SSA, and stores the"
        " client durably; node-oidc-provider checks JSON metadata and keeps the client in"
        " memory."
    )
    record = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "node": platform_node_version(),
            "platform": platform.platform(),
            "git": git_version(),
        },
        "plan": {k: v for k, v in asdict(plan).items() if k != "cells"},
        "cells": [
            {
                **{k: v for k, v in asdict(c).items() if k != "result"},
                "label": c.label,
                **asdict(c.result),
                "good_rps": c.result.good_rps,
                "server_cpu_us_per_request": c.result.server_cpu_us_per_request,
                "database_cpu_us_per_request": c.result.database_cpu_us_per_request,
            }
            for c in plan.cells
        ],
    }
    stem = "http_registration" + (f"-{args.tag}" if args.tag else "")
    (OUT_DIR / f"{stem}.json").write_text(json.dumps(record, indent=1))
    chart(
        plan.cells,
        OUT_DIR / f"{stem}.png",
        "Dynamic client registration over HTTP (loopback)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
