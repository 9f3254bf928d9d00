"""Store lookup latency: ``store.get(client_id)`` with 1k, 100k and 1M stored clients.

For each backend (``SQLiteStore``, ``SQLAlchemyStore`` on PostgreSQL) the table is filled in
steps (1k, then up to 100k, then up to 1M clients) and at each step ``--lookups`` random stored
``client_id`` values are looked up through the public ``store.get`` (SQL, row fetch and the
JSON decoding into a ``StoredClient``), one call at a time, each timed on its own. The
figure of merit is the 1M / 1k ratio of the median (target: within 1.5x).

The records are real: one client is registered in-process through the whole pipeline (sandbox
Directory, ``POST /register``), and its record is the template for every row, with its own
``client_id``, ``software_id`` and ``org_id`` (substituted in the JSON too). ``--record slim``
drops the software statement (the largest field) from the metadata, for small disks. Rows are
bulk-loaded directly (SQLite ``executemany`` in the store's own table, PostgreSQL ``COPY``)
rather than through ``store.add``, which would take an hour at 1M. For context each size also
times the same row through the driver alone (``sqlite3``; ``psycopg`` in autocommit: one round
trip) and ``StoredClient.from_record`` alone (the JSON decoding every ``get`` pays);
``--pg-tuned`` times a prototype engine on the same PostgreSQL data (no ``pool_pre_ping``,
autocommit reads: one round trip instead of four).

    .venv/bin/python -m benchmarks.store_lookup
    .venv/bin/python -m benchmarks.store_lookup --sizes 1000,100000 --stores sqlite
    .venv/bin/python -m benchmarks.store_lookup --record slim --lookups 50000
    .venv/bin/python -m benchmarks.store_lookup --pg-tuned

Full records take about 4.5 GB per backend at 1M clients (checked against the free space
first); the databases are in the page cache while timed (cold-cache latency is not measured).

PostgreSQL: ``--pg-url`` (default: database ``obdcr_bench`` on 127.0.0.1, created if
missing; the table ``bench_lookup_clients`` is dropped at the end unless ``--keep``).
Output: a markdown table on stdout, ``benchmarks/out/store_lookup.{json,png}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import string
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .harness.common import OUT_DIR, ROOT
from .harness.processes import git_version, wait_for_quiet

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/obdcr_bench"
TABLE_PREFIX = "bench_lookup_"
TARGET_RATIO = 1.5
ALPHABET = string.ascii_letters + string.digits


# ----------------------------------------------------------------------------- the records


def template_client():
    """A client registered through the real pipeline (in-process, MemoryStore)."""
    from flask import Flask

    from flask_obdcr import OpenBankingDCR
    from flask_obdcr.storage import MemoryStore
    from flask_obdcr.testing import SandboxDirectory

    directory = SandboxDirectory()
    software = directory.register_software(roles=["AISP", "PISP"])
    issuer = "https://as.bench-bank.test"
    with tempfile.TemporaryDirectory() as tmp:
        app = Flask("lookup_template", instance_path=tmp)
        app.config.update(directory.app_config(Path(tmp) / "ca.pem", issuer=issuer))
        store = MemoryStore()
        OpenBankingDCR(app, store=store, jwks_fetcher=directory.fetcher)
        body = directory.registration_request(software, aud=issuer)
        response = app.test_client().post(
            "/register",
            data=body,
            content_type="application/jwt",
            environ_base=software.environ(),
        )
        if response.status_code != 201:
            raise SystemExit(f"template registration failed: {response.get_json()}")
        return store.get(response.get_json()["client_id"]), software


def record_factory(slim: bool) -> tuple[Callable[[random.Random], dict[str, Any]], int]:
    """A function making one distinct row (the store's record shape) from an RNG, and the
    size in bytes of a row's JSON columns."""
    client, software = template_client()
    record = client.to_record()
    if slim:
        metadata = json.loads(record["metadata"])
        metadata.pop("software_statement", None)
        record["metadata"] = json.dumps(metadata, separators=(",", ":"))
    old_software, old_org = software.software_id, software.org_id
    metadata_text, claims_text = record["metadata"], record["ssa_claims"]

    def make(rng: random.Random) -> dict[str, Any]:
        software_id = "".join(rng.choices(ALPHABET, k=22))
        org_id = "".join(rng.choices(ALPHABET, k=18))
        row = dict(record)
        row["client_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        row["software_id"] = software_id
        row["org_id"] = org_id
        row["metadata"] = metadata_text.replace(old_software, software_id).replace(old_org, org_id)
        row["ssa_claims"] = claims_text.replace(old_software, software_id).replace(old_org, org_id)
        return row

    size = len(metadata_text) + len(claims_text) + len(record["extra"] or "")
    return make, size


# ----------------------------------------------------------------------------- backends


class Backend(ABC):
    name: str
    store: Any
    columns: tuple[str, ...]
    #: other (label, store) pairs timed on the same data (prototypes of possible changes)
    variants: list[tuple[str, Any]] = []

    @abstractmethod
    def raw_get(self) -> Callable[[str], Any]:
        """The driver's own primary-key lookup: the floor the stores are measured against."""

    @abstractmethod
    def bulk_insert(self, rows: Iterator[dict[str, Any]]) -> None: ...

    @abstractmethod
    def size_bytes(self) -> int: ...

    @abstractmethod
    def finish_load(self) -> None: ...

    @abstractmethod
    def close(self, keep: bool) -> None: ...


class SQLiteBackend(Backend):
    name = "SQLite"

    def __init__(self, folder: Path) -> None:
        from flask_obdcr.storage import SQLiteStore
        from flask_obdcr.storage.sqlite import _NAMES

        self.folder = folder
        self.path = folder / "obdcr.db"
        self.store = SQLiteStore(self.path)
        self.columns = _NAMES
        self.store.db  # noqa: B018 - creates the schema

    def raw_get(self) -> Callable[[str], Any]:
        """The same row through the driver alone (sqlite3), no JSON decoding."""
        import sqlite3

        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        sql = f"SELECT {', '.join(self.columns)} FROM clients WHERE client_id = ?"  # noqa: S608
        return lambda client_id: conn.execute(sql, (client_id,)).fetchone()

    def bulk_insert(self, rows: Iterator[dict[str, Any]]) -> None:
        import sqlite3

        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")  # the loader's connection only
        sql = (
            f"INSERT INTO clients ({', '.join(self.columns)}) "  # noqa: S608
            f"VALUES ({', '.join('?' * len(self.columns))})"
        )
        batch: list[list[Any]] = []
        for row in rows:
            batch.append([row[c] for c in self.columns])
            if len(batch) >= 5000:
                conn.execute("BEGIN")
                conn.executemany(sql, batch)
                conn.execute("COMMIT")
                batch.clear()
        if batch:
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def finish_load(self) -> None:
        self.store.close()  # a fresh connection sees the new statistics

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("obdcr.db*"))

    def close(self, keep: bool) -> None:
        self.store.close()
        if not keep:
            for p in self.folder.glob("obdcr.db*"):
                p.unlink()


class PostgresBackend(Backend):
    name = "PostgreSQL"

    def __init__(self, url: str, *, tuned: bool = False) -> None:
        import sqlalchemy as sa

        from flask_obdcr.storage.sqlalchemy import SQLAlchemyStore

        parsed = sa.make_url(url)
        admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if not conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}
            ).first():
                conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
        admin.dispose()
        self.store = SQLAlchemyStore(url, table_prefix=TABLE_PREFIX)
        self.store.drop_schema()
        self.store.create_schema()
        self.columns = tuple(c.name for c in self.store.table.columns)
        self.table = self.store.table.name
        self.variants = []
        if tuned:
            # a prototype, not what the library does: no pre-ping round trip on checkout, and
            # reads in autocommit (no BEGIN/ROLLBACK around the SELECT): 1 round trip, not 4
            tuned_store = SQLAlchemyStore(
                url,
                table_prefix=TABLE_PREFIX,
                engine_options={"pool_pre_ping": False, "isolation_level": "AUTOCOMMIT"},
            )
            self.variants.append(("PostgreSQL, tuned engine (prototype)", tuned_store))

    def raw_get(self) -> Callable[[str], Any]:
        """The same row through psycopg alone: one autocommit round trip (a prepared statement
        after a few calls), no pool, no transaction, no JSON decoding."""
        import psycopg

        url = self.store.engine.url
        conn = psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname=url.database,
            autocommit=True,
        )
        self._raw_conn = conn
        sql = f"SELECT {', '.join(self.columns)} FROM {self.table} WHERE client_id = %s"  # noqa: S608
        return lambda client_id: conn.execute(sql, (client_id,)).fetchone()

    def bulk_insert(self, rows: Iterator[dict[str, Any]]) -> None:
        raw = self.store.engine.raw_connection()
        try:
            cursor = raw.cursor()
            sql = f"COPY {self.table} ({', '.join(self.columns)}) FROM STDIN"
            with cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row([row[c] for c in self.columns])
            raw.commit()
        finally:
            raw.close()

    def finish_load(self) -> None:
        import sqlalchemy as sa

        with self.store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                sa.text(f"VACUUM ANALYZE {self.table}")
            )

    def size_bytes(self) -> int:
        import sqlalchemy as sa

        with self.store.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT pg_total_relation_size(:t)"), {"t": self.table}
                ).scalar()
            )

    def close(self, keep: bool) -> None:
        if getattr(self, "_raw_conn", None) is not None:
            self._raw_conn.close()
        for _, store in self.variants:
            store.close()
        if not keep:
            self.store.drop_schema()
        self.store.close()


# ----------------------------------------------------------------------------- timing


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def time_lookups(
    get: Callable[[str], Any],
    ids: list[str],
    lookups: int,
    rng: random.Random,
    rounds: int = 3,
    quiet_wait: float = 0.0,
) -> dict[str, Any]:
    """``rounds`` x ``lookups`` calls of ``get`` (``store.get``) on random stored ids, each timed;
    each statistic is the median over the rounds (a round disturbed by other work on the
    machine does not decide the result)."""
    per_round = []
    for r in range(rounds):
        if quiet_wait > 0:
            wait_for_quiet(quiet_wait)
        per_round.append(_time_round(get, ids, lookups, random.Random(rng.random() + r)))
    return {key: statistics.median(s[key] for s in per_round) for key in per_round[0]}


def _time_round(
    get: Callable[[str], Any], ids: list[str], lookups: int, rng: random.Random
) -> dict[str, Any]:
    sample = [rng.choice(ids) for _ in range(lookups)]
    for client_id in sample[: min(2000, lookups)]:  # warm the connection, caches, code paths
        get(client_id)
    timer = time.perf_counter_ns
    timings = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for client_id in sample:
            t0 = timer()
            found = get(client_id)
            timings.append(timer() - t0)
            if found is None:
                raise SystemExit(f"lookup of a stored client_id {client_id} returned None")
    finally:
        if gc_was:
            gc.enable()
    timings.sort()
    us = [t / 1000 for t in timings]
    return {
        "p50_us": percentile(us, 50),
        "p90_us": percentile(us, 90),
        "p99_us": percentile(us, 99),
        "mean_us": statistics.fmean(us),
    }


def decode_cost(store: Any, client_id: str) -> float:
    """Microseconds of StoredClient.from_record on one row (what every get pays after SQL)."""
    from flask_obdcr.storage import StoredClient

    record = store.get(client_id).to_record()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        StoredClient.from_record(record)
    return (time.perf_counter() - t0) / n * 1e6


# ----------------------------------------------------------------------------- main


def run(
    backend: Backend,
    sizes: list[int],
    make,
    lookups: int,
    seed: int,
    rounds: int = 3,
    quiet_wait: float = 0.0,
) -> list[dict]:
    rng = random.Random(seed)
    ids: list[str] = []
    results = []

    def rows(count: int) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            row = make(rng)
            ids.append(row["client_id"])
            yield row

    for size in sizes:
        t0 = time.perf_counter()
        backend.bulk_insert(rows(size - len(ids)))
        backend.finish_load()
        loaded = time.perf_counter() - t0
        db_bytes = backend.size_bytes()
        raw = time_lookups(
            backend.raw_get(), ids, lookups, random.Random(seed + size), rounds, quiet_wait
        )
        for label, store in [(backend.name, backend.store), *backend.variants]:
            stats = time_lookups(
                store.get, ids, lookups, random.Random(seed + size), rounds, quiet_wait
            )
            stats.update(
                store=label,
                clients=size,
                load_s=loaded,
                db_bytes=db_bytes,
                decode_us=decode_cost(store, ids[0]),
                driver_p50_us=raw["p50_us"],
                driver_p99_us=raw["p99_us"],
            )
            results.append(stats)
            print(
                f"  {label:10} {size:>9,} clients  p50 {stats['p50_us']:7.1f} us"
                f"  p99 {stats['p99_us']:7.1f} us  (loaded in {loaded:.0f} s,"
                f" {db_bytes / 2**20:,.0f} MiB)",
                file=sys.stderr,
            )
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| store | clients | on disk | p50 µs | p99 µs | mean µs | p50 vs smallest | p99 vs"
        " smallest | JSON decode µs | driver only p50 / p99 µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["store"] for r in results):
        rows = [r for r in results if r["store"] == name]
        base = rows[0]
        for r in rows:
            lines.append(
                f"| {name} | {r['clients']:,} | {r['db_bytes'] / 2**20:,.0f} MiB |"
                f" {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['mean_us']:.1f} |"
                f" {r['p50_us'] / base['p50_us']:.2f}x | {r['p99_us'] / base['p99_us']:.2f}x |"
                f" {r['decode_us']:.1f} |"
                f" {r['driver_p50_us']:.1f} / {r['driver_p99_us']:.1f} |"
            )
    return "\n".join(lines)


def chart(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no chart; pip install matplotlib)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for name in dict.fromkeys(r["store"] for r in results):
        rows = [r for r in results if r["store"] == name]
        xs = [r["clients"] for r in rows]
        line = ax.plot(xs, [r["p50_us"] for r in rows], marker="o", label=f"{name} p50")[0]
        ax.plot(
            xs,
            [r["p99_us"] for r in rows],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{name} p99",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stored clients")
    ax.set_ylabel("store.get latency, µs")
    ax.set_title("Client lookup by client_id")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path.relative_to(ROOT)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.store_lookup", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--lookups", type=int, default=20000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed rounds per size (median of each statistic)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each round, wait up to this long for an idle machine",
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument(
        "--pg-tuned",
        action="store_true",
        help="also time a prototype engine on the same PostgreSQL data"
        " (pool_pre_ping off, autocommit reads)",
    )
    parser.add_argument(
        "--record",
        choices=["full", "slim"],
        default="full",
        help="full: the real record; slim: without the software statement",
    )
    parser.add_argument("--dir", default=None, help="where the SQLite file goes (default: tmp)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    stores = args.stores.split(",")

    make, row_bytes = record_factory(args.record == "slim")
    print(f"record: {row_bytes:,} bytes of JSON per client ({args.record})", file=sys.stderr)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="obdcr-lookup-"))
    folder.mkdir(parents=True, exist_ok=True)
    need = int(max(sizes) * row_bytes * 1.3) * len(stores)
    if any(name not in ("sqlite", "postgres") for name in stores):
        raise SystemExit("--stores takes sqlite and/or postgres")
    free = shutil.disk_usage(folder).free
    if need > free * 0.8:
        raise SystemExit(
            f"about {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free: use --record slim"
            " or smaller --sizes"
        )
    results: list[dict] = []
    try:
        for name in stores:
            if name == "sqlite":
                backend: Backend = SQLiteBackend(folder)
            else:
                backend = PostgresBackend(args.pg_url, tuned=args.pg_tuned)
            try:
                results += run(
                    backend, sizes, make, args.lookups, args.seed, args.rounds, args.quiet_wait
                )
            finally:
                backend.close(args.keep)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)

    print()
    print(
        f"store.get(client_id), {args.rounds} x {args.lookups:,} random stored ids per size"
        " (median of the rounds), one call at a time"
        f" ({row_bytes:,} bytes of JSON per client, {args.record} records; database files in"
        f" the page cache)."
    )
    print()
    print(table(results))
    print()
    for name in dict.fromkeys(r["store"] for r in results):
        rows = [r for r in results if r["store"] == name]
        ratio = rows[-1]["p50_us"] / rows[0]["p50_us"]
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(
            f"{name}: {rows[-1]['clients']:,} / {rows[0]['clients']:,} clients, p50"
            f" {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)"
        )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "store_lookup.json").write_text(
        json.dumps(
            {
                "options": vars(args),
                "row_json_bytes": row_bytes,
                "cpus": os.cpu_count(),
                "git": git_version(),
                "results": results,
            },
            indent=1,
        )
    )
    chart(results, OUT_DIR / "store_lookup.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
