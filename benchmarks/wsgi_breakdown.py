"""Where one registration's time goes inside the bank: the WSGI app called in process.

The example bank exactly as ``benchmarks.http_registration`` serves it (``behind_nginx``, the
certificate in ``X-SSL-Client-Cert``, the sandbox Directory service over HTTPS for the JWKS),
but called directly with a WSGI environ, as gunicorn would call it: no HTTP server, no
network, one thread. Requests are signed beforehand, each with its own jti.

    .venv/bin/python -m benchmarks.wsgi_breakdown                  # CPU per registration
    .venv/bin/python -m benchmarks.wsgi_breakdown --steps          # time per policy and step
    .venv/bin/python -m benchmarks.wsgi_breakdown --profile        # cProfile, top functions
    .venv/bin/python -m benchmarks.wsgi_breakdown --store postgres # OBDCR_DATABASE_URL
    .venv/bin/python -m benchmarks.wsgi_breakdown --redis-url redis://127.0.0.1:6379/0

``--steps`` wraps each policy and a few functions in a timer (which adds about 1 µs each):
read it for proportions, and the plain run for the total.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import json
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from .harness.common import CERT_HEADER, DEFAULT_PG_URL
from .harness.onboarding import onboard, start_directory
from .harness.processes import Processes
from .harness.servers import bank_config, pg_prepare
from .harness.signing import write_registration_requests


def environ(body: bytes, certificate_header: str) -> dict:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/register",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/jwt",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "as.bench-bank.test",
        "HTTP_X_FORWARDED_PROTO": "https",
        "HTTP_X_SSL_CLIENT_CERT": certificate_header,
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def timed_steps(totals: dict[str, float]) -> None:
    """Wrap each policy and the main steps around them in a timer adding to ``totals``."""
    from flask_obdcr import certificates, jose, registration, views
    from flask_obdcr.policies import base
    from flask_obdcr.storage import base as storage_base

    def run(self, context):
        for item in self._policies:
            started = time.perf_counter()
            item(context)
            totals[f"policy {item.name}"] += time.perf_counter() - started

    # the benchmark times each policy by patching the class (for this process only)
    base.Pipeline.run = run  # type: ignore[method-assign]

    def wrap(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - started

        setattr(owner, name, timed)

    wrap(registration.Registrar, "register", "Registrar.register (all of the core)")
    wrap(storage_base.ClientStore, "add", "store add (record encoding + insert)")
    wrap(jose, "verify", "  of which: signature verification")
    wrap(jose, "decode", "  of which: JWT decoding")
    wrap(certificates.TransportCertificateVerifier, "verify", "  of which: chain check")
    wrap(views, "json_response", "view: JSON response")
    wrap(views, "read_body", "view: read body")
    wrap(views, "_with_client_uri", "view: registration_client_uri")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.wsgi_breakdown", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("-n", type=int, default=3000, help="measured registrations")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--redis-url", default=None, help="the Redis caches, as OBDCR_REDIS_URL")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--steps", action="store_true")
    mode.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="obdcr-wsgi-"))
    config: dict = {}
    try:
        with Processes() as procs:
            directory_url, ca_file = start_directory(procs, work)
            tpp = onboard(directory_url, ca_file)
            warm = 300
            requests_file = work / "requests.txt"
            write_registration_requests(tpp, requests_file, warm + args.n, 3600)
            bodies = [line.encode() for line in requests_file.read_text().split()]
            instance = work / "instance"
            instance.mkdir()
            if args.store == "postgres":
                pg_prepare(args.pg_url)
            config = bank_config(tpp, args.store, args.pg_url, args.redis_url)
            (instance / "anybank.json").write_text(json.dumps(config))
            from example_app.wsgi import behind_nginx

            app = behind_nginx(
                header=CERT_HEADER, trusted_proxies=["127.0.0.1"], instance_path=instance
            )
            header = tpp.escaped_transport_pem

            def register(body: bytes) -> None:
                status = []
                b"".join(app(environ(body, header), lambda s, h, e=None: status.append(s)))
                if not status[0].startswith("201"):
                    raise SystemExit(f"registration refused: {status[0]}")

            for body in bodies[:warm]:
                register(body)
            measured = bodies[warm:]
            totals: dict[str, float] = defaultdict(float)
            if args.steps:
                timed_steps(totals)
            gc.disable()
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for body in measured:
                    register(body)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
                return 0
            rounds, per_round = 6, len(measured) // 6
            cpu = []
            for n in range(rounds):
                started = time.process_time()
                for body in measured[n * per_round : (n + 1) * per_round]:
                    register(body)
                cpu.append((time.process_time() - started) / per_round * 1e6)
            gc.enable()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        prefix = config.get("OBDCR_REDIS_PREFIX")
        if args.redis_url and prefix:  # this run's jti and JWKS keys (its own prefix)
            import redis

            client = redis.Redis.from_url(args.redis_url)
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
            client.close()

    print(f"CPU per registration ({args.store}), µs over {rounds} rounds of {per_round}:")
    print(f"  min {min(cpu):.0f}, median {sorted(cpu)[rounds // 2]:.0f}")
    if args.steps:
        print("time per registration, µs (timers included):")
        for label, seconds in sorted(totals.items(), key=lambda item: -item[1]):
            print(f"  {seconds / (rounds * per_round) * 1e6:7.1f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
