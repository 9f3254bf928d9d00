"""Concurrency and durability: the example bank under gunicorn, several workers, real HTTPS.

Everything runs on loopback. The sandbox Directory (HTTPS; SSA and software JWKS) is a
Werkzeug TLS server in a thread of this process; eight TPP software identities are onboarded
through its state (EC P-256 transport and signing certificates, one fresh SSA per request so
that every stored record can be traced back to the one request that made it, through the SSA's
``jti``). The bank is ``gunicorn 'example_app.wsgi:gunicorn_tls(instance_path=...)'`` in a
child process (its own session: the whole process group is signalled), with gunicorn
terminating TLS and asking for client certificates (``--cert-reqs 1``).

* burst: 8 client threads x ``PER_CLIENT`` registrations with distinct jtis, over SQLite
  (sync workers, per-worker replay cache; gthread workers with Redis) and PostgreSQL (gthread,
  Redis): every response is 201 (no 5xx, no "database is locked"), the client_ids are
  distinct, the store holds exactly those clients, each one complete and equal to what the 201
  said; the access log shows several workers answered; with Redis a replay is refused by
  every worker. The ``--preload`` variants build the app and use its stores in the master
  before fork (tests/concurrency_bank.py): workers must not reuse the master's connections.
* kill -9: the same burst, SIGKILL to the whole gunicorn process group once some 201s are in,
  restart on the same store: every acknowledged client is there, every stored record is whole
  and belongs to exactly one request sent, the restarted bank serves them.

PostgreSQL (``OBDCR_TEST_POSTGRES_URL``) and Redis (``OBDCR_TEST_REDIS_URL``) are used as in
test_storage_sql.py / test_redis.py: a schema / key prefix of each test's own, dropped after;
without a reachable server those variants are skipped (they fail in CI).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from jwcrypto import jwk

try:
    import gunicorn  # noqa: F401 - the `test` extra installs it
except ImportError:  # pragma: no cover
    if os.environ.get("CI"):
        raise
    pytest.skip("gunicorn is not installed (pip install -e '.[test]')", allow_module_level=True)
if not hasattr(os, "killpg"):  # pragma: no cover
    pytest.skip("needs POSIX process groups", allow_module_level=True)

from example_app.bank import sandbox_config  # noqa: E402
from example_app.directory import DirectoryState, create_directory_app  # noqa: E402
from example_app.serving import tls_context
from flask_obdcr.storage import SQLiteStore, StoredClient, hash_secret  # noqa: E402
from flask_obdcr.testing import sign_jwt  # noqa: E402
from flask_obdcr.testing.loopback import LoopbackServer  # noqa: E402
from flask_obdcr.testing.pki import generate_key, key_pem, ob_subject  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "OBDCR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("OBDCR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: the aud of every request; deliberately not the URL, so a restart may take another port
ISSUER = "https://anybank.concurrency.test"
REDIRECT_URI = "https://tpp.example.com/cb"
CLIENTS = 8
PER_CLIENT = 15
#: the kill test: registrations queued per client, and how many 201s before the SIGKILL
KILL_PER_CLIENT = 20
KILL_AFTER = 40
METHODS = ("private_key_jwt", "tls_client_auth", "client_secret_basic")
HTTP_TIMEOUT = (5, 30)  # connect, read
#: gunicorn's access log: status, worker pid, method, path
ACCESS_FORMAT = "access %(s)s pid=%(p)s %(m)s %(U)s"
START_TIMEOUT = 30.0
BURST_TIMEOUT = 60.0


# -- the sandbox Directory and eight TPPs ------------------------------------------------------


@dataclass
class Directory:
    state: DirectoryState
    url: str
    ca_bundle: str
    bank_cert: tuple[str, str]  # the bank's HTTPS certificate chain and key


@dataclass
class TPP:
    org_id: str
    software_id: str
    cert: tuple[str, str]  # requests' cert=: (transport.pem, transport.key)
    signing_key: jwk.JWK
    subject_dn: str


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    folder = tmp_path_factory.mktemp("directory")
    state = DirectoryState.open(folder / "state")
    hosts = ["127.0.0.1", "localhost"]
    server = LoopbackServer(
        None,
        ssl_context=tls_context(*state.issue_server_certificate(state.folder / "tls", hosts=hosts)),
        name="directory",
    )
    try:
        server.app = create_directory_app(state, base_url=server.url)
        server.start()
        bank_cert = state.issue_server_certificate(folder / "bank-tls", name="bank", hosts=hosts)
        yield Directory(state, server.url, str(state.ca_bundle), tuple(map(str, bank_cert)))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tpps(directory, tmp_path_factory) -> list[TPP]:
    """Eight organisations, one software each, onboarded as the Directory's API does it."""
    state = directory.state
    made = []
    for n in range(CLIENTS):
        org = state.add_organisation(f"Concurrent TPP {n} Ltd")
        software = state.add_software(
            org["org_id"],
            client_name=f"Concurrent TPP {n}",
            roles=["AISP"],
            redirect_uris=[REDIRECT_URI],
        )
        org_id, software_id = org["org_id"], software["software_id"]
        folder = tmp_path_factory.mktemp(f"tpp{n}")
        keys, records = {}, {}
        for cert_type in ("transport", "signing"):
            key = keys[cert_type] = generate_key("EC")
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(ob_subject(software_id, org_id))
                .sign(key, hashes.SHA256())
            )
            records[cert_type] = state.sign_csr(
                software_id, cert_type, csr.public_bytes(serialization.Encoding.PEM)
            )
        (folder / "transport.pem").write_text(records["transport"]["pem"])
        (folder / "transport.key").write_text(key_pem(keys["transport"]))
        signing = jwk.JWK.from_pem(key_pem(keys["signing"]).encode())
        made.append(
            TPP(
                org_id=org_id,
                software_id=software_id,
                cert=(str(folder / "transport.pem"), str(folder / "transport.key")),
                signing_key=jwk.JWK(
                    **{**signing.export_private(as_dict=True), "kid": records["signing"]["kid"]}
                ),
                subject_dn=records["transport"]["subject"],
            )
        )
    return made


# -- PostgreSQL and Redis, each test in its own namespace ------------------------------------


def _unavailable(what: str, url: str, exc: Exception) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} at {url} is required in CI: {exc}")
    pytest.skip(f"no {what} at {url}: {exc}")


@pytest.fixture
def postgres_url():
    """A URL whose connections live in a schema of this test's own (libpq ``options``
    search_path: the bank's OBDCR_DATABASE_URL alone selects it); dropped afterwards."""
    sa = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
    schema = f"obdcr_conc_{uuid.uuid4().hex[:12]}"
    try:
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except sa.exc.OperationalError as exc:
            _unavailable("PostgreSQL", POSTGRES_URL, exc)
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}', safe='')}"
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


@pytest.fixture
def redis_prefix():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        _unavailable("Redis", REDIS_URL, exc)
    prefix = f"obdcr-conc:{uuid.uuid4().hex}:"
    try:
        yield prefix
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- gunicorn --------------------------------------------------------------------------------


def _gunicorn_accepts(setting: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == setting for s in KNOWN_SETTINGS)


class Gunicorn:
    """``gunicorn 'example_app.wsgi:gunicorn_tls(...)'`` on a free loopback port, in a session
    of its own; ``stop()`` (SIGTERM, then SIGKILL) and ``kill()`` (SIGKILL) hit the whole
    process group. Its output goes to ``log``."""

    LISTENING = re.compile(rb"Listening at: https://127\.0\.0\.1:(\d+)")
    ACCESS = re.compile(r"^access (\d{3}) pid=<?(\d+)>? (\S+) (\S+)$", re.MULTILINE)

    def __init__(
        self,
        directory: Directory,
        instance: Path,
        *,
        workers: int,
        threads: int = 1,
        preload: bool = False,
    ) -> None:
        self.directory = directory
        self.instance = instance
        self.workers = workers
        self.threads = threads
        self.preload = preload
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.instance / f"gunicorn-{self.starts}.log"

    def log_tail(self, size: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return ""

    def start(self) -> str:
        self.starts += 1
        cert, key = self.directory.bank_cert
        if self.preload:  # the app built, and its stores used, in the master (see the module)
            app = f"concurrency_bank:warm_bank(instance_path={str(self.instance)!r})"
        else:
            app = f"example_app.wsgi:gunicorn_tls(instance_path={str(self.instance)!r})"
        args = [
            sys.executable, "-m", "gunicorn", app,
            "--bind", "127.0.0.1:0",
            "--workers", str(self.workers),
            "--worker-class", "gthread" if self.threads > 1 else "sync",
            "--threads", str(self.threads),
            "--timeout", "30",
            "--graceful-timeout", "5",
            "--certfile", cert, "--keyfile", key,
            "--ca-certs", self.directory.ca_bundle, "--cert-reqs", "1",
            "--access-logfile", "-", "--access-logformat", ACCESS_FORMAT,
        ]  # fmt: skip
        if self.preload:
            args.append("--preload")
        return self._run(args, self._wait_until_serving)

    def _run(self, args: list[str], wait: Callable[[subprocess.Popen], str]) -> str:
        """Start gunicorn with ``args`` in its own process group, logging to :attr:`log`;
        ``wait`` returns its URL once it serves (it is killed if that fails)."""
        if _gunicorn_accepts("control_socket_disable"):
            args.append("--no-control-socket")  # gunicorn 25+: no socket file in ~/.gunicorn
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        path = (str(REPO), str(REPO / "tests"), env.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter, our module
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.instance, env=env, start_new_session=True,
            )  # fmt: skip
        try:
            self.url = wait(self.process)
        except BaseException:
            self.kill()
            raise
        return self.url

    def served(self, method: str, path: str) -> Counter:
        """(status, worker pid) of every ``method path`` request, from the access log."""
        text = self.log.read_text(errors="replace")
        return Counter(
            (int(status), int(pid))
            for status, pid, m, p in self.ACCESS.findall(text)
            if (m, p) == (method, path)
        )

    def _wait_until_serving(self, process: subprocess.Popen) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        port = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"gunicorn exited with {process.returncode}:\n{self.log_tail()}"
                )
            text = self.log.read_bytes()
            if port is None and (found := self.LISTENING.search(text)):
                port = int(found.group(1))
            if port is not None and text.count(b"Booting worker") >= self.workers:
                try:
                    response = requests.get(
                        f"https://127.0.0.1:{port}/.well-known/openid-configuration",
                        verify=self.directory.ca_bundle,
                        timeout=(2, 10),
                    )
                    if response.status_code == 200:
                        return f"https://127.0.0.1:{port}"
                except requests.RequestException:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"gunicorn did not serve in {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)  # start_new_session: the group id is its pid
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to the master and every worker at once: a crash, not a shutdown."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._wait_group_gone(self.process.pid)
        self.process = None

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL for whatever is left."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def _wait_group_gone(self, pgid: int) -> None:
        """Until no process of the group is alive (zombies hold no socket, file or lock: the
        orphaned workers are reaped by whatever init there is, if at all)."""
        deadline = time.monotonic() + 10
        while _group_alive(pgid):
            if time.monotonic() > deadline:
                raise AssertionError(f"gunicorn's process group {pgid} survived SIGKILL")
            self._signal_group(signal.SIGKILL)
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is alive (not a zombie)."""
    if not os.path.isdir("/proc/self"):  # not Linux: zombies count as alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


@pytest.fixture
def bank_instance(directory, tmp_path):
    """The bank's instance folder and a writer of its anybank.json."""
    instance = tmp_path / "bank"
    instance.mkdir()

    def configure(**extra: Any) -> Path:
        config = sandbox_config(
            issuer=ISSUER, directory_url=directory.url, ca_file=directory.ca_bundle
        )
        config.update(extra)
        (instance / "anybank.json").write_text(json.dumps(config))
        return instance

    return configure


@pytest.fixture
def servers():
    """Every gunicorn the test starts is stopped, whatever happens. The tests also stop
    theirs in ``finally``: the PostgreSQL and Redis fixtures they request later are torn
    down earlier, and the bank must be gone before its schema and keys are."""
    started: list[Gunicorn] = []
    yield started
    for server in started:
        server.stop()


# -- registrations ---------------------------------------------------------------------------


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@dataclass
class Attempt:
    """One registration request, and what became of it."""

    tpp: TPP
    method: str
    ssa: str
    body: str
    status: int | None = None
    response: dict[str, Any] | None = None
    text: str = ""
    error: str | None = None  # the request failed without a response (connection, timeout)

    @property
    def ssa_jti(self) -> str:
        return _claims(self.ssa)["jti"]

    @property
    def client_id(self) -> str:
        assert self.response is not None
        return self.response["client_id"]


def make_attempts(directory: Directory, tpps: list[TPP], per_client: int) -> list[list[Attempt]]:
    """``per_client`` requests per TPP, each with its own jti and its own (fresh) SSA."""
    batches = []
    for tpp in tpps:
        batch = []
        for n in range(per_client):
            method = METHODS[n % len(METHODS)]
            ssa = directory.state.ssa(tpp.software_id)
            now = int(time.time())
            claims: dict[str, Any] = {
                "iss": tpp.software_id,
                "iat": now,
                "exp": now + 300,
                "aud": ISSUER,
                "jti": str(uuid.uuid4()),
                "software_id": tpp.software_id,
                "software_statement": ssa,
                "redirect_uris": [REDIRECT_URI],
                "token_endpoint_auth_method": method,
                "grant_types": ["client_credentials"],
                "scope": "openid accounts",
                "id_token_signed_response_alg": "ES256",
                "request_object_signing_alg": "ES256",
            }
            if method == "tls_client_auth":
                claims["tls_client_auth_subject_dn"] = tpp.subject_dn
            elif method == "private_key_jwt":
                claims["token_endpoint_auth_signing_alg"] = "ES256"
            body = sign_jwt(claims, tpp.signing_key, alg="ES256")
            batch.append(Attempt(tpp, method, ssa, body))
        batches.append(batch)
    return batches


@dataclass
class Burst:
    """One thread per TPP posting its batch in order; stops a thread at its first failure
    without a response (e.g. the server was killed)."""

    url: str
    ca_bundle: str
    batches: list[list[Attempt]]
    acknowledged: int = 0
    started: float = 0.0
    elapsed: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _enough: threading.Event = field(default_factory=threading.Event)
    _target: int = 0

    def run(self, *, signal_after: int = 0) -> Burst:
        self._target = signal_after
        barrier = threading.Barrier(len(self.batches))
        threads = [
            threading.Thread(target=self._client, args=(batch, barrier), daemon=True)
            for batch in self.batches
        ]
        self.started = time.monotonic()
        for thread in threads:
            thread.start()
        self._threads = threads
        return self

    def wait_for_acknowledgements(self, timeout: float) -> bool:
        return self._enough.wait(timeout)

    def join(self, timeout: float = BURST_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        self.elapsed = time.monotonic() - self.started
        assert not alive, f"{len(alive)} client threads still running after {timeout:.0f} s"

    def _client(self, batch: list[Attempt], barrier: threading.Barrier) -> None:
        try:
            self._post_all(batch, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported through the attempts
            failed = next((a for a in batch if a.status is None and a.error is None), batch[-1])
            failed.error = f"client thread crashed: {type(exc).__name__}: {exc}"

    def _post_all(self, batch: list[Attempt], barrier: threading.Barrier) -> None:
        with requests.Session() as session:
            # not session.verify: requests lets REQUESTS_CA_BUNDLE override that one
            session.trust_env = False
            session.cert = batch[0].tpp.cert
            barrier.wait(timeout=30)
            for attempt in batch:
                try:
                    response = session.post(
                        f"{self.url}/register",
                        data=attempt.body,
                        # a new TLS connection each time: any worker may take the next one
                        headers={"Content-Type": "application/jwt", "Connection": "close"},
                        verify=self.ca_bundle,
                        timeout=HTTP_TIMEOUT,
                    )
                except requests.RequestException as exc:
                    attempt.error = f"{type(exc).__name__}: {exc}"
                    return
                attempt.status = response.status_code
                attempt.text = response.text[:500]
                if response.status_code == 201:
                    attempt.response = response.json()
                    with self._lock:
                        self.acknowledged += 1
                        if self._target and self.acknowledged >= self._target:
                            self._enough.set()

    @property
    def attempts(self) -> list[Attempt]:
        return [a for batch in self.batches for a in batch]


def describe_failures(attempts: list[Attempt]) -> str:
    bad = [a for a in attempts if a.status != 201]
    lines = [f"{a.status} {a.error or a.text}" for a in bad[:10]]
    return f"{len(bad)} of {len(attempts)} not 201:\n" + "\n".join(lines)


# -- checks on the store -----------------------------------------------------------------------


def open_store(database: str, instance: Path):
    if database == "sqlite":
        return SQLiteStore(instance / "obdcr.db")
    from flask_obdcr.storage.sqlalchemy import SQLAlchemyStore

    return SQLAlchemyStore(database, engine_options={"connect_args": {"connect_timeout": 5}})


def assert_complete(client: StoredClient, attempt: Attempt) -> None:
    """The stored record is the whole client the request asked for (and, when the request was
    acknowledged, exactly what the 201 said)."""
    assert client.ssa_claims == _claims(attempt.ssa)
    metadata = client.metadata
    assert metadata["software_statement"] == attempt.ssa
    assert metadata["software_id"] == attempt.tpp.software_id
    assert metadata["token_endpoint_auth_method"] == attempt.method
    assert metadata["redirect_uris"] == [REDIRECT_URI]
    assert metadata["grant_types"] == ["client_credentials"]
    assert metadata["scope"] == "openid accounts"
    assert isinstance(client.client_id_issued_at, int)
    assert client.client_id_issued_at > 0
    assert client.updated_at == client.client_id_issued_at
    assert (client.registration_access_token_hash or "").startswith("sha256:")
    assert len(client.registration_access_token_hash or "") == len("sha256:") + 64
    if attempt.method == "client_secret_basic":
        assert (client.client_secret_hash or "").startswith("sha256:")
    else:
        assert client.client_secret_hash is None
    if attempt.method == "tls_client_auth":
        assert metadata["tls_client_auth_subject_dn"] == attempt.tpp.subject_dn
    if attempt.method == "private_key_jwt":
        assert metadata["token_endpoint_auth_signing_alg"] == "ES256"
    if attempt.response is not None:
        response = attempt.response
        assert client.client_id == response["client_id"]
        stored_view = client.to_response()
        assert {k: response.get(k) for k in stored_view} == stored_view
        extra = set(response) - set(stored_view)
        expected_extra = {"registration_access_token", "registration_client_uri"}
        if attempt.method == "client_secret_basic":
            expected_extra |= {"client_secret", "client_secret_expires_at"}
            assert client.check_client_secret(response["client_secret"])
        assert extra == expected_extra
        assert client.registration_access_token_hash == hash_secret(
            response["registration_access_token"]
        )


def stored_clients(store) -> dict[str, StoredClient]:
    """Every stored client (each row parsed whole), by client_id; the count cross-checked."""
    clients = list(store.list())
    by_id = {c.client_id: c for c in clients}
    assert len(by_id) == len(clients) == len(store)
    return by_id


def assert_sqlite_intact(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        nulls = conn.execute(
            "SELECT count(*) FROM clients WHERE metadata IS NULL OR ssa_claims IS NULL"
            " OR client_id_issued_at IS NULL OR registration_access_token_hash IS NULL"
            " OR software_id IS NULL OR org_id IS NULL OR extra IS NULL"
        ).fetchone()[0]
        assert nulls == 0
    finally:
        conn.close()


# -- the tests -------------------------------------------------------------------------------

VARIANTS = [
    pytest.param("sqlite", False, 2, 1, True, id="sqlite-sync2-preload"),
    pytest.param("sqlite", True, 3, 2, False, id="sqlite-gthread3x2-redis"),
    pytest.param("postgres", True, 2, 4, True, id="postgres-gthread2x4-redis-preload"),
]


def _database(kind: str, request) -> str:
    return "sqlite" if kind == "sqlite" else request.getfixturevalue("postgres_url")


def _configure(bank_instance, database: str, redis_prefix: str | None) -> Path:
    extra: dict[str, Any] = {}
    if database != "sqlite":
        extra["OBDCR_DATABASE_URL"] = database
    if redis_prefix is not None:
        extra["OBDCR_REDIS_URL"] = REDIS_URL
        extra["OBDCR_REDIS_PREFIX"] = redis_prefix
    return bank_instance(**extra)


@pytest.mark.parametrize(("kind", "with_redis", "workers", "threads", "preload"), VARIANTS)
def test_concurrent_registrations_are_all_stored_once(
    kind, with_redis, workers, threads, preload, request, directory, tpps, bank_instance, servers
):
    database = _database(kind, request)
    prefix = request.getfixturevalue("redis_prefix") if with_redis else None
    instance = _configure(bank_instance, database, prefix)
    server = Gunicorn(directory, instance, workers=workers, threads=threads, preload=preload)
    servers.append(server)
    try:
        url = server.start()

        burst = Burst(url, directory.ca_bundle, make_attempts(directory, tpps, PER_CLIENT)).run()
        burst.join()
        attempts = burst.attempts
        total = CLIENTS * PER_CLIENT
        assert Counter(a.status for a in attempts) == {201: total}, (
            describe_failures(attempts) + "\n" + server.log_tail()
        )
        ids = [a.client_id for a in attempts]
        assert len(set(ids)) == total

        store = open_store(database, instance)
        try:
            clients = stored_clients(store)
            assert len(clients) == total
            assert set(clients) == set(ids)
            for attempt in attempts:
                assert_complete(clients[attempt.client_id], attempt)
            if database == "sqlite":
                assert_sqlite_intact(instance / "obdcr.db")

            if with_redis:
                # the replay cache is shared: a body any worker accepted, every worker refuses
                for batch in burst.batches:
                    replay = requests.post(
                        f"{url}/register",
                        data=batch[-1].body,
                        headers={"Content-Type": "application/jwt"},
                        cert=batch[-1].tpp.cert,
                        verify=directory.ca_bundle,
                        timeout=HTTP_TIMEOUT,
                    )
                    assert replay.status_code == 400, replay.text
                    assert replay.json()["error"] == "invalid_client_metadata"
                assert len(store) == total
        finally:
            store.close()
    finally:
        server.stop()
    # its log, complete once it has stopped: no worker crashed or logged an error...
    assert b"Traceback" not in server.log.read_bytes(), server.log_tail()
    assert b"[ERROR]" not in server.log.read_bytes(), server.log_tail()
    # ...and the workers really shared the burst: several of them answered it
    served = server.served("POST", "/register")
    expected = total + (CLIENTS if with_redis else 0)  # the replays
    assert sum(served.values()) == expected
    assert {status for status, _pid in served} == ({201, 400} if with_redis else {201})
    pids = Counter(pid for (status, pid), n in served.items() for _ in range(n) if status == 201)
    assert 2 <= len(pids) <= workers, pids
    print(
        f"\n{request.node.callspec.id}: {total} registrations in {burst.elapsed:.2f} s,"
        f" per worker {sorted(pids.values())}"
    )


KILL_VARIANTS = [
    pytest.param("sqlite", False, id="sqlite"),
    pytest.param("postgres", True, id="postgres-redis"),
]


@pytest.mark.parametrize(("kind", "with_redis"), KILL_VARIANTS)
def test_kill_9_mid_burst_loses_no_acknowledged_client(
    kind, with_redis, request, directory, tpps, bank_instance, servers
):
    database = _database(kind, request)
    prefix = request.getfixturevalue("redis_prefix") if with_redis else None
    instance = _configure(bank_instance, database, prefix)
    server = Gunicorn(directory, instance, workers=2, threads=2)
    servers.append(server)
    try:
        url = server.start()

        burst = Burst(url, directory.ca_bundle, make_attempts(directory, tpps, KILL_PER_CLIENT))
        burst.run(signal_after=KILL_AFTER)
        reached = burst.wait_for_acknowledgements(BURST_TIMEOUT)
        server.kill()
        killed_at = burst.acknowledged
        burst.join()
        attempts = burst.attempts
        assert reached, describe_failures(attempts) + "\n" + server.log_tail()

        acknowledged = [a for a in attempts if a.status == 201]
        in_doubt = [a for a in attempts if a.error is not None]  # sent, no response: either way
        never_sent = [a for a in attempts if a.status is None and a.error is None]
        answered_otherwise = [a for a in attempts if a.status not in (None, 201)]
        assert answered_otherwise == [], describe_failures(answered_otherwise)
        assert len(acknowledged) >= KILL_AFTER
        assert len(acknowledged) < len(attempts), "the burst ended before the kill"
        assert len(acknowledged) + len(in_doubt) + len(never_sent) == len(attempts)
        # each client thread stops at its first failed request: at most one in doubt per client
        assert len(in_doubt) <= CLIENTS

        # restart on the same store
        url = server.start()
        store = open_store(database, instance)
        try:
            clients = stored_clients(store)
            by_jti = {a.ssa_jti: a for a in attempts}
            stored_jtis = Counter(c.ssa_claims.get("jti") for c in clients.values())
            # every record belongs to exactly one request we sent, and is whole
            assert set(stored_jtis) <= set(by_jti)
            assert max(stored_jtis.values(), default=1) == 1
            for client in clients.values():
                assert_complete(client, by_jti[client.ssa_claims["jti"]])
            # every 201 is there; nothing else but requests in doubt
            acknowledged_ids = {a.client_id for a in acknowledged}
            assert len(acknowledged_ids) == len(acknowledged)
            assert acknowledged_ids <= set(clients)
            others = {
                c.ssa_claims["jti"] for cid, c in clients.items() if cid not in acknowledged_ids
            }
            assert others <= {a.ssa_jti for a in in_doubt}
            assert len(acknowledged) <= len(clients) <= len(acknowledged) + len(in_doubt)
            if database == "sqlite":
                assert_sqlite_intact(instance / "obdcr.db")

            # the restarted bank serves every acknowledged client with its registration token
            sessions = {}
            for attempt in acknowledged:
                session = sessions.get(attempt.tpp.software_id)
                if session is None:
                    session = sessions[attempt.tpp.software_id] = requests.Session()
                    session.trust_env, session.cert = False, attempt.tpp.cert
                read = session.get(
                    f"{url}/register/{attempt.client_id}",
                    headers={
                        "Authorization": f"Bearer {attempt.response['registration_access_token']}"
                    },
                    verify=directory.ca_bundle,
                    timeout=HTTP_TIMEOUT,
                )
                assert read.status_code == 200, read.text
                assert read.json() == {
                    **clients[attempt.client_id].to_response(),
                    # published from OBDCR_ISSUER, whatever address the TPP dialled
                    "registration_client_uri": f"{ISSUER}/register/{attempt.client_id}",
                }
            for session in sessions.values():
                session.close()

            # and registers again: exactly one more client per TPP
            before = len(store)
            again = Burst(url, directory.ca_bundle, make_attempts(directory, tpps, 1)).run()
            again.join()
            assert Counter(a.status for a in again.attempts) == {201: CLIENTS}, describe_failures(
                again.attempts
            )
            assert len(store) == before + CLIENTS
            for attempt in again.attempts:
                assert_complete(store.get(attempt.client_id), attempt)
        finally:
            store.close()
    finally:
        server.stop()
    print(
        f"\n{request.node.callspec.id}: killed after {killed_at} acks;"
        f" {len(acknowledged)} acknowledged, {len(in_doubt)} in doubt,"
        f" {len(clients)} stored, {len(never_sent)} never sent"
    )
