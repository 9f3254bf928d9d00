"""The servers under test: the example bank and the plain WSGI apps of
:mod:`benchmarks.harness.apps` under gunicorn or granian, and node-oidc-provider.

Every WSGI target is served on plain HTTP on loopback, behind an imagined TLS-terminating
proxy (wrk plays it): the client certificate arrives URL-escaped in ``X-SSL-Client-Cert``,
which the bank honours from 127.0.0.1 only. Neither server is asked to terminate TLS: gunicorn
could hand the bank the peer certificate (``example_app.wsgi:gunicorn_tls``), but granian
(2.x) verifies client certificates (``--ssl-ca``, ``--ssl-client-verify``) without passing
them to a WSGI app, so the proxy's header is the one way both servers get it alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .apps import API_CONFIG
from .common import CERT_HEADER, INSTANCE_ENV, ISSUER, NODE_DIR, ROOT, VENV_BIN
from .onboarding import Onboarded
from .processes import Processes, free_port, node_version, ready_text, wait_until

SERVERS = ("gunicorn", "granian")
#: the WSGI app factories, by target (``flask-sqlite`` and ``flask-postgres`` are the bank)
APPS = {
    "bank": "benchmarks.harness.apps:bank",
    "noop": "benchmarks.harness.apps:noop",
    "floor": "benchmarks.harness.apps:floor",
    "token-floor": "benchmarks.harness.apps:token_floor",
    "token-floor-memory": "benchmarks.harness.apps:token_floor_in_memory",
    "authlib-peer": "benchmarks.harness.apps:authlib_peer",
    "api": "benchmarks.harness.apps:protected_api",
}
#: the protected API of ``require_token_http`` (its store: ``--store``, SQLite by default)
API_TARGETS = ("api-sqlite", "api-postgres")


@dataclass(frozen=True)
class ServerOptions:
    """How a WSGI server runs: ``gunicorn`` with a worker class, workers and threads, or
    ``granian --interface wsgi`` with workers and blocking threads per worker."""

    kind: str = "gunicorn"
    workers: int = 2
    worker_class: str = "sync"
    threads: int = 1

    @classmethod
    def parse(cls, kind: str, spec: str) -> ServerOptions:
        """gunicorn: ``"2"`` or ``"sync:2"`` (2 sync workers), ``"gevent:2"``, ``"gthread:2x4"``
        (2 workers x 4 threads); granian: ``"2"`` or ``"2x1"`` (2 workers x 1 blocking
        thread)."""
        if kind not in SERVERS:
            raise ValueError(f"unknown server {kind!r}: one of {', '.join(SERVERS)}")
        if kind == "granian":
            workers, _, threads = spec.removeprefix("wsgi:").partition("x")
            return cls("granian", int(workers), "wsgi", int(threads or 1))
        worker_class, _, size = spec.rpartition(":")
        worker_class = worker_class or "sync"
        if worker_class == "gthread":
            workers, _, threads = size.partition("x")
            return cls("gunicorn", int(workers), "gthread", int(threads or 1))
        return cls("gunicorn", int(size), worker_class, 1)

    def describe(self) -> str:
        if self.kind == "granian":
            return f"granian {self.workers}x{self.threads}"
        if self.worker_class == "gthread":
            return f"gunicorn {self.workers}x{self.threads} gthread"
        return f"gunicorn {self.workers} {self.worker_class}"

    @property
    def multithreaded(self) -> bool:
        """Whether py-spy should sample only threads holding the GIL (idle ones would count)."""
        return self.worker_class == "gthread" or (self.kind == "granian" and self.threads > 1)

    def argv(self, factory: str, port: int) -> list[str]:
        """The command line serving the app that ``factory`` (``module:function``) makes."""
        if self.kind == "granian":
            return [
                str(VENV_BIN / "granian"),
                "--interface",
                "wsgi",
                "--factory",
                factory,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(self.workers),
                "--blocking-threads",
                str(self.threads),
                "--working-dir",
                str(ROOT),
                "--log-level",
                "warning",
            ]
        argv = [
            str(VENV_BIN / "gunicorn"),
            "--pythonpath",
            str(ROOT),
            f"{factory}()",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(self.workers),
            "--worker-class",
            self.worker_class,
            "--log-level",
            "warning",
            "--graceful-timeout",
            "3",
        ]
        if self.worker_class == "gthread":
            argv += ["--threads", str(self.threads)]
        return argv


def parse_servers(kind: str, specs: str) -> list[ServerOptions]:
    """``--gunicorn sync:2,gevent:2`` or ``--granian 2x1,2x2``: one setting per comma."""
    return [ServerOptions.parse(kind, spec) for spec in specs.split(",") if spec]


@dataclass
class Running:
    """A server under test: its process, URL, store and the setup column of the table."""

    process: subprocess.Popen
    url: str
    store: str
    setup: str
    #: Redis URL and key prefix this server wrote under (deleted when it stops)
    redis: tuple[str, str] | None = None


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
    """AnyBank's settings: the sandbox Directory trusted, tokens for an hour, the store."""
    from example_app.bank import sandbox_config

    config = sandbox_config(issuer=ISSUER, directory_url=tpp.directory_url, ca_file=tpp.ca_file)
    config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": 3600}
    # one client sends every client assertion of the load: tens of thousands of live jtis
    # within their lifetime, where the default quota (10,000 per client, far above what a real
    # TPP holds) answers 429; the benchmark measures the token endpoint, not the quota
    config["OBDCR_REPLAY_QUOTA_PER_SOFTWARE"] = 10**7
    if store == "postgres":
        config["OBDCR_DATABASE_URL"] = pg_url
    if redis_url:
        config["OBDCR_REDIS_URL"] = redis_url
        config["OBDCR_REDIS_PREFIX"] = f"obdcr-bench-{uuid.uuid4().hex[:8]}:"
    return config


def start_wsgi(
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    *,
    target: str,
    server: ServerOptions,
    pg_url: str = "",
    redis_url: str | None = None,
    config: dict[str, Any] | None = None,
) -> Running:
    """One WSGI target (``flask-sqlite``, ``flask-postgres``: the bank; ``flask-noop``,
    ``flask-floor``, ``authlib-peer``; ``api-sqlite``, ``api-postgres``: the protected API of
    :func:`~benchmarks.harness.apps.protected_api`) under ``server``, in a fresh instance
    folder (SQLite) or on fresh tables (PostgreSQL). ``config`` adds to the bank's settings."""
    store = target.removeprefix("flask-").removeprefix("api-")
    instance = Path(tempfile.mkdtemp(prefix=f"{target}-", dir=work))
    redis = None
    if target in API_TARGETS:
        if store == "postgres":
            pg_prepare(pg_url)
        settings = {
            **bank_config(tpp, store, pg_url, redis_url),
            "OBDCR_CLIENT_CERT_HEADER": CERT_HEADER,
            "OBDCR_TRUSTED_PROXIES": ["127.0.0.1"],
            **(config or {}),
        }
        (instance / API_CONFIG).write_text(json.dumps(settings, indent=2))
        if redis_url:
            redis = (redis_url, settings["OBDCR_REDIS_PREFIX"])
        factory = APPS["api"]
    elif store in ("sqlite", "postgres"):
        if store == "postgres":
            pg_prepare(pg_url)
        settings = {**bank_config(tpp, store, pg_url, redis_url), **(config or {})}
        (instance / "anybank.json").write_text(json.dumps(settings, indent=2))
        if redis_url:
            redis = (redis_url, settings["OBDCR_REDIS_PREFIX"])
        factory = APPS["bank"]
    elif store in ("floor", "token-floor", "token-floor-memory"):
        (instance / "software-key.json").write_text(json.dumps(tpp.signing_jwk_public))
        factory = APPS[store]
    elif target == "authlib-peer":
        (instance / "directory-jwks.json").write_text(json.dumps(tpp.directory_jwks()))
        factory, store = APPS["authlib-peer"], "sqlite"
    else:
        factory = APPS[store]
    port = free_port()
    log = instance / f"{server.kind}.log"
    process = procs.start(
        target,
        server.argv(factory, port),
        log=log,
        cwd=ROOT,
        env={**os.environ, INSTANCE_ENV: str(instance)},
    )
    url = f"http://127.0.0.1:{port}"
    running = Running(process, url, store, server.describe(), redis)
    try:
        wait_until(lambda: requests.get(url + "/", timeout=2).ok, process, target, log=log)
    except BaseException:
        stop(procs, running)
        raise
    if redis_url and redis:
        running.setup += ", Redis caches"
    return running


def start_node(procs: Processes, work: Path) -> Running:
    """node-oidc-provider (``benchmarks/oidc_provider/server.mjs``), one process, production."""
    port = free_port()
    ready = work / f"node-{port}.url"
    log = work / "oidc-provider.log"
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
        log=log,
        cwd=NODE_DIR,
        env={**os.environ, "NODE_ENV": "production"},
    )
    url = wait_until(lambda: ready_text(ready), process, "node", log=log)
    return Running(process, url, "memory", f"node {node_version()}, 1 process")


def start_target(
    procs: Processes,
    work: Path,
    tpp: Onboarded,
    target: str,
    *,
    server: ServerOptions,
    pg_url: str = "",
    redis_url: str | None = None,
) -> Running:
    """One server under test, by target name."""
    if target == "node-oidc-provider":
        return start_node(procs, work)
    return start_wsgi(
        procs, work, tpp, target=target, server=server, pg_url=pg_url, redis_url=redis_url
    )


def stop(procs: Processes, running: Running) -> None:
    """Stop the server; delete the Redis keys it made (its own prefix), if it used Redis."""
    procs.stop(running.process)
    if running.redis:
        import redis

        redis_url, prefix = running.redis
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()
