"""Keep the sandbox Directory and AnyBank running for a workshop: ``make serve``.

``python -m example_app.serve [--workdir instance] [--directory-port 8443] [--bank-port 9443]
[--revocation-cache-seconds N]`` starts both over HTTPS on 127.0.0.1, prints their URLs and the
commands to try, and runs until Ctrl-C (or SIGTERM), then stops both. The bank trusts an
answer about a certificate's revocation for ``--revocation-cache-seconds`` (its
``OBDCR_REVOCATION_CACHE_SECONDS``, 300 s by default). State stays in the working folder (default
``./instance``, git-ignored): the PKI, the registry and the bank's clients survive a restart.

Ports (``make serve DIRECTORY_PORT=... BANK_PORT=...``): 8443 and 9443 by default; 0 picks
free ports (the banner shows which). Several attendees on one machine each take their own pair
(or 0) and, sharing a checkout, their own working folder (``make serve INSTANCE=...``).

One instance per working folder: when one already runs there, this says so, with its URLs,
and exits (status 0) without touching its files; a port another program holds is named, with
how to pick another, and the exit status is 1.

``--server granian`` (``make serve SERVER=granian``; default ``werkzeug``) runs the bank under
granian behind nginx (:class:`example_app.sandbox.Sandbox`, ``server="granian"``): nginx
listens on the bank's port, terminating TLS and passing the client certificate on; granian runs
example_app/wsgi.py's production command line on a free loopback port. It needs nginx with
its njs module (``apt-get install nginx libnginx-mod-http-js``) and granian in this Python
(``.venv/bin/pip install granian``, or the test or bench extra); without them it says what
to install and exits with status 1, touching nothing. The banner says which server runs the
bank.

``--reset`` (``make reset``) removes the working folder, the whole workshop state, once no
instance runs there; with ``--stop`` (``make reset STOP=1``) it first stops the one that does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .directory.cli import directory_command, installed_command, shown_path
from .operator import SANDBOX_PASSWORD, SANDBOX_USER
from .sandbox import SERVERS, Sandbox, SandboxError, SandboxRunning, missing_for, running
from .serving import wait_for_signal

#: what a sandbox working folder holds (see example_app.sandbox): ``--reset`` removes a
#: folder only if it holds some of these and nothing that marks a project (a .git, a
#: pyproject.toml)
STATE_ENTRIES = ("anybank.json", "obdcr.db", "directory", "tls", "tpp", "logs", "run")
NOT_STATE = (".git", "pyproject.toml", "setup.py", "Makefile")
#: where ``make serve`` listens by default (and where obdcr-tpp looks when not told)
DEFAULT_DIRECTORY_URL = "https://127.0.0.1:8443"
DEFAULT_BANK_URL = "https://127.0.0.1:9443"


DEFAULT_TPP_URL = "https://127.0.0.1:7443"


def _make_variable(option: str) -> str:
    return {"directory": "DIRECTORY_PORT", "bank": "BANK_PORT", "tpp": "TPP_PORT"}[option]


#: the README's first step, as a fresh shell runs it (the redirect URI: the TPP's page's
#: callback, onboard's default)
ONBOARD = '--client-name "My TPP" --role AISP'


def served_by(sandbox: Sandbox) -> str:
    """Which server runs the bank, as the banner says it."""
    # a sandbox description without `server` (the banner's test gives a namespace) is the
    # default's, Werkzeug's
    if getattr(sandbox, "server", "werkzeug") == "granian":
        return (
            f"granian ({sandbox.granian_workers} workers on {sandbox.bank_upstream}) behind nginx"
            f" (logs: {shown_path(sandbox.nginx_folder)})"
        )
    return "Werkzeug's server (SERVER=granian: granian behind nginx)"


def missing_message(server: str, missing: list[str]) -> str:
    """What to tell someone whose machine lacks what ``server`` needs."""
    lines = [
        f"Cannot run AnyBank under {server} here: granian gives a WSGI app no client"
        " certificate, so the bank runs behind nginx, which terminates TLS and passes the"
        " certificate on. Missing:",
        *(f"  - {what}" for what in missing),
        "Nothing was started or written. Without them: make serve (the bank under Werkzeug).",
    ]
    return "\n".join(lines)


def banner(sandbox: Sandbox) -> str:
    """The URLs, and the README's commands as they run from a fresh shell in this checkout
    (``.venv/bin/...``, nothing to activate), with the options this instance needs beyond the
    ``make serve`` defaults (another working folder, other ports)."""
    instance = sandbox.folder
    default_instance = instance == (Path.cwd() / "instance").resolve()
    directory_url = str(sandbox.directory_url or "")
    bank_url = str(sandbox.bank_url or "")
    default_urls = (
        directory_url.rstrip("/") == DEFAULT_DIRECTORY_URL
        and bank_url.rstrip("/") == DEFAULT_BANK_URL
    )
    ca = shown_path(sandbox.ca_bundle)
    tpp = installed_command("obdcr-tpp")
    onboard = f"{tpp} onboard {ONBOARD}"
    if not default_instance:
        tpp += f" --workdir {shown_path(sandbox.tpp_folder)}"
        onboard = f"{tpp} onboard {ONBOARD}"
    tpp_url = str(sandbox.tpp_url or "")
    if tpp_url and tpp_url.rstrip("/") != DEFAULT_TPP_URL:
        onboard += f" --redirect-uri {tpp_url}/callback"
    if not (default_instance and default_urls):
        onboard += f" \\\n      --directory {directory_url} --bank {bank_url} --ca {ca}"
    directory = directory_command(
        "org-status <org_id> Revoked", url=directory_url, ca_file=str(sandbox.ca_bundle)
    )
    if default_instance:
        flask = installed_command("flask")  # the checkout's .flaskenv: FLASK_APP=example_app
        reset = "make reset"
    else:
        flask = installed_command("flask") + " --app "
        flask += shlex.quote(f'example_app:create_app(instance_path="{instance}")')
        reset = f"make reset INSTANCE={shlex.quote(str(instance))}"
    directory_port = urlsplit(directory_url).port
    bank_port = urlsplit(bank_url).port
    tpp_port = urlsplit(tpp_url).port if tpp_url else None
    ports = f"DIRECTORY_PORT={directory_port} BANK_PORT={bank_port} TPP_PORT={tpp_port}"
    operator = f"{SANDBOX_USER} / {SANDBOX_PASSWORD}"  # the sandbox's; its page says so
    return f"""
Sandbox Open Banking Directory  {sandbox.directory_url}
  portal                        {sandbox.directory_url}/portal/
AnyBank                         {sandbox.bank_url}
  served by                     {served_by(sandbox)}
  discovery                     {sandbox.bank_url}/.well-known/openid-configuration
  console                       {sandbox.bank_url}/console/  (sign in: {operator})
The TPP's web page              {tpp_url or "(not started)"}/
  its redirect URI              {tpp_url or "(none)"}/callback
sandbox CA bundle               {sandbox.ca_bundle}
state                           {sandbox.folder}
ports                           {ports}
  (taken? others: make serve DIRECTORY_PORT=8444 BANK_PORT=9444 TPP_PORT=7444; 0: any free port)

Try, in another terminal, in this checkout (nothing to activate; each step prints what it
sends and gets, and what to run next):
  {onboard}
  {tpp} keys      (then: upload-csr, download, jwks, ssa, discover,
      request, explain, register, token, registration get|update|delete)
  {tpp} status    (what is done, the org_id and software_id, what is next)
  or, in a browser, the portal ({sandbox.directory_url}/portal/): create the organisation,
      add a software statement; its page prints the commands to run, in order
  then the customer connects: open {tpp_url or DEFAULT_TPP_URL}/ in a browser, Connect, sign in
      at AnyBank as mits / sandbox, choose accounts (the browser warns about the sandbox CA:
      proceed, or trust {ca}); or {tpp} consent
  {tpp} accounts  (then: refresh, revoke-consent)
  {flask} obdcr clients list
  curl --cacert {ca} {sandbox.bank_url}/.well-known/openid-configuration

Then take trust away (the Directory's CRL and OCSP responder: {sandbox.directory_url}/pki/):
  {tpp} revoke    (--signing: the signing certificate)
  {directory}   (the org_id: `{tpp} status`)
  {flask} obdcr revalidate

Start afresh: stop the servers, then `{reset}` removes {sandbox.folder}.
Ctrl-C stops the servers (and the TPP's page).
"""


def _answers(url: str | None) -> bool:
    """Whether something accepts connections at the URL's host and port."""
    if not url:
        return False
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=2).close()
    except (OSError, ValueError):
        return False
    return True


def already_running(folder: Path, info: dict[str, Any]) -> str:
    """What to tell someone who starts a second instance on the same working folder."""
    lines = [
        f"The sandbox is already running from {folder} (pid {info.get('pid') or 'unknown'})"
        " and stays as it is:"
    ]
    servers = (
        ("Sandbox Open Banking Directory", "directory_url"),
        ("AnyBank", "bank_url"),
        ("The TPP's web page", "tpp_url"),
    )
    for label, key in servers:
        url = info.get(key)
        state = "answering" if _answers(url) else "not answering yet: still starting?"
        lines.append(f"  {label:<31} {url or '(starting)'}  ({state})")
    if info.get("ca_bundle"):
        lines.append(f"  {'sandbox CA bundle':<31} {info['ca_bundle']}")
    lines += [
        "Use it (its terminal shows the requests; Ctrl-C there stops it), or run a second one",
        "with a folder and ports of its own: make serve INSTANCE=instance2 DIRECTORY_PORT=0"
        " BANK_PORT=0 TPP_PORT=0",
    ]
    return "\n".join(lines)


def ports_in_use(host: str, ports: dict[str, int]) -> list[tuple[str, int]]:
    """The (name, port) of ``ports`` that another program listens on (0 is never in use)."""
    taken = []
    for name, port in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # as the servers bind (Werkzeug sets SO_REUSEADDR): a port in TIME_WAIT is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                taken.append((name, port))
    return taken


def port_message(host: str, taken: list[tuple[str, int]]) -> str:
    named = ", ".join(f"{port} ({_make_variable(name)})" for name, port in taken)
    return (
        f"Cannot start: another program already listens on {host} port(s) {named}.\n"
        "Pick others: make serve DIRECTORY_PORT=8444 BANK_PORT=9444 TPP_PORT=7444 (0: any free"
        " port; the banner shows which)."
    )


def looks_like_state(folder: Path) -> bool:
    names = {entry.name for entry in folder.iterdir()}
    if names & set(NOT_STATE):
        return False
    return not names or bool(names & set(STATE_ENTRIES))


def reset(folder: Path, *, stop: bool, timeout: float = 30.0) -> int:
    """Remove the working folder once no instance runs there (``stop``: stop it first)."""
    folder = folder.resolve()
    info = running(folder)
    if info is not None:
        pid = info.get("pid")
        if not stop or not pid:
            print(
                f"Not reset: the sandbox is running from {folder} (pid {pid or 'unknown'}).\n"
                "Stop it first (Ctrl-C in its terminal), or let make stop it: make reset STOP=1",
                file=sys.stderr,
            )
            return 1
        print(f"stopping the sandbox running from {folder} (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running(folder) is not None:
            if time.monotonic() > deadline:
                print(f"Not reset: pid {pid} did not stop in {timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.1)
    if not folder.exists():
        print(f"nothing to reset: {folder} does not exist")
        return 0
    if not folder.is_dir() or not looks_like_state(folder):
        print(
            f"Not reset: {folder} does not look like a sandbox working folder (expected some of"
            f" {', '.join(STATE_ENTRIES)}); remove it by hand if you mean it",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(folder)
    print(
        f"removed {folder}: the sandbox PKI and the Directory's registry, AnyBank's clients and"
        " tokens, the TPP's files. The next `make serve` starts afresh."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app.serve", description=__doc__)
    parser.add_argument("--workdir", default="instance")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--directory-port", type=int, default=8443, help="0: a free port")
    parser.add_argument("--bank-port", type=int, default=9443, help="0: a free port")
    parser.add_argument(
        "--tpp-port", type=int, default=7443, help="the TPP's web page; 0: a free port"
    )
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="werkzeug",
        help="what runs the bank: Werkzeug's server, or granian behind nginx (default: werkzeug)",
    )
    parser.add_argument(
        "--revocation-cache-seconds",
        type=int,
        default=None,
        help="the bank's OBDCR_REVOCATION_CACHE_SECONDS (default: 300)",
    )
    parser.add_argument(
        "--reset", action="store_true", help="remove the working folder instead (make reset)"
    )
    parser.add_argument(
        "--stop", action="store_true", help="with --reset: stop a running instance first"
    )
    args = parser.parse_args(argv)
    folder = Path(args.workdir).resolve()
    if args.reset:
        return reset(folder, stop=args.stop)

    missing = missing_for(args.server)
    if missing:
        print(missing_message(args.server, missing), file=sys.stderr, flush=True)
        return 1
    info = running(folder)
    if info is not None:
        print(already_running(folder, info), flush=True)
        return 0
    taken = ports_in_use(
        args.host,
        {"directory": args.directory_port, "bank": args.bank_port, "tpp": args.tpp_port},
    )
    if taken:
        print(port_message(args.host, taken), file=sys.stderr, flush=True)
        return 1

    sandbox = Sandbox(
        folder,
        host=args.host,
        directory_port=args.directory_port,
        bank_port=args.bank_port,
        tpp_port=args.tpp_port,
        mode="process",
        revocation_cache_seconds=args.revocation_cache_seconds,
        log_files=False,  # the servers' request logs go to this terminal
        server=args.server,
    )
    try:
        sandbox.start()
    except SandboxRunning as exc:  # started by someone else in the meantime
        found = {"pid": exc.pid, "directory_url": exc.directory_url, "bank_url": exc.bank_url}
        print(already_running(folder, found), flush=True)
        return 0
    except SandboxError as exc:
        print(f"Cannot start the sandbox: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        print(banner(sandbox), flush=True)
        wait_for_signal()
    finally:
        sandbox.stop()
        print("servers stopped", flush=True)
    return 0


if __name__ == "__main__":
    from example_app.serve import main as _main

    sys.exit(_main())
