"""Paths and the constants every scenario agrees on (the bank's issuer, the TPP's metadata)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
OUT_DIR = BENCH / "out"
LUA_SCRIPT = BENCH / "wrk" / "post_lines.lua"
NODE_DIR = BENCH / "oidc_provider"
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent

#: the bank's issuer (the public URL nginx would serve): what every request JWT has as aud
ISSUER = "https://as.bench-bank.test"
REDIRECT_URIS = ["https://tpp.bench.example/cb"]
ROLES = ["AISP", "PISP"]
SCOPE = "openid accounts payments"
#: where the (imagined) TLS-terminating proxy puts the client certificate: nginx's
#: ``$ssl_client_escaped_cert``, honoured by the bank from 127.0.0.1 only
CERT_HEADER = "X-SSL-Client-Cert"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/obdcr_bench"
#: the environment variable through which a server process tells the app factories of
#: :mod:`benchmarks.harness.apps` their instance folder (granian's ``--factory`` calls a
#: factory without arguments, so nothing can be passed in the app's import string)
INSTANCE_ENV = "OBDCR_BENCH_INSTANCE"
