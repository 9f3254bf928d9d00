"""Processes the benchmarks start (always stopped), ports, CPU accounting, an idle machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from .common import NODE_DIR, ROOT, VENV_BIN

T = TypeVar("T")


class Processes:
    """The servers this run started; every one is stopped on exit, with its children.

    Each server gets its own session (process group): gunicorn and granian fork workers, and
    stopping the group by the id of the process started here also stops a worker whose
    master died first; nothing outside the group is ever signalled."""

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen]] = []
        self._logs: dict[int, tuple[IO[bytes], Path]] = {}

    def start(self, name: str, argv: Sequence[str], *, log: Path, **kw: Any) -> subprocess.Popen:
        handle = open(log, "ab")  # noqa: SIM115 - closed with the process
        try:
            process = subprocess.Popen(
                list(argv),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kw,
            )
        except BaseException:
            handle.close()
            raise
        self._logs[process.pid] = (handle, log)
        self._running.append((name, process))
        return process

    def log_path(self, process: subprocess.Popen) -> Path | None:
        entry = self._logs.get(process.pid)
        return entry[1] if entry else None

    def stop(self, process: subprocess.Popen, timeout: float = 10.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait(5)
        # workers left behind by a master that died (or ignored SIGTERM's grace period)
        _kill_group(process.pid)
        entry = self._logs.pop(process.pid, None)
        if entry:
            entry[0].close()
        self._running = [(n, p) for n, p in self._running if p is not process]

    def stop_all(self) -> None:
        for _, process in reversed(list(self._running)):
            self.stop(process)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return "(no log)"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(
    check: Callable[[], T],
    process: subprocess.Popen,
    what: str,
    timeout: float = 60.0,
    log: Path | None = None,
) -> T:
    """Poll ``check`` until it returns something true; stop early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(Exception):
            result = check()
            if result:
                return result
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start within {timeout:.0f} s:\n{log_tail(log)}")


def ready_text(path: Path) -> str:
    """What a server wrote to its ready file (its URL), or "" while it has not."""
    return path.read_text().strip() if path.exists() else ""


def _stat_fields(pid: int | str) -> list[str]:
    # the fields after the command name, which may itself hold spaces and parentheses
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every live descendant (gunicorn's
    and granian's workers; the children they reap count in their parent's cutime, not here)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    parents.setdefault(int(_stat_fields(entry)[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(parents.get(current, []))
        with contextlib.suppress(OSError, IndexError):
            fields = _stat_fields(current)
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


def require_tools(*, node: bool = True, servers: Sequence[str] = ("gunicorn",)) -> None:
    """Stop with one message naming every missing tool and how to install it."""
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk (apt-get install -y wrk)")
    if node and not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        missing.append(f"oidc-provider (cd {NODE_DIR.relative_to(ROOT)} && npm ci)")
    if node and shutil.which("node") is None:
        missing.append("node")
    for server in servers:
        if not (VENV_BIN / server).exists():
            missing.append(f"{server} (.venv/bin/pip install -e '.[bench]')")
    if missing:
        raise SystemExit("missing: " + "; ".join(missing))


def git_version() -> str:
    """The commit measured (``git describe --always --dirty``), for the JSON record."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


_NODE_VERSION: list[str] = []


def node_version() -> str:
    if not _NODE_VERSION:
        try:
            _NODE_VERSION.append(
                subprocess.run(
                    ["node", "--version"], capture_output=True, text=True, check=True
                ).stdout.strip()
            )
        except (OSError, subprocess.CalledProcessError):
            _NODE_VERSION.append("?")
    return _NODE_VERSION[0]
