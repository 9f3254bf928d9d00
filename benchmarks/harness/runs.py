"""The options every HTTP scenario takes, and re-running a cell that other work disturbed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Protocol

from .common import DEFAULT_PG_URL
from .processes import wait_for_quiet
from .report import Cell
from .servers import SERVERS, Running, ServerOptions, parse_servers
from .wrk import Load, WrkResult, run_wrk


def add_run_arguments(
    parser: argparse.ArgumentParser, *, gunicorn: str = "sync:2", granian: str = "2x1"
) -> None:
    """Timing, repeats, the WSGI server and its settings, the stores, the quiet check."""
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per cell")
    parser.add_argument("--connections", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (the best is shown)")
    parser.add_argument(
        "--server",
        action="append",
        choices=SERVERS,
        help="the WSGI server of the Python targets (repeatable: both side by side); default"
        " gunicorn",
    )
    parser.add_argument(
        "--gunicorn",
        default=gunicorn,
        help="sync:N (N sync workers), gevent:N (N gevent workers) or gthread:NxT"
        f" (N workers x T threads), comma-separated; default {gunicorn}",
    )
    parser.add_argument(
        "--granian",
        default=granian,
        help="NxT: N workers x T blocking threads (granian --interface wsgi --workers N"
        f" --blocking-threads T), comma-separated; default {granian}",
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


def server_settings(args: argparse.Namespace) -> list[ServerOptions]:
    """Every server setting the options ask for: ``--server`` (gunicorn when none) with its
    ``--gunicorn`` / ``--granian`` specs."""
    settings: list[ServerOptions] = []
    for kind in args.server or ["gunicorn"]:
        settings += parse_servers(kind, getattr(args, kind))
    return settings


class RetryPolicy(Protocol):
    """What :func:`run_undisturbed` reads of a plan (an argparse namespace does)."""

    @property
    def max_other_load(self) -> float: ...

    @property
    def retries(self) -> int: ...


def measure_cell(
    args: argparse.Namespace, running: Running, warm: Load, measured: Load, connections: int
) -> WrkResult:
    """One cell against a running server: wait for a quiet machine (``--quiet-wait``), warm up
    with ``warm`` (``--warmup`` seconds), then run ``measured`` (``--duration``), counting the
    server's CPU (and PostgreSQL's, when that is its store)."""
    if args.quiet_wait > 0:
        wait_for_quiet(args.quiet_wait)
    if args.warmup > 0:
        run_wrk(warm, connections=connections, duration=args.warmup)
    return run_wrk(
        measured,
        connections=connections,
        duration=args.duration,
        server_pid=running.process.pid,
        database_process="postgres" if running.store == "postgres" else None,
    )


def run_undisturbed(plan: RetryPolicy, run: Callable[[], Cell]) -> Cell:
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
