"""What a run reports: cells, markdown tables with ratios paired per repeat, server CPU per
request, the JSON record and the chart."""

from __future__ import annotations

import os
import platform
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .common import ROOT
from .processes import git_version, node_version
from .wrk import WrkResult


@dataclass
class Cell:
    """One measured run: a server (and its setup) at one concurrency, in one repeat."""

    server: str  # node-oidc-provider | flask-obdcr | a reference's name
    store: str  # memory | sqlite | postgres | ...
    setup: str
    connections: int
    repeat: int
    result: WrkResult

    @property
    def label(self) -> str:
        if self.server == "flask-obdcr":
            return f"{self.server} ({self.store})"
        return self.server

    def line(self, expect: int, note: str = "") -> str:
        """The progress line printed as each cell ends."""
        r = self.result
        return (
            f"  {self.label:32} {self.setup:22} c={self.connections:<2} {r.good_rps:8.0f} req/s"
            f"  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
            f"  server CPU {r.cpu_text()} us/req"
            f"  non-{expect}: {r.bad}  other load {r.other_cpu_cores:.2f} cores{note}"
        )


def best_cells(cells: list[Cell]) -> list[Cell]:
    """One cell per (label, setup, connections): the repeat with the highest throughput (other
    work on the machine, or on the host of this virtual machine, only ever slows a run down)."""
    groups: dict[tuple[str, str, int], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.label, cell.setup, cell.connections)].append(cell)
    return [max(group, key=lambda c: c.result.good_rps) for group in groups.values()]


def _pairing(cell: Cell, same_setup: bool) -> tuple[int, int, str]:
    return (cell.repeat, cell.connections, cell.setup if same_setup else "")


def paired_ratios(
    cells: list[Cell], baseline: str, *, same_setup: bool = False
) -> dict[tuple[str, str, int], list[float]]:
    """Throughput / the baseline's in the same repeat and at the same concurrency (and with
    ``same_setup``, under the same server setting): the ratios of runs made minutes apart,
    side by side, which host-level noise moves far less than the absolute figures."""
    base = {
        _pairing(c, same_setup): c.result.good_rps
        for c in cells
        if c.label == baseline and c.result.good_rps
    }
    ratios: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for c in cells:
        if _pairing(c, same_setup) in base:
            ratios[(c.label, c.setup, c.connections)].append(
                c.result.good_rps / base[_pairing(c, same_setup)]
            )
    return ratios


def paired_cpu_ratios(
    cells: list[Cell], baseline: str, *, same_setup: bool = False
) -> dict[tuple[str, str, int], list[float]]:
    """Server CPU per request / the baseline's, paired as :func:`paired_ratios` pairs (what a
    request costs, against what the baseline's costs)."""
    base = {
        _pairing(c, same_setup): c.result.server_cpu_us_per_request
        for c in cells
        if c.label == baseline and c.result.good and c.result.server_cpu_s > 0
    }
    ratios: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for c in cells:
        if _pairing(c, same_setup) in base and c.result.good:
            ratios[(c.label, c.setup, c.connections)].append(
                c.result.server_cpu_us_per_request / base[_pairing(c, same_setup)]
            )
    return ratios


def ratio_text(values: list[float]) -> str:
    """``0.52x``, or ``0.50-0.55x`` when the repeats differ."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}x"


#: the order of the rows at each concurrency (others after, by name)
ROW_ORDER = {
    "node-oidc-provider": 0,
    "flask-obdcr (sqlite)": 1,
    "flask-obdcr (postgres)": 2,
    "Authlib RFC 7591 peer": 3,
    "Flask minimum DCR (floor)": 4,
    "Flask no-op POST (ceiling)": 5,
}


def table(
    cells: list[Cell],
    *,
    baseline: str = "node-oidc-provider",
    work: dict[str, str] | None = None,
    noun: str = "registration",
    cpu_ratio: bool = False,
    same_setup: bool = False,
) -> str:
    """A markdown table: the best repeat of each cell, its ratio to ``baseline`` per repeat,
    server CPU per request (with ``cpu_ratio``, also as a ratio to the baseline's, paired per
    repeat), what each server does per ``noun``. ``same_setup``: each row against the
    baseline under the same server setting (a baseline run under every setting)."""
    ratios = paired_ratios(cells, baseline, same_setup=same_setup)
    cpu_ratios = paired_cpu_ratios(cells, baseline, same_setup=same_setup) if cpu_ratio else {}
    best = best_cells(cells)
    work = work or {}
    cpu_head = f" | CPU/req vs {baseline} (per repeat)" if cpu_ratio else ""
    lines = [
        "| server | store | setup | conns | req/s | p50 ms | p99 ms | server CPU µs/req"
        f" | req/s vs {baseline} (per repeat){cpu_head} | other load | work per {noun} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * cpu_ratio + "---:|---|",
    ]

    def order(c: Cell) -> tuple[int, str, int, str]:
        # paired per setting: each setting's rows together, its baseline first
        return (c.connections, c.setup if same_setup else "", ROW_ORDER.get(c.label, 9), c.label)

    for cell in sorted(best, key=order):
        r = cell.result
        key = (cell.label, cell.setup, cell.connections)
        cpu_cell = f" {ratio_text(cpu_ratios.get(key, []))} |" if cpu_ratio else ""
        lines.append(
            f"| {cell.server} | {cell.store} | {cell.setup} | {cell.connections} |"
            f" {r.good_rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
            f" {r.cpu_text()} |"
            f" {ratio_text(ratios.get(key, []))} |{cpu_cell}"
            f" {r.other_cpu_cores:.2f} |"
            f" {work.get(cell.server, '')} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Where and what was measured, for the JSON record."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "node": node_version(),
        "platform": platform.platform(),
        "git": git_version(),
    }


def cells_record(cells: list[Cell]) -> list[dict[str, Any]]:
    return [
        {
            **{k: v for k, v in asdict(c).items() if k != "result"},
            "label": c.label,
            **asdict(c.result),
            "good_rps": c.result.good_rps,
            "server_cpu_us_per_request": c.result.server_cpu_us_per_request,
            "database_cpu_us_per_request": c.result.database_cpu_us_per_request,
        }
        for c in cells
    ]


def chart(
    cells: list[Cell], path: Path, title: str, *, baseline: str = "node-oidc-provider"
) -> None:
    """Throughput per server and concurrency (ratios to ``baseline`` on the bars), and p50 /
    p99 latency; needs matplotlib (without it: a note, no chart)."""
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

    base = {c.connections: c.result.good_rps for c in cells if c.label == baseline}
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
