"""The whole registration story over real HTTPS: ``python -m example_app.demo`` (``make demo``).

Starts the sandbox Open Banking Directory and AnyBank on free loopback ports (each in its own
process, with certificates from the sandbox PKI), then plays the TPP with the same commands a
workshop attendee types (``python -m example_app.tpp ...``), printing each step, and stops
both servers. Exit status 0 when every step did what it should (including the refusals).

The last step revokes the TPP's transport certificate at the Directory and shows the bank
refusing it; so that it need not wait the default five minutes, the demo's bank refreshes its
cached revocation answers after :data:`REVOCATION_CACHE_SECONDS` seconds.

Options: ``--workdir DIR`` keeps the files there (default: a temporary folder, removed at the
end), ``--auth-method private_key_jwt`` registers for private_key_jwt instead of
tls_client_auth, ``--threads`` runs the servers in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import click

from ._util import abbreviate, pretty, read_json
from .sandbox import Sandbox

WIDTH = 92
TPP_PROG = "python -m example_app.tpp"
DIRECTORY_PROG = "python -m example_app.directory"
#: the demo bank's OBDCR_REVOCATION_CACHE_SECONDS (a real bank's default is 300)
REVOCATION_CACHE_SECONDS = 2


class StepFailed(Exception):
    """A step did not end the way the walkthrough expects."""


class Walkthrough:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.number = 0

    # -- printing ------------------------------------------------------------------------

    def step(self, title: str, explanation: str) -> None:
        self.number += 1
        heading = f"== {self.number}. {title} "
        print("\n" + heading + "=" * max(4, WIDTH - len(heading)))
        for paragraph in textwrap.dedent(explanation).strip().split("\n\n"):
            print(textwrap.fill(" ".join(paragraph.split()), WIDTH))
        sys.stdout.flush()

    @staticmethod
    def command(line: str) -> None:
        print(f"\n$ {line}")
        sys.stdout.flush()

    # -- running the command lines -------------------------------------------------------

    def _run(self, group: click.Group, prog: str, args: list[str], *, expect_failure: bool):
        try:
            result = group.main(args=args, prog_name=prog, standalone_mode=False)
        except click.ClickException as exc:
            if expect_failure:
                print(f"(refused, as it should be: {exc.format_message()})")
                return None
            raise StepFailed(exc.format_message()) from None
        if expect_failure:
            raise StepFailed(f"`{prog} {' '.join(args)}` should have been refused")
        sys.stdout.flush()
        return result

    def tpp(self, *args: str, expect_failure: bool = False, quiet: str | None = None) -> Any:
        """Run a TPP command, printing what it prints; with ``quiet`` (say, "as in step 10"),
        only its HTTP status line and that remark."""
        from .tpp import cli

        self.command(f"{TPP_PROG} {shlex.join(args)}")
        workdir = ["--workdir", str(self.sandbox.tpp_folder)]
        if quiet is None:
            return self._run(cli, TPP_PROG, [*workdir, *args], expect_failure=expect_failure)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = self._run(cli, TPP_PROG, [*workdir, *args], expect_failure=expect_failure)
        status = re.search(r"^HTTP \d+ .*$", printed.getvalue(), flags=re.M)
        print(f"{status.group(0) + ' ' if status else ''}(output left out: {quiet})")
        return result

    def directory(self, *args: str) -> Any:
        from .directory import cli

        self.command(f"{DIRECTORY_PROG} {shlex.join(args)}")
        return self._run(cli, DIRECTORY_PROG, list(args), expect_failure=False)

    def bank_cli(self, *args: str) -> str:
        """``flask --app example_app ...`` against the running bank's instance folder."""
        from .bank import create_app

        folder = self.sandbox.folder
        if folder == (Path.cwd() / "instance").resolve():
            app_arg = "example_app"
        else:
            app_arg = f'example_app:create_app(instance_path="{folder}")'
        self.command(f"flask --app {shlex.quote(app_arg)} {shlex.join(args)}")
        result = create_app(instance_path=folder).test_cli_runner().invoke(args=list(args))
        if result.exit_code != 0:
            raise StepFailed(f"flask {' '.join(args)}: {result.output}")
        return result.output


def run(sandbox: Sandbox, *, auth_method: str) -> None:
    walk = Walkthrough(sandbox)
    ca = str(sandbox.ca_bundle)

    walk.step(
        "The PTC adds a new software statement at the Directory",
        """The TPP's technical contact registers the organisation and its new software with
        the Open Banking Directory: a name, the roles it will play (AISP: account
        information) and the redirect URIs. The Directory assigns an org_id and a
        software_id. No certificate is attached yet.""",
    )
    software = walk.directory(
        "onboard",
        "--url",
        sandbox.directory_url or "",
        "--ca",
        ca,
        "--org-name",
        "Sandbox TPP Ltd",
        "--client-name",
        "Sandbox TPP - AISP",
        "--role",
        "AISP",
        "--redirect-uri",
        "https://tpp.example.com/callback",
        "--redirect-uri",
        "https://tpp.example.com/oauth/return",
    )
    org_id, software_id = software["org_id"], software["software_id"]

    walk.step(
        "The TPP's tools learn where everything is",
        """The TPP command line keeps its files in one folder. It needs the Directory's URL,
        the bank's URL, the sandbox CA bundle (to check both servers' HTTPS certificates)
        and the two identifiers the Directory just gave out.""",
    )
    walk.tpp(
        "init",
        "--directory",
        sandbox.directory_url or "",
        "--bank",
        sandbox.bank_url or "",
        "--ca",
        ca,
        "--org-id",
        org_id,
        "--software-id",
        software_id,
    )

    walk.step(
        "Two key pairs and their certificate signing requests",
        """One key is for the transport (network) certificate that opens mutual TLS
        connections to banks, the other for the signing certificate whose key signs the
        TPP's JWTs. Both CSRs carry the subject the Directory insists on:
        CN=<software_id>, OU=<org_id>, O=OpenBanking, C=GB.""",
    )
    walk.tpp("keys")

    walk.step(
        "Upload the CSRs: the Directory issues the certificates",
        """The Directory's issuing CA signs each CSR, attaches the certificate to the
        software and publishes its public key in the software's JWKS: use "tls" for the
        transport key, "sig" for the signing key, each with its certificate in x5c.""",
    )
    walk.tpp("upload-csr")

    walk.step(
        "Download the certificates (PEM) and make a .p12",
        """The transport certificate and its key go together into a PKCS#12 file, which is
        what browsers and API tools import; the command line itself uses the PEM files.""",
    )
    walk.tpp("download")
    walk.tpp("p12")

    walk.step(
        "The keys as the Directory publishes them",
        """This is the software_jwks_endpoint a bank will read to check the TPP's
        signatures, and whose x5c certificates tie the transport certificate to the
        software. A revoked key would move to the second set.""",
    )
    walk.tpp("jwks")

    walk.step(
        "Generate the software statement (SSA)",
        """The Directory signs (PS256) a JWT describing the organisation and the software;
        its issuer is "OpenBanking Ltd" and its kid names the Directory key that signed it.
        The software_jwks_endpoint claim says where the TPP's own keys are.""",
    )
    walk.tpp("ssa")

    walk.step(
        "Find the bank's endpoints",
        """The discovery document is public: it is fetched without a client certificate. It
        gives the issuer (the audience of the registration request), the registration and
        token endpoints, and what the bank accepts.""",
    )
    walk.tpp("discover")

    walk.step(
        "Build and sign the registration request",
        """The request is a JWT of its own, signed PS256 with the signing key (the header's
        kid is that key's kid in the software JWKS), carrying the SSA in
        software_statement, the redirect URIs and how the client will authenticate at the
        token endpoint.""",
    )
    walk.tpp("request", "--auth-method", auth_method)
    request_step = walk.number

    walk.step(
        "Without the transport certificate, the bank says no",
        """The bank's TLS server asks for a client certificate but lets the connection open
        without one (discovery needs that); the application then refuses registration,
        token and API calls that come without one.""",
    )
    walk.tpp("register", "--no-cert", expect_failure=True)

    walk.step(
        "Register over mutual TLS",
        """Now with the transport certificate. The bank checks the certificate chain, the
        SSA's signature against the Directory's JWKS, the request's signature against the
        software JWKS, that the certificate belongs to the software, and the metadata. It
        answers 201 with the new client_id.""",
    )
    walk.tpp("register")
    register_step = walk.number
    registration = read_json(sandbox.tpp_folder / "registration.json")
    client_id = registration["client_id"]

    walk.step(
        "What the bank stored",
        """The bank's own command line (flask obdcr) shows the stored client: the registered
        metadata plus every claim of the software statement (org_name, software_roles,
        software_jwks_endpoint...), the extended metadata a bank keeps with each client.""",
    )
    output = walk.bank_cli("obdcr", "clients", "show", client_id)
    stored = json.loads(output)
    stored["software_statement"] = abbreviate(stored.get("software_statement", ""))
    print(pretty(stored))

    walk.step(
        "An access token, bound to the certificate",
        """The client_credentials grant at the token endpoint, over mutual TLS. The bank
        keeps the SHA-256 thumbprint of the transport certificate with the token (RFC 8705),
        so the token is useless without that certificate.""",
    )
    walk.tpp("token", "--scope", "accounts")
    token_step = walk.number
    token = read_json(sandbox.tpp_folder / "token.json")["access_token"]
    from .bank import access_token_record, create_app

    record = access_token_record(create_app(instance_path=sandbox.folder), token)
    print("the bank's record of this token:")
    print(pretty({"client_id": record.client_id, "scope": record.scope, "cnf": record.cnf}))

    walk.step(
        "Call the accounts API",
        """The token and the same certificate open the accounts API. Without the
        certificate the call is refused.""",
    )
    walk.tpp("accounts")
    walk.tpp("accounts", "--no-cert", expect_failure=True)

    walk.step(
        "Read, update and delete the registration",
        """The registration is managed at its registration_client_uri with the access
        token, over mutual TLS: GET reads it, PUT replaces it with a freshly signed request
        (here keeping only one of the two redirect URIs), DELETE removes it, and with it
        every token the client had.""",
    )
    walk.tpp("registration", "get", "--brief")
    walk.tpp(
        "registration", "update", "--brief", "--redirect-uri", "https://tpp.example.com/callback"
    )
    walk.tpp("registration", "delete")
    walk.tpp("accounts", expect_failure=True)

    walk.step(
        "The transport certificate is revoked: the bank refuses it",
        f"""The TPP registers again and takes a token (as in steps {register_step} and
        {token_step}). Then its
        transport certificate is revoked at the Directory, as a TPP does when the key may have
        leaked: the Directory moves the key to the revoked JWKS, its CRL lists the
        certificate's serial and its OCSP responder answers "revoked". The certificate names
        that responder, and the bank asks it again once its cached answer is older than
        OBDCR_REVOCATION_CACHE_SECONDS: 300 s by default, {REVOCATION_CACHE_SECONDS} s in this
        demo. The next token request is refused.""",
    )
    walk.tpp("request", "--auth-method", auth_method, quiet=f"as in step {request_step}")
    walk.tpp("register", quiet=f"as in step {register_step}")
    walk.tpp("token", "--scope", "accounts", quiet=f"as in step {token_step}")
    walk.tpp("revoke", "--reason", "keyCompromise")
    print(
        f"\n(waiting {REVOCATION_CACHE_SECONDS + 0.5:g} s: the bank's cached answer about the"
        " certificate expires)"
    )
    sys.stdout.flush()
    time.sleep(REVOCATION_CACHE_SECONDS + 0.5)
    walk.tpp("token", "--scope", "accounts", expect_failure=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app.demo", description=__doc__)
    parser.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    parser.add_argument(
        "--auth-method", choices=("tls_client_auth", "private_key_jwt"), default="tls_client_auth"
    )
    parser.add_argument("--threads", action="store_true", help="servers in this process")
    args = parser.parse_args(argv)

    started = time.monotonic()
    temporary = args.workdir is None
    folder = Path(tempfile.mkdtemp(prefix="anybank-demo-") if temporary else args.workdir)
    sandbox = Sandbox(
        folder,
        mode="thread" if args.threads else "process",
        revocation_cache_seconds=REVOCATION_CACHE_SECONDS,
    )
    status = 1
    try:
        print("AnyBank: Open Banking dynamic client registration, end to end over HTTPS")
        print(f"working folder: {folder}")
        if sandbox.tpp_folder.exists():  # a kept folder: the TPP starts afresh
            shutil.rmtree(sandbox.tpp_folder)
        sandbox.start()
        print(f"sandbox Open Banking Directory: {sandbox.directory_url}")
        print(f"AnyBank (asks for client certificates): {sandbox.bank_url}")
        print(f"sandbox CA bundle (trusted by both sides): {sandbox.ca_bundle}")
        run(sandbox, auth_method=args.auth_method)
        status = 0
    except StepFailed as exc:
        print(f"\nSTEP FAILED: {exc}", file=sys.stderr)
    except Exception as exc:  # a crash: say which and keep the exit status non-zero
        print(f"\nDEMO FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        sandbox.stop()
        print(f"\nservers stopped; {time.monotonic() - started:.1f} s in all")
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"files kept in {folder}")
    if status == 0:
        print("demo complete: every step behaved as expected")
    return status


if __name__ == "__main__":
    from example_app.demo import main as _main

    sys.exit(_main())
