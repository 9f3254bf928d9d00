"""Keep the sandbox Directory and AnyBank running for a workshop: ``make serve``.

``python -m example_app.serve [--workdir instance] [--directory-port 8443] [--bank-port 9443]
[--revocation-cache-seconds N]`` starts both over HTTPS on 127.0.0.1, prints their URLs and the
commands to try, and runs until Ctrl-C (or SIGTERM), then stops both. The bank trusts an
answer about a certificate's revocation for ``--revocation-cache-seconds`` (its
``OBDCR_REVOCATION_CACHE_SECONDS``, 300 s by default). State stays in the working folder (default
``./instance``, git-ignored): the PKI, the registry and the bank's clients survive a restart.
Port 0 picks free ports.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .sandbox import Sandbox
from .serving import wait_for_signal


def banner(sandbox: Sandbox) -> str:
    tpp = f"python -m example_app.tpp --workdir {shlex.quote(str(sandbox.tpp_folder))}"
    ca = shlex.quote(str(sandbox.ca_bundle))
    directory = "python -m example_app.directory"
    instance = sandbox.folder
    if instance == (Path.cwd() / "instance").resolve():
        flask = "flask --app example_app"
    else:
        flask = "flask --app " + shlex.quote(f'example_app:create_app(instance_path="{instance}")')
    return f"""
Sandbox Open Banking Directory  {sandbox.directory_url}
AnyBank                         {sandbox.bank_url}
  discovery                     {sandbox.bank_url}/.well-known/openid-configuration
sandbox CA bundle               {sandbox.ca_bundle}
state                           {sandbox.folder}

Try (each step prints what it sends and gets):
  {directory} onboard --url {sandbox.directory_url} --ca {ca} \\
      --client-name "My TPP" --role AISP --redirect-uri https://tpp.example.com/cb
  {tpp} init --directory {sandbox.directory_url} --bank {sandbox.bank_url} \\
      --ca {ca} --org-id <org_id> --software-id <software_id>
  {tpp} keys      (then: upload-csr, download, p12, jwks, ssa, discover, request,
                   register, token, accounts, registration get|update|delete)
  {flask} obdcr clients list
  curl --cacert {ca} {sandbox.bank_url}/.well-known/openid-configuration

Then take trust away (the Directory's CRL and OCSP responder: {sandbox.directory_url}/pki/):
  {tpp} revoke    (--signing: the signing certificate)
  {directory} org-status --url {sandbox.directory_url} --ca {ca} <org_id> Revoked
  {flask} obdcr revalidate

Ctrl-C stops both servers.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app.serve", description=__doc__)
    parser.add_argument("--workdir", default="instance")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--directory-port", type=int, default=8443)
    parser.add_argument("--bank-port", type=int, default=9443)
    parser.add_argument(
        "--revocation-cache-seconds",
        type=int,
        default=None,
        help="the bank's OBDCR_REVOCATION_CACHE_SECONDS (default: 300)",
    )
    args = parser.parse_args(argv)
    sandbox = Sandbox(
        args.workdir,
        host=args.host,
        directory_port=args.directory_port,
        bank_port=args.bank_port,
        mode="process",
        revocation_cache_seconds=args.revocation_cache_seconds,
        log_files=False,  # the servers' request logs go to this terminal
    )
    try:
        sandbox.start()
        print(banner(sandbox), flush=True)
        wait_for_signal()
    finally:
        sandbox.stop()
        print("servers stopped", flush=True)
    return 0


if __name__ == "__main__":
    from example_app.serve import main as _main

    sys.exit(_main())
