"""The whole registration story over real HTTPS: ``python -m example_app.demo`` (``make demo``).

Starts the sandbox Open Banking Directory and AnyBank on free loopback ports (each in its own
process, with certificates from the sandbox PKI), then plays the TPP with the same commands a
workshop attendee types (``.venv/bin/obdcr-tpp --workdir <folder>/tpp ...``), and stops both
servers. Exit status 0 when every step did what it should (including the refusals).

Each step prints its title, what it is about, each command as you would type it (the working
folder included) and the two or three things in its answer that matter; ``--verbose``
(``make demo VERBOSE=1``) prints everything the commands print instead. ``--step`` (``STEP=1``)
waits for Enter before each step, when standard input is a terminal (otherwise it runs
straight through). ``--keep`` (``KEEP=1``) keeps the temporary working folder and says where;
``--workdir DIR`` works in DIR and keeps it. ``--auth-method private_key_jwt``
(``AUTH_METHOD=private_key_jwt``) registers for a signed client assertion instead of
tls_client_auth, and shows the assertion it signs. ``--threads`` runs the servers in this
process.

The last step revokes the TPP's transport certificate at the Directory and shows the bank
refusing it; so that it need not wait the default five minutes, the demo's bank refreshes its
cached revocation answers after :data:`REVOCATION_CACHE_SECONDS` seconds.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ._util import abbreviate, decode_jwt, pretty, read_json
from .sandbox import Sandbox

WIDTH = 92
TPP_PROG = ".venv/bin/obdcr-tpp"  # as typed in the checkout: works from a fresh shell
DIRECTORY_PROG = ".venv/bin/obdcr-directory"
#: the demo bank's OBDCR_REVOCATION_CACHE_SECONDS (a real bank's default is 300)
REVOCATION_CACHE_SECONDS = 2
#: a registration request lives 5 minutes: in step mode, one older than this is signed again
REQUEST_FRESH_SECONDS = 240

#: every acronym the story uses, explained where it first appears (and only there)
GLOSSARY = {
    "TPP": "third-party provider: a company whose software uses banks' Open Banking APIs",
    "ASPSP": "account servicing payment service provider: a bank that keeps accounts",
    "AISP": "account information service provider: a TPP that reads accounts",
    "PTC": "Primary Technical Contact: the person who manages the software at the Directory",
    "mTLS": "mutual TLS: the client shows a certificate too",
    "CSR": "certificate signing request",
    "JWKS": "JSON Web Key Set: a JSON document of public keys",
    "JWT": "JSON Web Token: signed JSON claims",
    "SSA": "software statement assertion",
    "CRL": "certificate revocation list",
    "OCSP": "Online Certificate Status Protocol",
}


class StepFailed(Exception):
    """A step did not end the way the walkthrough expects."""


@dataclass
class Result:
    """What a command printed (and returned)."""

    text: str
    value: Any = None

    @property
    def statuses(self) -> list[str]:
        return re.findall(r"^HTTP \d{3}\b.*$", self.text, flags=re.M)

    @property
    def status(self) -> str | None:
        statuses = self.statuses
        return statuses[-1] if statuses else None

    @property
    def bodies(self) -> list[Any]:
        """The JSON documents printed (pretty, so each opens and closes at column 0)."""
        found, lines, start = [], self.text.splitlines(), None
        for number, line in enumerate(lines):
            if start is None and line in ("{", "["):
                start = number
            elif start is not None and line == {"{": "}", "[": "]"}[lines[start]]:
                with contextlib.suppress(ValueError):
                    found.append(json.loads("\n".join(lines[start : number + 1])))
                start = None
        return found

    @property
    def body(self) -> Any:
        bodies = self.bodies
        return bodies[-1] if bodies else None

    def lines(self, *prefixes: str) -> list[str]:
        return [line for line in self.text.splitlines() if line.startswith(prefixes)]


class _Tee(io.StringIO):
    """Keeps what is written; passes it on to ``echo`` too, when given."""

    def __init__(self, echo: Any = None) -> None:
        super().__init__()
        self.echo = echo

    def write(self, text: str) -> int:
        if self.echo is not None:
            self.echo.write(text)
        return super().write(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()


@contextlib.contextmanager
def _signed_by_tpp() -> Iterator[list[str]]:
    """Every JWT the TPP command line signs meanwhile (to show the client assertion, which
    ``tpp token`` sends without printing it)."""
    from . import tpp as tpp_module

    signed: list[str] = []
    original = tpp_module.sign_jwt

    def recording(*args: Any, **kwargs: Any) -> str:
        token = original(*args, **kwargs)
        signed.append(token)
        return token

    tpp_module.sign_jwt = recording
    try:
        yield signed
    finally:
        tpp_module.sign_jwt = original


def _pick(mapping: Any, *keys: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        return {}
    return {key: mapping[key] for key in keys if key in mapping}


def _wrap_command(words: list[str]) -> str:
    """A shell command as typed, on as few lines as fit in :data:`WIDTH`, broken (with
    backslashes) only before an option, so that an option stays with its value."""
    chunks: list[str] = []
    for word in words:
        if word.startswith("--") or not chunks:
            chunks.append(shlex.quote(word))
        else:
            chunks[-1] += " " + shlex.quote(word)
    lines, current = [], "$ " + chunks[0]
    for chunk in chunks[1:]:
        if len(current) + 1 + len(chunk) > WIDTH and 4 + len(chunk) <= WIDTH:
            lines.append(current + " \\")
            current = "    " + chunk
        else:
            current += " " + chunk
    return "\n".join([*lines, current])


class Walkthrough:
    def __init__(
        self,
        sandbox: Sandbox,
        *,
        verbose: bool = False,
        pause: bool = False,
        total: int = 16,
    ) -> None:
        self.sandbox = sandbox
        self.verbose = verbose
        self.pause = pause
        self.total = total
        self.number = 0
        self.explained: set[str] = set()

    # -- printing ------------------------------------------------------------------------

    def explain(self, text: str) -> str:
        """``text`` with the first use of each acronym not yet explained followed by its
        meaning, in brackets."""
        for term, meaning in GLOSSARY.items():
            if term in self.explained:
                continue
            found = re.search(rf"(?<![\w#-]){re.escape(term)}(?![\w-])", text)
            if found:
                text = f"{text[: found.end()]} ({meaning}){text[found.end() :]}"
                self.explained.add(term)
        return text

    def paragraphs(self, text: str) -> None:
        for paragraph in textwrap.dedent(text).strip().split("\n\n"):
            print(textwrap.fill(self.explain(" ".join(paragraph.split())), WIDTH))
        sys.stdout.flush()

    def step(self, title: str, explanation: str) -> None:
        if self.pause and self.number:
            self.wait_for_enter(f"step {self.number + 1} of {self.total}: {title}")
        self.number += 1
        heading = f"== {self.number}. {title} "
        print("\n" + heading + "=" * max(4, WIDTH - len(heading)))
        self.paragraphs(explanation)

    def wait_for_enter(self, what: str) -> None:
        try:
            input(f"\n-- Enter: {what}  (Ctrl-C stops the demo) ")
        except EOFError:  # standard input closed: run straight through from here
            self.pause = False
            print()

    @staticmethod
    def command(words: list[str]) -> None:
        print("\n" + _wrap_command(words))
        sys.stdout.flush()

    @staticmethod
    def show(value: Any) -> None:
        print(pretty(value))

    def more(self, count: int, what: str = "fields") -> None:
        if count > 0:
            print(f"(and {count} more {what}: make demo VERBOSE=1 prints everything)")

    # -- running the command lines -------------------------------------------------------

    def _run(
        self,
        group: click.Group,
        prog: str,
        args: list[str],
        *,
        expect_failure: bool,
        left_out: str | None = None,
        live: bool = True,
    ) -> Result:
        """Run a command; with --verbose and ``live`` what it prints is shown as it goes."""
        output = _Tee(sys.stdout if self.verbose and live and left_out is None else None)
        error: click.ClickException | None = None
        value = None
        with contextlib.redirect_stdout(output):
            try:
                value = group.main(args=args, prog_name=prog, standalone_mode=False)
            except click.ClickException as exc:
                error = exc
        result = Result(output.getvalue(), value)
        if error is not None:
            if not expect_failure:
                if not self.verbose:
                    print(result.text.rstrip())
                details: list[str] = list(getattr(error, "details", lambda: [])())
                raise StepFailed("\n".join([error.format_message(), *details]))
            if not self.verbose:
                body = result.body
                error_body = _pick(body, "error", "error_description")
                print(result.status or "", json.dumps(error_body) if error_body else "")
            print(f"(refused, as it should be: {error.format_message()})")
            return result
        if expect_failure:
            raise StepFailed(f"`{prog} {shlex.join(args)}` should have been refused")
        if left_out is not None:
            print(f"{result.status + ' ' if result.status else ''}(output left out: {left_out})")
        sys.stdout.flush()
        return result

    def tpp(
        self,
        *args: str,
        expect_failure: bool = False,
        left_out: str | None = None,
        live: bool = True,
    ) -> Result:
        """Run a TPP command in its working folder, as typed: ``--workdir`` included."""
        from .tpp import cli

        argv = ["--workdir", str(self.sandbox.tpp_folder), *args]
        self.command([*TPP_PROG.split(), *argv])
        return self._run(
            cli, TPP_PROG, argv, expect_failure=expect_failure, left_out=left_out, live=live
        )

    def directory(self, *args: str) -> Result:
        from .directory import cli

        self.command([*DIRECTORY_PROG.split(), *args])
        return self._run(cli, DIRECTORY_PROG, list(args), expect_failure=False)

    def bank_cli(self, *args: str) -> str:
        """``flask --app example_app ...`` against the running bank's instance folder."""
        from .bank import create_app

        folder = self.sandbox.folder
        if folder == (Path.cwd() / "instance").resolve():
            app_arg = "example_app"
        else:
            app_arg = f'example_app:create_app(instance_path="{folder}")'
        self.command([".venv/bin/flask", "--app", app_arg, *args])
        result = create_app(instance_path=folder).test_cli_runner().invoke(args=list(args))
        if result.exit_code != 0:
            raise StepFailed(f"flask {' '.join(args)}: {result.output}")
        return result.output

    def jwt(
        self, label: str, token: str, header_keys: tuple[str, ...], claim_keys: tuple[str, ...]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A JWT's header and chosen claims (all of them with ``claim_keys`` empty)."""
        header, claims = decode_jwt(token)
        shown = {k: abbreviate(v) if k == "software_statement" else v for k, v in claims.items()}
        print(f"{label} header:")
        self.show(_pick(header, *header_keys) if header_keys else header)
        print(f"{label} claims:")
        self.show(_pick(shown, *claim_keys) if claim_keys else shown)
        if claim_keys:
            self.more(len(claims) - len(_pick(claims, *claim_keys)), "claims")
        return header, claims


def _print_answer(result: Result) -> None:
    """What a ``--brief`` command printed from its status line on, as a reader who types it
    sees it (the request line, already shown as the command, left out)."""
    lines = result.text.rstrip().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("HTTP ")), 0)
    print("\n".join(lines[at:]))
    sys.stdout.flush()


def run(walk: Walkthrough, *, auth_method: str) -> None:
    sandbox = walk.sandbox
    ca = str(sandbox.ca_bundle)
    tpp_folder = sandbox.tpp_folder
    quiet = not walk.verbose

    walk.step(
        "The TPP's technical contact adds new software at the Directory",
        """The PTC of the TPP registers its organisation and its new software with the Open
        Banking Directory: a name, the redirect URIs and the roles it will play, here AISP.
        The Directory assigns an org_id and a software_id. No certificate is attached
        yet.""",
    )
    onboarded = walk.directory(
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
    software = onboarded.value
    org_id, software_id = software["org_id"], software["software_id"]
    if quiet:
        walk.show(_pick(software, "org_id", "software_id", "roles"))

    walk.step(
        "The TPP's tools learn where everything is",
        f"""The TPP command line keeps its files in one working folder, given with --workdir
        (here {tpp_folder}). It needs the Directory's URL, the bank's URL, the sandbox CA
        bundle (to check both servers' HTTPS certificates) and the two identifiers the
        Directory just gave out.""",
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
    if quiet:
        print(f"wrote {tpp_folder / 'tpp.json'}")

    walk.step(
        "Two key pairs and their certificate signing requests",
        """Each key comes with a CSR for the Directory to sign. One key is for the transport
        (network) certificate that opens mTLS connections to banks, the other for the
        signing certificate whose key signs the TPP's JWTs. Both requests carry the subject
        the Directory insists on: CN=<software_id>, OU=<org_id>, O=OpenBanking, C=GB.""",
    )
    keys = walk.tpp("keys")
    if quiet:
        for line in keys.lines("CSR subject", "wrote"):
            print(line)

    walk.step(
        "Upload the CSRs: the Directory issues the certificates",
        """The Directory's issuing CA signs each certificate request, attaches the
        certificate to the software and publishes its public key in the software's JWKS:
        use "tls" for the transport key, "sig" for the signing key, each with its
        certificate in x5c.""",
    )
    uploaded = walk.tpp("upload-csr")
    if quiet:
        for status, record in zip(uploaded.statuses, uploaded.bodies, strict=False):
            fields = _pick(record, "type", "kid", "use")
            print(status, json.dumps(fields))

    walk.step(
        "Download the certificates (PEM) and make a .p12",
        """The transport certificate and its key go together into a PKCS#12 file, which is
        what browsers and API tools import; the command line itself uses the PEM files.""",
    )
    downloaded = walk.tpp("download")
    if quiet:
        for line in downloaded.lines("transport.pem", "signing.pem"):
            print(line)
    bundled = walk.tpp("p12")
    if quiet:
        for line in bundled.lines("wrote"):
            print(line)

    walk.step(
        "The keys as the Directory publishes them",
        """This is the software_jwks_endpoint a bank will read to check the TPP's
        signatures, and whose x5c certificates tie the transport certificate to the
        software. A revoked key would move to the second set.""",
    )
    published = walk.tpp("jwks")
    if quiet:
        for line in published.lines("published:", "revoked:"):
            print(line)
        for key in published.bodies:
            print("  " + json.dumps(_pick(key, "kid", "use")))

    walk.step(
        "The Directory signs the software statement",
        """The Directory signs (PS256) a JWT describing the organisation and the software:
        the SSA. Its issuer is "OpenBanking Ltd" and its kid names the Directory key that
        signed it; its software_jwks_endpoint claim says where the TPP's own keys are.""",
    )
    walk.tpp("ssa")
    if quiet:
        ssa = (tpp_folder / "ssa.jwt").read_text().strip()
        walk.jwt(
            "SSA",
            ssa,
            ("alg", "kid"),
            ("iss", "org_id", "software_id", "software_jwks_endpoint"),
        )

    walk.step(
        "Find the bank's endpoints",
        """The discovery document is public: it is fetched without a client certificate. It
        gives the issuer (the audience of the registration request), the registration and
        token endpoints, and what the bank accepts.""",
    )
    walk.tpp("discover")
    discovery = read_json(tpp_folder / "discovery.json") or {}
    if quiet:
        walk.show(_pick(discovery, "issuer", "registration_endpoint", "token_endpoint"))
        walk.more(len(discovery) - 3)

    walk.step(
        "Build and sign the registration request",
        """The request is a JWT of its own, signed PS256 with the signing key (the header's
        kid is that key's kid in the software JWKS), carrying the SSA in
        software_statement, the redirect URIs and how the client will authenticate at the
        token endpoint.""",
    )
    walk.tpp("request", "--auth-method", auth_method)
    signed_at = time.monotonic()
    request_step = walk.number
    if quiet:
        walk.jwt(
            "request",
            (tpp_folder / "request.jwt").read_text().strip(),
            ("alg", "kid"),
            (
                "iss",
                "aud",
                "software_statement",
                "token_endpoint_auth_method",
                "token_endpoint_auth_signing_alg",
            ),
        )

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
    if time.monotonic() - signed_at > REQUEST_FRESH_SECONDS:  # a long pause in step mode
        walk.tpp(
            "request",
            "--auth-method",
            auth_method,
            left_out=f"signed again, as in step {request_step}: a request lives 5 minutes",
        )
    registered = walk.tpp("register", "--brief")
    register_step = walk.number
    registration = read_json(tpp_folder / "registration.json")
    client_id = registration["client_id"]
    if quiet:
        _print_answer(registered)

    walk.step(
        "What the bank stored",
        """The bank's own command line (flask obdcr) shows the stored client: the registered
        metadata plus every claim of the software statement (org_name, software_roles,
        software_jwks_endpoint...), the extended metadata a bank keeps with each client.""",
    )
    output = walk.bank_cli("obdcr", "clients", "show", client_id)
    stored = json.loads(output)
    stored["software_statement"] = abbreviate(stored.get("software_statement", ""))
    if quiet:
        walk.show(_pick(stored, "client_id", "org_name", "software_roles", "redirect_uris"))
        walk.more(len(stored) - 4)
    else:
        print(pretty(stored))

    if auth_method == "private_key_jwt":
        how = """With private_key_jwt the TPP proves who it is with a client assertion: a
        short-lived JWT it signs with its signing key (iss and sub: the client_id; aud: the
        token endpoint; a jti the bank accepts once), checked by the bank with the
        software JWKS (RFC 7523)."""
    else:
        how = """With tls_client_auth the certificate itself authenticates the client: the
        form only names the client_id."""
    walk.step(
        "An access token, bound to the certificate",
        f"""The client_credentials grant at the token endpoint, over mTLS. {how}

        The bank keeps the SHA-256 thumbprint of the transport certificate with the token
        (RFC 8705), so the token is useless without that certificate.""",
    )
    with _signed_by_tpp() as signed:
        issued = walk.tpp("token", "--scope", "accounts", live=False)
    token_step = walk.number
    assertions = [t for t in signed if decode_jwt(t)[1].get("sub") == client_id]
    for assertion in assertions:  # the private_key_jwt run: what it signed and sent
        print("the client assertion it signed, sent in the form as client_assertion (with")
        print("client_assertion_type urn:ietf:params:oauth:client-assertion-type:jwt-bearer):")
        walk.jwt("client assertion", assertion, (), ())
    token_response = read_json(tpp_folder / "token.json")
    token = token_response["access_token"]
    if not quiet:
        print(issued.text.rstrip())
    else:
        print(issued.status)
        walk.show(_pick(token_response, "access_token", "expires_in", "scope"))
    from .bank import access_token_record, create_app

    record = access_token_record(create_app(instance_path=sandbox.folder), token)
    print("the bank's record of this token:")
    print(pretty({"client_id": record.client_id, "scope": record.scope, "cnf": record.cnf}))

    walk.step(
        "The accounts API wants the customer's consent",
        """This token is the TPP's own (client_credentials): no customer stands behind it,
        so the accounts API refuses it (403 UK.OBIE.Resource.ConsentMismatch). Account data
        needs the customer's consent: the TPP creates an account-access-consent with this
        token, and the customer approves it at the bank (obdcr-tpp consent, or the TPP's web
        page: make serve). Without the certificate the call is refused before that.""",
    )
    walk.tpp("accounts", "--client-credentials", expect_failure=True)
    walk.tpp("accounts", "--client-credentials", "--no-cert", expect_failure=True)

    walk.step(
        "Read, update and delete the registration",
        """The registration is managed at its registration_client_uri with the access
        token, over mutual TLS: GET reads it, PUT replaces it with a freshly signed request
        (here keeping only one of the two redirect URIs), DELETE removes it, and with it
        every token the client had.""",
    )
    read = walk.tpp("registration", "get", "--brief")
    if quiet:
        _print_answer(read)
    updated = walk.tpp(
        "registration", "update", "--brief", "--redirect-uri", "https://tpp.example.com/callback"
    )
    if quiet:
        _print_answer(updated)
    deleted = walk.tpp("registration", "delete")
    if quiet:
        print(deleted.status)
    walk.tpp("accounts", "--client-credentials", expect_failure=True)

    walk.step(
        "The transport certificate is revoked: the bank refuses it",
        f"""The TPP registers again and takes a token (as in steps {register_step} and
        {token_step}). Then its transport certificate is revoked at the Directory, as a TPP
        does when the key may have leaked: the Directory moves the key to the revoked
        JWKS, its CRL lists the certificate's serial and its OCSP responder answers
        "revoked". The certificate names that responder, and the bank asks it again once its
        cached answer is older than OBDCR_REVOCATION_CACHE_SECONDS: 300 s by default,
        {REVOCATION_CACHE_SECONDS} s in this demo. The next token request is refused.""",
    )
    walk.tpp("request", "--auth-method", auth_method, left_out=f"as in step {request_step}")
    walk.tpp("register", left_out=f"as in step {register_step}")
    walk.tpp("token", "--scope", "accounts", left_out=f"as in step {token_step}")
    revoked = walk.tpp("revoke", "--reason", "keyCompromise")
    if quiet:
        record_revoked = revoked.value if isinstance(revoked.value, dict) else revoked.body
        print(revoked.status)
        walk.show(_pick(record_revoked, "kid", "status", "revocation_reason"))
        if isinstance(record_revoked, dict) and record_revoked.get("ocsp_url"):
            print(
                textwrap.fill(
                    f"At the Directory now: the CRL at {record_revoked['crl_distribution_point']}"
                    f" lists serial {record_revoked['serial_number']}, and the OCSP responder"
                    f' ({record_revoked["ocsp_url"]}) answers "revoked" for it.',
                    WIDTH,
                )
            )
    print(
        f"\n(waiting {REVOCATION_CACHE_SECONDS + 0.5:g} s: the bank's cached answer about the"
        " certificate expires)"
    )
    sys.stdout.flush()
    time.sleep(REVOCATION_CACHE_SECONDS + 0.5)
    walk.tpp("token", "--scope", "accounts", expect_failure=True)


INTRO = """A TPP registers its software with AnyBank, an ASPSP, by Open Banking dynamic client
registration (DCR): an API call over mutual TLS that carries what the Open Banking Directory
gave the TPP: certificates and a signed software statement. The commands are shown as you
would type them in the checkout (the command lines are in .venv/bin: nothing to activate)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m example_app.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", help="work in this folder, and keep it")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary working folder (make demo KEEP=1)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="everything the commands print (VERBOSE=1)"
    )
    parser.add_argument(
        "--step", action="store_true", help="wait for Enter before each step (STEP=1)"
    )
    parser.add_argument(
        "--auth-method", choices=("tls_client_auth", "private_key_jwt"), default="tls_client_auth"
    )
    parser.add_argument("--threads", action="store_true", help="servers in this process")
    args = parser.parse_args(argv)

    started = time.monotonic()
    temporary = args.workdir is None
    folder = Path(tempfile.mkdtemp(prefix="anybank-demo-") if temporary else args.workdir)
    keep = args.keep or not temporary
    pause = args.step
    sandbox = Sandbox(
        folder,
        mode="thread" if args.threads else "process",
        revocation_cache_seconds=REVOCATION_CACHE_SECONDS,
    )
    status = 1
    try:
        print("AnyBank: Open Banking dynamic client registration, end to end over HTTPS")
        if pause and not sys.stdin.isatty():
            print("(step mode: standard input is not a terminal, so the demo does not pause)")
            pause = False
        walk = Walkthrough(sandbox, verbose=args.verbose, pause=pause)
        walk.paragraphs(INTRO)
        print(f"working folder: {folder}")
        if sandbox.tpp_folder.exists():  # a kept folder: the TPP starts afresh
            shutil.rmtree(sandbox.tpp_folder)
        sandbox.start()
        print(f"sandbox Open Banking Directory: {sandbox.directory_url}")
        print(f"AnyBank (asks for client certificates): {sandbox.bank_url}")
        print(f"sandbox CA bundle (trusted by both sides): {sandbox.ca_bundle}")
        run(walk, auth_method=args.auth_method)
        status = 0
    except StepFailed as exc:
        print(f"\nSTEP FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nstopped (Ctrl-C)", file=sys.stderr)
        status = 130
    except Exception as exc:  # a crash: say which and keep the exit status non-zero
        print(f"\nDEMO FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        sandbox.stop()
        print(f"\nservers stopped; {time.monotonic() - started:.1f} s in all")
        if keep:
            kept = f"{TPP_PROG} --workdir {sandbox.tpp_folder}"
            print(f"working folder kept: {folder}")
            print(
                f"  the TPP's files: {sandbox.tpp_folder}; remove it all with: rm -r {folder}\n"
                f"  the demo's servers are stopped (and `make serve` listens elsewhere), so only"
                f" the offline commands work on it: status, decode, p12, request, e.g.\n"
                f"    {kept} status"
            )
        else:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"working folder removed ({folder}): make demo KEEP=1 keeps it")
    if status == 0:
        print("demo complete: every step behaved as expected")
    return status


if __name__ == "__main__":
    from example_app.demo import main as _main

    sys.exit(_main())
