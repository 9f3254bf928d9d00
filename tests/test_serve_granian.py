"""``make serve SERVER=granian``: the workshop's bank under granian behind nginx.

``python -m example_app.serve --server granian`` (what ``make serve SERVER=granian`` runs) on
free ports in a temporary working folder: nginx on the bank's port, terminating TLS and
passing the client certificate on, granian behind it on loopback. Then the workshop as an
attendee does it: the TPP command line registers and gets a token through nginx (the token
bound to the transport certificate), the customer's consent journey (the bank's pages as a
browser plays them, the TPP's callback, the chosen accounts), the operator console's
sign-in, the Directory's portal and the TPP's page. Ctrl-C stops everything, nginx and
granian's workers included.

Without nginx (or its njs module, or granian) it says what to install and exits with status
1, touching nothing: shown with the nginx search pointed at an empty folder
(``ANYBANK_NGINX_PATH``, ``ANYBANK_NGINX_MODULES``) and with granian hidden from the import
system.

Without granian the granian tests skip outside CI (``pip install -e '.[test]'``) and fail in
CI; without nginx or njs they fail, as tests/test_nginx.py's do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from child_process import checkout_environment
from cryptography import x509
from nginx_helpers import find_nginx
from test_example_app import _thumbprint, read_serve_banner

from example_app.demo import CHOSEN_ACCOUNTS, CUSTOMER, Browser
from example_app.operator import SANDBOX_PASSWORD, SANDBOX_USER
from example_app.serve import main as serve_main
from example_app.serve import served_by
from flask_obdcr.storage import hash_secret

REPO = Path(__file__).resolve().parent.parent
BIN = os.path.dirname(sys.executable)
#: the virtual environment is there: neither install stamp is remade
KEEP_STAMPS = ["-o", ".venv/.installed", "-o", ".venv/.installed-demo"]
#: what a developer's environment might set that would change what is tested
NOT_INHERITED = (
    "SERVER", "INSTANCE", "DIRECTORY_PORT", "BANK_PORT", "TPP_PORT", "ANYBANK_NGINX_PATH",
    "ANYBANK_NGINX_MODULES", "TPP_WORKDIR", "CI",
)  # fmt: skip
FLOW = ("keys", "upload-csr", "download", "ssa", "discover", "request", "register", "token")

has_granian = importlib.util.find_spec("granian") is not None
needs_granian = pytest.mark.skipif(
    not has_granian and not os.environ.get("CI"),
    reason="could not import 'granian': pip install -e '.[test]'",
)


def _env(**extra: str) -> dict[str, str]:
    return checkout_environment(NOT_INHERITED, **extra)


def _port_closed(address: str) -> bool:
    parts = urlsplit(address if "://" in address else f"http://{address}")
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=2).close()
    except OSError:
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def tpp(workdir: Path, *args: str) -> str:
    """``obdcr-tpp --workdir WORKDIR ARGS`` as a process, from the checkout; its output, the
    exit status 0 asserted."""
    done = subprocess.run(
        [sys.executable, "-m", "example_app.tpp", "--workdir", str(workdir), *args],
        cwd=REPO,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"obdcr-tpp {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


# -- the workshop, under granian ----------------------------------------------------------------


@needs_granian
def test_serve_with_granian_behind_nginx_runs_the_whole_workshop(tmp_path):
    find_nginx()  # without it: fails saying what to install
    if shutil.which("make"):  # make passes SERVER through, werkzeug by default
        recipe = subprocess.run(
            ["make", "-n", *KEEP_STAMPS, "serve", "SERVER=granian", f"BIN={BIN}"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert "--server granian" in recipe
        default = subprocess.run(
            ["make", "-n", *KEEP_STAMPS, "serve", f"BIN={BIN}"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert "--server werkzeug" in default
    instance = tmp_path / "instance"
    process = subprocess.Popen(
        [sys.executable, "-m", "example_app.serve", "--workdir", str(instance),
         "--server", "granian", "--directory-port", "0", "--bank-port", "0", "--tpp-port", "0"],
        cwd=REPO, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        banner, directory_url, bank_url = read_serve_banner(process, seconds=90)
        served = re.search(
            r"^  served by\s+granian \(2 workers on (127\.0\.0\.1:\d+)\) behind nginx", banner, re.M
        )
        assert served, banner
        upstream = served.group(1)
        tpp_url = re.search(r"^The TPP's web page\s+(https://\S+)/$", banner, re.M).group(1)
        ca = str(instance / "directory" / "ca-bundle.pem")
        nginx_pid = int((instance / "run" / "nginx" / "nginx.pid").read_text())
        assert _alive(nginx_pid)
        with requests.Session() as http:
            http.trust_env = False
            http.verify = ca
            # discovery, through nginx: the issuer is nginx's URL
            discovery = http.get(f"{bank_url}/.well-known/openid-configuration", timeout=10)
            assert discovery.status_code == 200
            assert discovery.headers["Server"].startswith("nginx")
            assert discovery.json()["issuer"] == bank_url
            assert discovery.json()["registration_endpoint"] == f"{bank_url}/register"
            # granian behind it: plain HTTP on loopback, another port
            assert urlsplit(bank_url).port != int(upstream.rsplit(":", 1)[1])
            direct = http.get(f"http://{upstream}/", timeout=10)
            assert direct.status_code == 200 and "granian" in direct.headers.get("Server", "")
            # the Directory's portal and the TPP's page, as under Werkzeug
            assert http.get(f"{directory_url}/portal/", timeout=10).status_code == 200
            assert http.get(f"{tpp_url}/", timeout=10).status_code == 200

        # the TPP command line: onboard, then every step up to a token, through nginx
        workdir = instance / "tpp"
        tpp(
            workdir, "onboard", "--client-name", "Granian TPP", "--role", "AISP",
            "--redirect-uri", f"{tpp_url}/callback",
            "--directory", directory_url, "--bank", bank_url, "--ca", ca,
        )  # fmt: skip
        for step in FLOW:
            out = tpp(workdir, step)
            if step == "register":
                assert "HTTP 201 Created" in out, out
        registration = json.loads((workdir / "registration.json").read_text())
        client_id = registration["client_id"]
        assert registration["registration_client_uri"] == f"{bank_url}/register/{client_id}"
        token = json.loads((workdir / "token.json").read_text())["access_token"]
        transport = x509.load_pem_x509_certificate((workdir / "transport.pem").read_bytes())
        with sqlite3.connect(instance / "obdcr.db") as db:
            row = db.execute(
                "SELECT client_id, x5t_s256 FROM access_tokens WHERE token_hash = ?",
                [hash_secret(token)],
            ).fetchone()
        assert row == (client_id, _thumbprint(transport))  # bound to the certificate nginx saw

        # the customer's consent journey: the bank's pages across granian's two workers
        asked = tpp(workdir, "consent")
        authorize_url = re.search(rf"^({re.escape(bank_url)}/authorize\?\S+)$", asked, re.M)
        assert authorize_url, asked
        browser = Browser(ca)
        browser.session.trust_env = False
        opened = browser.open(authorize_url.group(1))
        assert opened.status_code == 303, opened.text[:500]
        sign_in = browser.follow(opened)
        user, password = CUSTOMER
        signed_in = browser.submit(sign_in, {"user": user, "password": password})
        assert signed_in.status_code == 303, signed_in.text[:500]
        consent = browser.follow(signed_in)
        approved = browser.submit(
            consent, {"account": list(CHOSEN_ACCOUNTS), "decision": "approve"}
        )
        location = approved.headers.get("Location", "")
        assert approved.status_code == 302 and location.startswith(f"{tpp_url}/callback#")
        tpp(workdir, "callback", location)
        accounts = tpp(workdir, "accounts")
        listed = re.findall(r'"AccountId": "(\d+)"', accounts)
        assert sorted(set(listed)) == sorted(CHOSEN_ACCOUNTS), accounts

        # the operator console: its sign-in page through nginx, then the new client
        operator = Browser(ca)
        operator.session.trust_env = False
        page = operator.get(f"{bank_url}/console/")
        assert page.status == 200 and urlsplit(page.url).path == "/console-login"
        assert {name for name, _value, _kind in page.form()["fields"]} >= {"user", "password"}
        entered = operator.submit(page, {"user": SANDBOX_USER, "password": SANDBOX_PASSWORD})
        assert entered.status_code == 303, entered.text[:500]
        console = operator.session.get(f"{bank_url}/console/", verify=ca, timeout=10)
        assert console.status_code == 200 and client_id in console.text

        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, rest[-3000:]
    assert "servers stopped" in rest
    assert _port_closed(bank_url) and _port_closed(upstream) and _port_closed(directory_url)
    assert not _alive(nginx_pid)


# -- what it says without nginx, njs or granian ---------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "said"),
    [("ANYBANK_NGINX_PATH", "nginx not found"), ("ANYBANK_NGINX_MODULES", "njs module")],
)
def test_serve_granian_without_nginx_says_what_to_install_and_touches_nothing(
    variable, said, tmp_path
):
    empty = tmp_path / "empty"
    empty.mkdir()
    instance = tmp_path / "instance"
    if shutil.which("make"):
        command = ["make", "-s", *KEEP_STAMPS, "serve", "SERVER=granian", f"INSTANCE={instance}",
                   "DIRECTORY_PORT=0", "BANK_PORT=0", "TPP_PORT=0", f"BIN={BIN}"]  # fmt: skip
    else:  # pragma: no cover - make is part of the dev setup
        command = [sys.executable, "-m", "example_app.serve", "--workdir", str(instance),
                   "--server", "granian"]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=REPO,
        env=_env(**{variable: str(empty)}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    if command[0] != "make":
        assert done.returncode == 1
    assert said in done.stderr and str(empty) in done.stderr
    assert "apt-get install nginx libnginx-mod-http-js" in done.stderr
    assert "make serve (the bank under Werkzeug)" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not instance.exists()


def test_serve_granian_without_granian_says_what_to_pip_install(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec

    def hidden(name: str, *args, **kwargs):
        return None if name == "granian" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ANYBANK_NGINX_PATH", str(tmp_path))  # and no nginx either
    instance = tmp_path / "instance"
    status = serve_main(["--workdir", str(instance), "--server", "granian"])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert ".venv/bin/pip install granian" in err
    assert "the test or the bench extra: .venv/bin/pip install -e '.[test]'" in err
    assert f"nginx not found (looked in {tmp_path})" in err
    assert not instance.exists()


def test_the_banner_names_the_banks_server(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.chdir(REPO)

    werkzeug = SimpleNamespace(server="werkzeug")
    assert served_by(werkzeug).startswith("Werkzeug's server")  # type: ignore[arg-type]
    granian = SimpleNamespace(
        server="granian",
        granian_workers=2,
        bank_upstream="127.0.0.1:40001",
        nginx_folder=REPO / "instance" / "run" / "nginx",
    )
    assert served_by(granian) == (  # type: ignore[arg-type]
        "granian (2 workers on 127.0.0.1:40001) behind nginx (logs: instance/run/nginx)"
    )
