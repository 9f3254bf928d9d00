"""py-spy on a server under wrk's load, and a summary of where its samples are."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .common import ROOT, VENV_BIN
from .wrk import Load, WrkResult, run_wrk

#: buckets for the profile summary (regular expressions on py-spy frames, "function (file:line)");
#: the leaf-most frame matching one decides, the first matching bucket in this order. Native
#: code (OpenSSL, the Rust X.509 verifier) shows as self time of the Python frame calling it.
PROFILE_BUCKETS: list[tuple[str, str]] = [
    (
        "public-key crypto: PS256 verifications, X.509 chain checks (native)",
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
    ("granian: the WSGI call (its Rust side is not sampled)", r"[(/]granian/"),
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
        for name in {_short(f) for f in names}:
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
    # the frames every sample has (the server's main loop, the worker loop) say nothing
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
    spy = subprocess.Popen(
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


def write_profile_summary(raw: Path) -> None:
    summary = summarize_profile(raw)
    raw.with_name(raw.stem + "-summary.md").write_text(summary + "\n")
    print(summary)
