"""The benchmark package: every module imports, every scenario's ``--help`` works as
``python -m benchmarks.<scenario>``, one scenario runs in process (tiny), and the harness's
pure parts (server command lines, wrk's output, the reports, the Authlib peer, the protected
API of ``require_token_http``) behave as the scenarios rely on. No server under test is
started here; wrk's script is run once against a small recording server on loopback (one
second per load) to prove what it sends. The real runs are in benchmarks/README.md."""

from __future__ import annotations

import base64
import importlib
import json
import os
import pkgutil
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

import benchmarks
import benchmarks.harness
from benchmarks import token_endpoint
from benchmarks.harness import apps, onboarding, wrk
from benchmarks.harness.common import CERT_HEADER, INSTANCE_ENV, ISSUER, ROOT
from benchmarks.harness.report import Cell, paired_cpu_ratios, paired_ratios, ratio_text, table
from benchmarks.harness.servers import ServerOptions, parse_servers
from benchmarks.harness.wrk import Load, WrkResult, parse_wrk_output
from flask_obdcr.testing import SandboxDirectory
from flask_obdcr.testing.server import JWKSServer

SCENARIOS = [
    "http_registration",
    "token_endpoint",
    "require_token_http",
    "wsgi_breakdown",
    "store_lookup",
    "registration",
    "jws_key_cap",
    "token_revocation",
    "revalidation",
    "revocation_hot_path",
    "token_hot_path",
    "token_breakdown",
]


def test_every_module_of_the_package_imports():
    names = [m.name for m in pkgutil.walk_packages(benchmarks.__path__, "benchmarks.")]
    assert {f"benchmarks.{s}" for s in SCENARIOS} <= set(names)
    assert "benchmarks.harness.servers" in names
    for name in names:
        importlib.import_module(name)


def test_every_scenario_is_listed_here():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__"}
    assert scripts == set(SCENARIOS)


def test_every_scenario_help_runs_as_a_module():
    # all at once: each is a fresh interpreter importing Flask and the package
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{name}", "--help"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCENARIOS
    }
    for name, process in runs.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, f"{name}: {err}"
        assert f"python -m benchmarks.{name}" in out, name


@pytest.mark.parametrize("name", ["http_registration", "token_endpoint", "require_token_http"])
def test_http_scenarios_take_both_servers(name):
    module = importlib.import_module(f"benchmarks.{name}")
    args = module.parser().parse_args(["--server", "granian", "--server", "gunicorn"])
    assert args.server == ["granian", "gunicorn"]
    with pytest.raises(SystemExit):
        module.parser().parse_args(["--server", "uvicorn"])


def test_in_process_registration_scenario_runs(tmp_path, capsys):
    from benchmarks import registration

    code = registration.main(
        ["--n", "10", "--repeat", "1", "--variant", "PS256", "--json", "--out", str(tmp_path)]
    )
    assert code in (0, None)
    out = capsys.readouterr().out
    assert "ratio registration / floor" in out
    series = json.loads((tmp_path / "registration.json").read_text())
    assert series and all("variant" in json.dumps(s) for s in series)


def test_token_breakdown_runs_and_puts_every_step_back(capsys):
    """Tiny: the figures mean nothing, but every row is printed and what each row replaced is
    restored afterwards (the module's own functions are the originals again)."""
    import flask_obdcr.authlib_server as authlib_server
    from benchmarks import token_breakdown

    verify, belonging = (
        authlib_server.jose.verify,
        authlib_server.ClientAuthenticator.__dict__["_belonging_certificate"],
    )
    assert token_breakdown.main(["--n", "5", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for row in (
        "| the whole request |",
        "| without the token write (SQLite) |",
        "| without the signature check",
        "| without the token lookup |",
        "| GET, no check (the same view undecorated) |",
    ):
        assert row in out, row
    assert authlib_server.jose.verify is verify
    assert authlib_server.ClientAuthenticator.__dict__["_belonging_certificate"] is belonging


def test_server_options_make_the_documented_command_lines():
    granian = ServerOptions.parse("granian", "2x1")
    argv = granian.argv("benchmarks.harness.apps:bank", 8123)
    assert argv[0].endswith("granian")
    joined = " ".join(argv)
    assert "--interface wsgi --factory benchmarks.harness.apps:bank" in joined
    assert "--workers 2 --blocking-threads 1" in joined
    assert "--port 8123" in joined
    assert granian.describe() == "granian 2x1"

    gthread = ServerOptions.parse("gunicorn", "gthread:2x4")
    argv = gthread.argv("benchmarks.harness.apps:bank", 8123)
    assert "benchmarks.harness.apps:bank()" in argv  # gunicorn calls the factory itself
    assert argv[argv.index("--threads") + 1] == "4"
    assert gthread.multithreaded and not ServerOptions.parse("gunicorn", "2").multithreaded

    assert [s.describe() for s in parse_servers("gunicorn", "sync:2,gevent:2")] == [
        "gunicorn 2 sync",
        "gunicorn 2 gevent",
    ]
    with pytest.raises(ValueError, match="unknown server"):
        ServerOptions.parse("uvicorn", "2")


def test_wrk_output_is_parsed_and_a_failed_run_stops():
    line = (
        'BENCH_JSON {"requests":120,"duration_us":2000000,"good":100,"bad":20,"wrapped":0,'
        '"lines_used_last_round":60,"socket_errors":0,"timeouts":0,"latency_us":{"mean":1500.5,'
        '"p50":1200,"p90":2500,"p99":9000,"max":12000},"bad_statuses":{"400":20}}'
    )
    result = parse_wrk_output("Running 2s test\n" + line + "\n")
    assert (result.good, result.bad, result.bad_statuses) == (100, 20, {"400": 20})
    assert result.good_rps == 50.0 and result.p99_ms == 9.0
    result.server_cpu_s = 0.05
    assert result.server_cpu_us_per_request == 500.0
    with pytest.raises(SystemExit, match="wrk failed"):
        parse_wrk_output("no summary line", "connection refused", 1)


def test_a_load_splits_into_disjoint_warm_and_measured_lines():
    load = Load("http://127.0.0.1:1", "/register", Path("x"), 1, 99, "application/jwt", 201)
    warm, measured = load.split(20)
    assert (warm.start, warm.count) == (1, 20)
    assert (measured.start, measured.count) == (21, 79)


def _cell(
    server: str, rps: float, repeat: int, setup: str = "granian 2x1", cpu_s: float | None = None
) -> Cell:
    result = WrkResult(
        requests=int(rps), duration_s=1.0, rps=rps, good=int(rps), bad=0, wrapped=0,
        socket_errors=0, timeouts=0, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, mean_ms=1.0,
        bad_statuses={}, server_cpu_s=rps * 1e-3 if cpu_s is None else cpu_s,
    )  # fmt: skip
    return Cell(server, "sqlite", setup, 8, repeat, result)


def test_report_pairs_ratios_per_repeat():
    cells = [
        _cell("node-oidc-provider", 1000, 0),
        _cell("flask-obdcr", 500, 0),
        _cell("node-oidc-provider", 800, 1),
        _cell("flask-obdcr", 480, 1),
    ]
    ratios = paired_ratios(cells, "node-oidc-provider")
    assert ratios[("flask-obdcr (sqlite)", "granian 2x1", 8)] == [0.5, 0.6]
    assert ratio_text([0.5, 0.6]) == "0.50-0.60x"
    text = table(cells)
    row = next(line for line in text.splitlines() if line.startswith("| flask-obdcr"))
    # the best repeat's figures, both repeats' ratios, CPU per request (1 ms)
    assert "| 500 |" in row and "0.50-0.60x" in row and "| 1,000 |" in row


@pytest.fixture
def authlib_peer(tmp_path, monkeypatch):
    directory = SandboxDirectory()
    (tmp_path / "directory-jwks.json").write_text(json.dumps(directory.jwks()))
    monkeypatch.setenv(INSTANCE_ENV, str(tmp_path))
    app = apps.authlib_peer()
    software = directory.register_software()
    return app, directory, software, tmp_path / "authlib-peer.db"


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM clients").fetchone()[0]


def _metadata(ssa: str) -> dict:
    return {
        "redirect_uris": ["https://tpp.bench.example/cb"],
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "response_types": ["code id_token"],
        "scope": "accounts",
        "software_statement": ssa,
    }


def test_authlib_peer_registers_with_a_directory_signed_ssa(authlib_peer):
    app, directory, software, db = authlib_peer
    response = app.test_client().post("/register", json=_metadata(directory.ssa(software)))
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["client_id"] and body["token_endpoint_auth_method"] == "private_key_jwt"
    assert "client_secret" not in body
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute(
            "SELECT body FROM clients WHERE client_id = ?", (body["client_id"],)
        ).fetchone()
    assert json.loads(stored)["redirect_uris"] == ["https://tpp.bench.example/cb"]


def test_authlib_peer_refuses_an_ssa_not_signed_by_the_directory(authlib_peer):
    app, directory, software, db = authlib_peer
    other = SandboxDirectory()
    forged = other.ssa(other.register_software())
    response = app.test_client().post("/register", json=_metadata(forged))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_software_statement"
    assert _rows(db) == 0


def test_authlib_peer_refuses_metadata_the_server_does_not_support(authlib_peer):
    app, directory, software, db = authlib_peer
    metadata = {**_metadata(directory.ssa(software)), "token_endpoint_auth_method": "none"}
    response = app.test_client().post("/register", json=metadata)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert _rows(db) == 0


def test_report_pairs_cpu_per_request_within_each_server_setting():
    # require_token_http: each GET against the unchecked GET under the same server
    open_, guarded = "GET, no check", "GET, require_token"
    cells = [
        _cell(open_, 4000, 0, "granian 2x1", cpu_s=0.8),  # 200 us per request
        _cell(guarded, 3000, 0, "granian 2x1", cpu_s=0.75),  # 250 us: 1.25x
        _cell(open_, 2000, 0, "gunicorn 2 sync", cpu_s=0.8),  # 400 us
        _cell(guarded, 1800, 0, "gunicorn 2 sync", cpu_s=0.792),  # 440 us: 1.10x
    ]
    rps = paired_ratios(cells, open_, same_setup=True)
    assert rps[(guarded, "granian 2x1", 8)] == [0.75]
    assert rps[(guarded, "gunicorn 2 sync", 8)] == [0.9]
    cpu = paired_cpu_ratios(cells, open_, same_setup=True)
    assert cpu[(guarded, "granian 2x1", 8)] == [pytest.approx(1.25)]
    assert cpu[(guarded, "gunicorn 2 sync", 8)] == [pytest.approx(1.1)]
    text = table(cells, baseline=open_, cpu_ratio=True, same_setup=True)
    rows = [line for line in text.splitlines()[2:]]
    # each setting's rows together, the baseline first; both ratio columns
    assert [r.split(" | ")[0] + " " + r.split(" | ")[2] for r in rows] == [
        f"| {open_} granian 2x1",
        f"| {guarded} granian 2x1",
        f"| {open_} gunicorn 2 sync",
        f"| {guarded} gunicorn 2 sync",
    ]
    assert "| 0.75x | 1.25x |" in rows[1] and "| 0.90x | 1.10x |" in rows[3]
    assert "CPU/req vs GET, no check" in text.splitlines()[0]


def test_auth_metadata_per_method(authlib_peer):
    _, directory, software, _ = authlib_peer
    tpp = onboarding.Onboarded(
        directory_url="https://127.0.0.1:1", ca_file="ca.pem", org_id=software.org_id,
        software_id=software.software_id, signing_kid="kid", signing_key_pem="",
        transport_pem=software.transport_pem(), ssa="", signing_jwk_public={},
    )  # fmt: skip
    assert tpp.subject_dn == software.subject_dn
    assert onboarding.auth_metadata(tpp, "tls_client_auth") == {
        "token_endpoint_auth_method": "tls_client_auth",
        "token_endpoint_auth_signing_alg": None,  # dropped from the request
        "tls_client_auth_subject_dn": software.subject_dn,
    }
    assert onboarding.auth_metadata(tpp, "private_key_jwt")["token_endpoint_auth_signing_alg"] == (
        "PS256"
    )
    assert "tls_client_auth_subject_dn" not in onboarding.auth_metadata(tpp, "client_secret_basic")
    with pytest.raises(ValueError, match="unknown auth method"):
        onboarding.auth_metadata(tpp, "none")


def test_token_requests_per_auth_method():
    target = token_endpoint.Target(
        "flask-sqlite",
        None,  # type: ignore[arg-type]  # not started: only the clients are read
        {
            "tls_client_auth": token_endpoint.Client("tls-id"),
            "client_secret_basic": token_endpoint.Client("basic id", "s3cr:t"),
        },
    )
    assert token_endpoint.token_form(target, "tls_client_auth") == (
        "grant_type=client_credentials&scope=accounts&client_id=tls-id"
    )
    assert "client_id" not in token_endpoint.token_form(target, "client_secret_basic")
    assert token_endpoint.auth_headers(target, "tls_client_auth") == {}
    header = token_endpoint.auth_headers(target, "client_secret_basic")["Authorization"]
    # RFC 6749 section 2.3.1: each part form-encoded before the colon joins them
    assert base64.b64decode(header.removeprefix("Basic ")) == b"basic%20id:s3cr%3At"
    assert "s3cr" not in repr(target.clients["client_secret_basic"])


def test_wrk_environment_keeps_headers_out_of_it(tmp_path):
    load = Load(
        "http://127.0.0.1:1", "/accounts", tmp_path / "unused", 0, 1, "", 200,
        CERT_HEADER, tmp_path / "cert", headers={"Authorization": "Bearer secret-token"},
        method="GET", reuse=True,
    )  # fmt: skip
    env = wrk.wrk_environment(load, 2, "/tmp/headers.txt")
    assert env["BENCH_METHOD"] == "GET" and env["BENCH_REUSE"] == "1"
    assert "BENCH_FILE" not in env  # a GET sends no body
    assert env["BENCH_HEADERS_FILE"] == "/tmp/headers.txt"
    assert not any("secret-token" in value for value in env.values())
    post = Load("http://127.0.0.1:1", "/token", tmp_path / "forms", 0, 9, "x", 200)
    env = wrk.wrk_environment(post, 1, None)
    assert env["BENCH_FILE"] == str(tmp_path / "forms") and "BENCH_REUSE" not in env


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(self.seen) < 50:
            self.seen.append((self.command, self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder():
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed (apt-get install -y wrk)")
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


def test_wrk_script_sends_gets_and_reused_bodies_with_headers_from_a_file(
    recorder, tmp_path, monkeypatch
):
    url, seen = recorder
    (tmp_path / "cert").write_text("escaped%20pem\n")
    written: list[tuple[str, int]] = []
    paths: list[Path] = []
    real = wrk._run_wrk

    def spy(load, **kw):
        path = kw["headers_file"]
        if path is not None:
            paths.append(Path(path))
            written.append((Path(path).read_text(), stat.S_IMODE(os.stat(path).st_mode)))
        return real(load, **kw)

    monkeypatch.setattr(wrk, "_run_wrk", spy)
    get = Load(
        url, "/accounts", tmp_path / "unused", 0, 1, "", 200, CERT_HEADER, tmp_path / "cert",
        headers={"Authorization": "Bearer tok"}, method="GET", reuse=True,
    )  # fmt: skip
    result = wrk.run_wrk(get, connections=1, duration=1)
    assert result.good > 0 and result.bad == 0 and result.wrapped == 0
    method, path, headers, body = seen[0]
    assert (method, path, body) == ("GET", "/accounts", b"")
    assert headers["Authorization"] == "Bearer tok"
    assert headers[CERT_HEADER] == "escaped%20pem"
    assert "Content-Type" not in headers and "Content-Length" not in headers
    # the headers file: the run's user only, gone after the run
    assert written == [("Authorization: Bearer tok\n", 0o600)]
    assert len(paths) == 1 and not paths[0].exists()

    # one reusable line, two threads: both send it, nothing counts as wrapped
    seen.clear()
    (tmp_path / "form").write_text("grant_type=client_credentials&client_id=x\n")
    post = Load(
        url, "/token", tmp_path / "form", 0, 1, "application/x-www-form-urlencoded", 200,
        reuse=True,
    )  # fmt: skip
    result = wrk.run_wrk(post, connections=2, duration=1)
    assert result.good > 2 and result.wrapped == 0
    assert {(m, p, b) for m, p, _, b in seen} == {
        ("POST", "/token", b"grant_type=client_credentials&client_id=x")
    }


@pytest.fixture
def protected_api(tmp_path, monkeypatch):
    directory = SandboxDirectory()
    with JWKSServer(directory) as server:
        software = directory.register_software()  # after start: its URLs point at the server
        config = directory.app_config(
            tmp_path / "transport-ca.pem",
            issuer=ISSUER,
            OBDCR_HTTP_VERIFY=server.ca_file(tmp_path / "jwks-ca.pem"),
            OBDCR_CLIENT_CERT_HEADER=CERT_HEADER,
            OBDCR_TRUSTED_PROXIES=["127.0.0.1"],
        )
        (tmp_path / apps.API_CONFIG).write_text(json.dumps(config))
        monkeypatch.setenv(INSTANCE_ENV, str(tmp_path))
        app = apps.protected_api()
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = "127.0.0.1"  # the trusted proxy
        cert = {CERT_HEADER: quote(software.transport_pem(), safe="")}
        registered = client.post(
            "/register",
            data=directory.registration_request(
                software, aud=ISSUER, token_endpoint_auth_method="tls_client_auth"
            ),
            content_type="application/jwt",
            headers=cert,
            base_url="https://localhost",
        )
        assert registered.status_code == 201, registered.get_data(as_text=True)
        issued = client.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "scope": "accounts",
                "client_id": registered.get_json()["client_id"],
            },
            headers=cert,
            base_url="https://localhost",
        )
        assert issued.status_code == 200, issued.get_data(as_text=True)
        yield client, cert, issued.get_json()["access_token"], directory


def test_protected_api_answers_the_guarded_get_with_the_bound_token_and_certificate(
    protected_api,
):
    client, cert, token, _ = protected_api
    bearer = {"Authorization": f"Bearer {token}"}
    guarded = client.get("/accounts", headers={**bearer, **cert})
    assert guarded.status_code == 200
    unchecked = client.get("/accounts-open", headers={**bearer, **cert})
    assert unchecked.status_code == 200
    # the same view, so the two GETs differ only by the check
    assert guarded.get_json() == unchecked.get_json() == apps.ACCOUNTS


def test_protected_api_refuses_the_token_without_its_certificate(protected_api):
    client, cert, token, directory = protected_api
    bearer = {"Authorization": f"Bearer {token}"}
    bare = client.get("/accounts", headers=bearer)
    assert bare.status_code == 401
    assert bare.get_json()["error"] == "invalid_token"
    other = directory.register_software()  # a certificate the token is not bound to
    wrong = client.get(
        "/accounts", headers={**bearer, CERT_HEADER: quote(other.transport_pem(), safe="")}
    )
    assert wrong.status_code == 401
    assert wrong.get_json()["error"] == "invalid_token"
    forged = client.get("/accounts", headers={"Authorization": "Bearer forged", **cert})
    assert forged.status_code == 401
    assert forged.get_json()["error"] == "invalid_token"
    # the token itself is still good: the refusals changed nothing
    assert client.get("/accounts", headers={**bearer, **cert}).status_code == 200


@pytest.fixture(params=[True, False], ids=["durable", "in-memory"])
def token_floor(request, tmp_path, monkeypatch):
    directory = SandboxDirectory()
    software = directory.register_software()
    (tmp_path / "software-key.json").write_text(software.signing_key.export_public())
    monkeypatch.setenv(INSTANCE_ENV, str(tmp_path))
    app = apps.token_floor() if request.param else apps.token_floor_in_memory()
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.0.1"
    cert = {CERT_HEADER: quote(software.transport_pem(), safe="")}
    return client, software, cert, tmp_path / "token-floor.db", request.param


def _floor_tokens(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT client_id, x5t_s256 FROM tokens").fetchall()


def test_token_floor_does_the_least_work_it_names(token_floor):
    """The floor of the token endpoint comparison: a verified assertion gets a token (kept
    hashed, bound to the certificate's thumbprint, in SQLite or in memory), a replayed jti, a
    forged signature and a wrong secret get a 401, no certificate a 401."""
    client, software, cert, db, durable = token_floor
    form = {"grant_type": "client_credentials", "client_assertion_type": "jwt-bearer"}
    assertion = software.client_assertion("client-1", aud=ISSUER)
    issued = client.post("/token", data={**form, "client_assertion": assertion}, headers=cert)
    assert issued.status_code == 200, issued.get_data(as_text=True)
    assert issued.headers["Cache-Control"] == "no-store"
    assert len(issued.get_json()["access_token"]) == 43
    replayed = client.post("/token", data={**form, "client_assertion": assertion}, headers=cert)
    assert replayed.status_code == 401
    other = SandboxDirectory().register_software()
    forged = other.client_assertion("client-1", aud=ISSUER)
    refused = client.post("/token", data={**form, "client_assertion": forged}, headers=cert)
    assert refused.status_code == 401
    tls = client.post("/token", data={"client_id": "client-2"}, headers=cert)
    assert tls.status_code == 200
    basic = {"Authorization": "Basic " + base64.b64encode(b"client-3:wrong").decode()}
    assert client.post("/token", data={}, headers={**cert, **basic}).status_code == 401
    assert client.post("/token", data={"client_id": "client-4"}).status_code == 401
    thumbprint = token_endpoint_thumbprint(software.transport_pem())
    expected = [("client-1", thumbprint), ("client-2", thumbprint)]
    assert _floor_tokens(db) == (expected if durable else [])


def token_endpoint_thumbprint(pem: str) -> str:
    from flask_obdcr.certificates import load_certificate, thumbprint_sha256

    return thumbprint_sha256(load_certificate(pem))
