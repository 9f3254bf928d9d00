"""The benchmark package: every module imports, every scenario's ``--help`` works as
``python -m benchmarks.<scenario>``, one scenario runs in process (tiny), and the harness's
pure parts (server command lines, wrk's output, the Authlib peer) behave as the scenarios
rely on. No server is started and no load is sent here: the real runs are in
benchmarks/README.md."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks
import benchmarks.harness
from benchmarks.harness import apps
from benchmarks.harness.common import INSTANCE_ENV, ROOT
from benchmarks.harness.report import Cell, paired_ratios, ratio_text, table
from benchmarks.harness.servers import ServerOptions, parse_servers
from benchmarks.harness.wrk import Load, WrkResult, parse_wrk_output
from flask_obdcr.testing import SandboxDirectory

SCENARIOS = [
    "http_registration",
    "token_endpoint",
    "wsgi_breakdown",
    "store_lookup",
    "registration",
    "jws_key_cap",
    "token_revocation",
    "revalidation",
    "revocation_hot_path",
    "token_hot_path",
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


@pytest.mark.parametrize("name", ["http_registration", "token_endpoint"])
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


def _cell(server: str, rps: float, repeat: int) -> Cell:
    result = WrkResult(
        requests=int(rps), duration_s=1.0, rps=rps, good=int(rps), bad=0, wrapped=0,
        socket_errors=0, timeouts=0, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, mean_ms=1.0,
        bad_statuses={}, server_cpu_s=rps * 1e-3,
    )  # fmt: skip
    return Cell(server, "sqlite", "granian 2x1", 8, repeat, result)


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
