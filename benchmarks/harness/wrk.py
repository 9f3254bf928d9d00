"""wrk with ``benchmarks/wrk/post_lines.lua``: a different pre-built body per call, the
server's and the machine's CPU measured around the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .common import LUA_SCRIPT
from .processes import machine_busy_cpu, named_processes_cpu, process_tree_cpu


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
    """One wrk run: which lines of which file go to which endpoint, and how.

    ``headers`` are sent on every call (an ``Authorization`` header: written to a file only
    the run's user can read, for the run only; never in wrk's environment or command line).
    ``reuse``: the bodies may be sent again (a ``tls_client_auth`` or ``client_secret_basic``
    token request carries nothing a server refuses to see twice)."""

    url: str
    path: str
    #: one body per line (not read for a GET, which sends none)
    body_file: Path
    start: int
    count: int
    content_type: str
    expect: int
    header_name: str | None = None
    header_file: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    reuse: bool = False

    def split(self, warm_lines: int) -> tuple[Load, Load]:
        """A warm-up load of the first ``warm_lines`` lines, and the rest for the measured run
        (the servers refuse a replayed jti, so the two never share a line)."""
        warm = Load(**{**vars(self), "count": warm_lines})
        rest = Load(
            **{**vars(self), "start": self.start + warm_lines, "count": self.count - warm_lines}
        )
        return warm, rest


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
    """Drive ``load`` for ``duration`` seconds; the server's CPU (``server_pid`` and its
    descendants) and the database's (processes named ``database_process``) around it."""
    with tempfile.NamedTemporaryFile("w", prefix="obdcr-wrk-headers-", suffix=".txt") as handle:
        # NamedTemporaryFile is created readable by its owner only
        handle.write("".join(f"{name}: {value}\n" for name, value in load.headers.items()))
        handle.flush()
        return _run_wrk(
            load,
            connections=connections,
            duration=duration,
            server_pid=server_pid,
            database_process=database_process,
            headers_file=handle.name if load.headers else None,
        )


def wrk_environment(load: Load, threads: int, headers_file: str | None) -> dict[str, str]:
    """What ``post_lines.lua`` reads: the load, as environment variables (no secret in them:
    extra headers travel in ``headers_file``)."""
    env = {
        "BENCH_START": str(load.start),
        "BENCH_COUNT": str(load.count),
        "BENCH_THREADS": str(threads),
        "BENCH_METHOD": load.method,
        "BENCH_PATH": load.path,
        "BENCH_CONTENT_TYPE": load.content_type,
        "BENCH_EXPECT": str(load.expect),
    }
    if load.method != "GET":
        env["BENCH_FILE"] = str(load.body_file)
    if load.header_name and load.header_file:
        env["BENCH_HEADER_NAME"] = load.header_name
        env["BENCH_HEADER_FILE"] = str(load.header_file)
    if headers_file:
        env["BENCH_HEADERS_FILE"] = headers_file
    if load.reuse:
        env["BENCH_REUSE"] = "1"
    return env


def _run_wrk(
    load: Load,
    *,
    connections: int,
    duration: float,
    server_pid: int | None,
    database_process: str | None,
    headers_file: str | None,
) -> WrkResult:
    threads = wrk_threads(connections)
    env = {**os.environ, **wrk_environment(load, threads, headers_file)}
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
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    process.stdout.close()  # type: ignore[union-attr]
    process.stderr.close()  # type: ignore[union-attr]
    cpu_after = process_tree_cpu(server_pid) if server_pid else 0.0
    db_cpu = named_processes_cpu(database_process) - db_before if database_process else 0.0
    machine = machine_busy_cpu() - machine_before
    elapsed = time.monotonic() - started
    result = parse_wrk_output(stdout, stderr, process.returncode)
    wrk_cpu = usage.ru_utime + usage.ru_stime
    result.server_cpu_s = cpu_after - cpu_before
    result.database_cpu_s = db_cpu
    result.wrk_cpu_s = wrk_cpu
    if server_pid:
        result.other_cpu_cores = max(
            0.0, (machine - result.server_cpu_s - db_cpu - wrk_cpu) / elapsed
        )
    return result


def parse_wrk_output(stdout: str, stderr: str = "", returncode: int = 0) -> WrkResult:
    """The ``BENCH_JSON {...}`` line ``post_lines.lua`` prints at the end of a run."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({returncode}):\n{stdout}\n{stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    duration_s = data["duration_us"] / 1e6
    lat = data["latency_us"]
    if stderr.strip():
        print("  wrk: " + stderr.strip().replace("\n", "\n  wrk: "), file=sys.stderr)
    return WrkResult(
        requests=data["requests"],
        duration_s=duration_s,
        rps=data["requests"] / duration_s if duration_s else 0.0,
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
    )


def smoke_test(
    url: str, path: str, body: str, content_type: str, headers: dict[str, str], expect: int
) -> requests.Response:
    """One call before the load: a server that refuses it would make a meaningless run."""
    response = requests.post(
        url + path, data=body, headers={"Content-Type": content_type, **headers}, timeout=30
    )
    if response.status_code != expect:
        raise SystemExit(
            f"smoke test {url}{path}: {response.status_code} (expected {expect}): {response.text}"
        )
    return response
