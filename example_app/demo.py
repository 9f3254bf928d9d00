"""The whole registration story over real HTTPS: ``python -m example_app.demo`` (``make demo``).

Starts the sandbox Open Banking Directory, AnyBank and the TPP's web page on free loopback
ports (each in its own process, with certificates from the sandbox PKI), then plays the TPP
with the same commands a workshop attendee types (``.venv/bin/obdcr-tpp --workdir
<folder>/tpp ...``), and stops the servers. Exit status 0 when every step did what it should
(including the refusals).

Each step prints its title, what it is about, each command as you would type it (the working
folder included) and the two or three things in its answer that matter; ``--verbose``
(``make demo VERBOSE=1``) prints everything the commands print instead. ``--step`` (``STEP=1``)
waits for Enter before each step, when standard input is a terminal (otherwise it runs
straight through). ``--keep`` (``KEEP=1``) keeps the temporary working folder and says where;
``--workdir DIR`` works in DIR and keeps it. ``--auth-method private_key_jwt``
(``AUTH_METHOD=private_key_jwt``) registers for a signed client assertion instead of
tls_client_auth, and shows the assertion it signs. ``--threads`` runs the servers in this
process.

After the registration and a client_credentials token, the customer's consent journey (OB
Read/Write API v3.1 AISP, FAPI 1 Advanced): ``obdcr-tpp consent``, the customer's part at the
bank's sign-in and consent pages played with ``requests`` as a browser would (each form fetched,
then posted with its CSRF token; two of the sandbox customer's three accounts chosen), ``obdcr-tpp
callback`` with the address the bank sends the browser back to, the accounts and balances of
exactly those accounts, ``refresh``, ``revoke-consent`` and the refusal after it. The sandbox
runs the TPP's web page too: its ``/callback`` is the first redirect URI the software lists.

The last step revokes the TPP's transport certificate at the Directory and shows the bank
refusing it; so that it need not wait the default five minutes, the demo's bank refreshes its
cached revocation answers after :data:`REVOCATION_CACHE_SECONDS` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import click
import requests

from ._util import abbreviate, decode_jwt, pretty, read_json
from .sandbox import Sandbox

WIDTH = 92
TPP_PROG = ".venv/bin/obdcr-tpp"  # as typed in the checkout: works from a fresh shell
DIRECTORY_PROG = ".venv/bin/obdcr-directory"
#: the demo bank's OBDCR_REVOCATION_CACHE_SECONDS (a real bank's default is 300)
REVOCATION_CACHE_SECONDS = 2
#: how many steps the story has (step mode counts them)
STEPS = 22
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


# -- the customer's browser at the bank's pages ------------------------------------------------

#: the sandbox customer the demo signs in as, and the accounts (2 of their 3) they share
CUSTOMER = ("mits", "sandbox")
CHOSEN_ACCOUNTS = ("22289", "42281")


@dataclass
class Page:
    """What a browser shows of one HTML page: the status and address, each form (its action
    and fields), the text of each element with an id, the checkboxes with their labels and
    the list items."""

    status: int
    url: str
    forms: list[dict[str, Any]] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    checkboxes: list[tuple[str, str, str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)

    def text(self, element_id: str) -> str:
        return " ".join(self.texts.get(element_id, "").split())

    def form(self) -> dict[str, Any]:
        if not self.forms:
            raise StepFailed(f"{self.url} shows no form: {self.text('error-message')}")
        return self.forms[0]

    def hidden_fields(self) -> dict[str, str]:
        return {
            name: value for name, value, kind in self.form()["fields"] if kind == "hidden" and name
        }


class _PageParser(HTMLParser):
    """Reads an HTML page into a :class:`Page` (the standard library's parser; the pages are
    the bank's own, server-rendered)."""

    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.open_ids: list[tuple[str, str]] = []  # (tag, id) of the elements being read
        self.label: list[str] | None = None
        self.checkbox: tuple[str, str] | None = None
        self.item: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.page.forms.append({"action": named.get("action", ""), "fields": []})
        elif tag in ("input", "button") and self.page.forms:
            kind = named.get("type", "text" if tag == "input" else "submit")
            self.page.forms[-1]["fields"].append((named.get("name"), named.get("value", ""), kind))
            if kind == "checkbox":
                self.checkbox = (named.get("name", ""), named.get("value", ""))
        if tag == "label":
            self.label, self.checkbox = [], None
        if tag == "li":
            self.item = []
        if "id" in named and tag not in ("input", "button", "img", "br"):
            self.open_ids.append((tag, named["id"]))
            self.page.texts.setdefault(named["id"], "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self.label is not None:
            if self.checkbox is not None:
                text = " ".join(" ".join(self.label).split())
                self.page.checkboxes.append((*self.checkbox, text))
            self.label, self.checkbox = None, None
        if tag == "li" and self.item is not None:
            self.page.items.append(" ".join(" ".join(self.item).split()))
            self.item = None
        if self.open_ids and self.open_ids[-1][0] == tag:
            self.open_ids.pop()

    def handle_data(self, data: str) -> None:
        for _tag, element_id in self.open_ids:
            self.page.texts[element_id] += data
        for collecting in (self.label, self.item):
            if collecting is not None:
                collecting.append(data)


def read_page(response: requests.Response) -> Page:
    page = Page(response.status_code, response.url)
    parser = _PageParser(page)
    parser.feed(response.text)
    parser.close()
    return page


class Browser:
    """The customer's browser, as far as the bank's pages need one: a cookie jar (the bank's
    session), the sandbox CA trusted, redirects followed, except the last one, back to the
    TPP, whose address (with its #fragment) is what the TPP's page would read."""

    def __init__(self, ca_file: str | os.PathLike[str]) -> None:
        self.session = requests.Session()
        # given with each call: a Session's own verify gives way to REQUESTS_CA_BUNDLE
        self.ca_file = str(ca_file)

    def open(self, url: str) -> requests.Response:
        """GET, the redirect the answer asks for not followed."""
        return self.session.get(url, verify=self.ca_file, timeout=10, allow_redirects=False)

    def get(self, url: str) -> Page:
        return read_page(self.session.get(url, verify=self.ca_file, timeout=10))

    def submit(self, page: Page, fields: dict[str, Any]) -> requests.Response:
        """POST the page's form with its hidden fields (the CSRF token) and ``fields``; the
        redirect the answer asks for is not followed."""
        form = page.form()
        action = urljoin(page.url, form["action"])
        data = {**page.hidden_fields(), **fields}
        return self.session.post(
            action, data=data, verify=self.ca_file, timeout=10, allow_redirects=False
        )

    def follow(self, response: requests.Response) -> Page:
        """Where a 303 (POST/redirect/GET) sends the browser, within the bank."""
        return self.get(urljoin(response.url, response.headers["Location"]))


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Walkthrough:
    def __init__(
        self,
        sandbox: Sandbox,
        *,
        verbose: bool = False,
        pause: bool = False,
        total: int = STEPS,
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
                if isinstance(body, dict) and isinstance(body.get("Errors"), list):
                    error_body = _pick(body["Errors"][0], "ErrorCode", "Message")  # OB's
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

    page_callback = f"{sandbox.tpp_url}/callback"
    walk.step(
        "The TPP's technical contact adds new software at the Directory",
        f"""The PTC of the TPP registers its organisation and its new software with the Open
        Banking Directory: a name, the redirect URIs and the roles it will play, here AISP.
        The first redirect URI is the TPP's own web page ({page_callback}), where the bank
        will send the customer back. The Directory assigns an org_id and a software_id. No
        certificate is attached yet.""",
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
        page_callback,
        "--redirect-uri",
        "https://tpp.example.com/callback",
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
        token, and the customer approves it at the bank (the next steps). Without the
        certificate the call is refused before that.""",
    )
    walk.tpp("accounts", "--client-credentials", expect_failure=True)
    walk.tpp("accounts", "--client-credentials", "--no-cert", expect_failure=True)

    consent_journey(walk, page_callback=page_callback)

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
    updated = walk.tpp("registration", "update", "--brief", "--redirect-uri", page_callback)
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


def consent_journey(walk: Walkthrough, *, page_callback: str) -> None:
    """The customer's consent journey (OB Read/Write API v3.1 AISP, FAPI 1 Advanced): the
    consent, the customer at the bank's pages, the callback, accounts and balances, refresh,
    and the consent revoked."""
    quiet = not walk.verbose

    walk.step(
        "The TPP asks the bank for a consent, and signs where to send the customer",
        """With its client_credentials token, over mTLS, the TPP creates an
        account-access-consent: what it wants to read (the permissions) and until when. The
        bank answers 201 with a ConsentId, Status AwaitingAuthorisation: only the customer
        can authorise it, at the bank. So the TPP sends the customer's browser to the bank's
        authorization endpoint with a request object: a JWT signed with its signing key (the
        algorithm it registered) naming the consent (openbanking_intent_id), its redirect
        URI, and a state and a nonce it will check when the browser comes back.""",
    )
    asked = walk.tpp("consent")
    authorize_url = asked.value["authorize_url"]
    if quiet:
        for line in asked.lines("ConsentId", "  Permissions", "  ExpirationDateTime"):
            print(line)
        print(f"the authorize URL: {abbreviate(authorize_url, 60)}")
        request_object = dict(parse_qsl(urlsplit(authorize_url).query))["request"]
        _header, claims = walk.jwt(
            "its request object",
            request_object,
            ("alg", "kid"),
            ("aud", "redirect_uri", "response_type", "scope", "state", "nonce"),
        )
        print(f"and the claims it asks for in the id_token: {json.dumps(claims.get('claims'))}")

    walk.step(
        "The customer signs in at AnyBank and chooses two of their three accounts",
        f"""This part is the customer's, in a browser: the demo plays it with requests, as a
        browser would (it GETs each form and POSTs it with its CSRF token). The bank checks
        the request object's signature with the software's keys and shows its sign-in page;
        the sandbox customer {CUSTOMER[0]} signs in; the consent page names the software (from
        its software statement), what it asks for and the customer's accounts; the customer
        approves two of them. The bank sends the browser back to the redirect URI with a
        code and an id_token in the address's #fragment (the OIDC hybrid flow, response_type
        "code id_token").""",
    )
    location = customer_approves(walk, authorize_url)

    walk.step(
        "Back at the TPP: the id_token checked, the code exchanged",
        f"""A browser would now load the TPP's page ({page_callback}), which hands the
        fragment to its server. The same by hand: `callback` with the address. The TPP checks
        the id_token (signed by the bank's key from its jwks_uri, iss, aud, exp, the nonce it
        sent, c_hash of the code, s_hash of the state, openbanking_intent_id its consent),
        then exchanges the code at the token endpoint over mTLS. The access token and the
        refresh token are kept in consent.json and never printed: the answer shows only the
        certificate the access token is bound to (cnf).""",
    )
    called_back = walk.tpp("callback", location)
    if quiet:
        _header, claims = decode_jwt(dict(parse_qsl(urlsplit(location).fragment))["id_token"])
        print("the id_token's claims:")
        walk.show(
            _pick(claims, "iss", "aud", "sub", "openbanking_intent_id", "acr", "c_hash", "s_hash")
        )
        for line in called_back.lines("id_token valid", "code exchanged"):
            print(line)

    walk.step(
        "The accounts the customer chose, and their balances",
        """With the consent's access token, over mTLS: GET /accounts lists the accounts the
        customer chose, and only those; GET /accounts/{AccountId}/balances each one's
        balance.""",
    )
    read = walk.tpp("accounts")
    shown = _accounts_shown(read)
    if quiet:
        for account_id, line in shown.items():
            print(f"{account_id}  {line}")
    if sorted(shown) != sorted(CHOSEN_ACCOUNTS):
        raise StepFailed(f"the accounts API showed {sorted(shown)}, not {list(CHOSEN_ACCOUNTS)}")
    accounts_step = walk.number

    walk.step(
        "A new access token for the same consent",
        """An access token lives an hour; the refresh token the code gave gets a new one for
        the same consent (the refresh_token grant, over mTLS with the registered
        authentication), bound to the same certificate. No customer is needed for that.""",
    )
    refreshed = walk.tpp("refresh")
    if quiet:
        for line in refreshed.lines("new access token"):
            print(line)
    walk.tpp("accounts", left_out=f"the same accounts as in step {accounts_step}")

    walk.step(
        "The consent revoked: the bank refuses its tokens",
        """The customer (at the bank) or the TPP can end the consent at any time: the TPP
        DELETEs it with its client_credentials token. The bank marks it Revoked, and the
        consent's tokens open nothing any more: 403 UK.OBIE.Resource.InvalidConsentStatus.""",
    )
    revoked = walk.tpp("revoke-consent")
    if quiet:
        print(revoked.status or "HTTP 204 No Content")
        for line in revoked.lines("consent "):
            print(line)
    refused = walk.tpp("accounts", expect_failure=True)
    if "InvalidConsentStatus" not in refused.text:
        raise StepFailed(f"after revoke-consent, accounts: {refused.text[-400:]}")


def _accounts_shown(result: Result) -> dict[str, str]:
    """Each account `accounts` printed, by AccountId: its name and balances, in one line."""
    bodies = result.bodies
    listed = bodies[0].get("Data", {}).get("Account", []) if bodies else []
    balances: dict[str, list[str]] = {}
    for body in bodies[1:]:
        for balance in body.get("Data", {}).get("Balance", []):
            amount = balance.get("Amount", {})
            sign = "-" if balance.get("CreditDebitIndicator") == "Debit" else ""
            text = f"{balance.get('Type')} {sign}{amount.get('Amount')} {amount.get('Currency')}"
            balances.setdefault(balance.get("AccountId"), []).append(text)
    return {
        account["AccountId"]: f"{account.get('Nickname')} ({account.get('AccountSubType')}):"
        f" {', '.join(balances.get(account['AccountId'], ['no balance']))}"
        for account in listed
    }


def customer_approves(walk: Walkthrough, authorize_url: str) -> str:
    """The customer's part at the bank, as a browser plays it: the authorize URL, the
    sign-in page, the consent page, Approve with :data:`CHOSEN_ACCOUNTS`. Returns the address
    the bank sends the browser back to (the redirect URI with its #fragment)."""
    browser = Browser(walk.sandbox.ca_bundle)
    print("\n(the browser's requests; the customer's clicks in brackets)")
    opened = browser.open(authorize_url)
    print(f"GET  {urlsplit(authorize_url).path}?client_id=...&request=...  (the authorize URL)")
    if opened.status_code != 303:
        refused = read_page(opened)
        raise StepFailed(
            f"the bank's authorization endpoint answered {opened.status_code}:"
            f" {refused.text('error-title')}: {refused.text('error-message')}"
        )
    print(f"  -> {opened.status_code} to {opened.headers['Location']}")
    sign_in = browser.follow(opened)
    print(f"GET  {_path(sign_in.url)}")
    print(
        f"  -> {sign_in.status} {sign_in.text('tpp-name')!r} wants to see some of your"
        " account information: sign in"
    )
    user, password = CUSTOMER
    signed_in = browser.submit(sign_in, {"user": user, "password": password})
    print(f"POST {_path(sign_in.url)}  [user {user}, password {password}, Sign in]")
    if signed_in.status_code != 303:
        raise StepFailed(f"signing in as {user}: HTTP {signed_in.status_code}")
    print(f"  -> {signed_in.status_code} to {signed_in.headers['Location']}")
    consent = browser.follow(signed_in)
    print(
        f"GET  {_path(consent.url)}\n  -> {consent.status} {consent.text('tpp-name')!r}"
        f" (provided by {consent.text('tpp-org')!r}) wants to see your account information"
    )
    for item in consent.items:
        print(f"     it will be able to: {item}")
    print(f"     until {consent.text('expiry')}")
    for _name, value, label in consent.checkboxes:
        mark = "x" if value in CHOSEN_ACCOUNTS else " "
        print(f"     [{mark}] {label}")
    approved = browser.submit(consent, {"account": list(CHOSEN_ACCOUNTS), "decision": "approve"})
    print(f"POST {_path(consent.url)}  [the two accounts ticked, Approve]")
    location = approved.headers.get("Location", "")
    if approved.status_code != 302 or "#" not in location:
        raise StepFailed(f"approving: HTTP {approved.status_code} {location}")
    fragment = dict(parse_qsl(urlsplit(location).fragment))
    print(
        f"  -> {approved.status_code} to {location.split('#')[0]}#"
        + "&".join(f"{key}={abbreviate(value, 8)}" for key, value in fragment.items())
    )
    return location


INTRO = """A TPP registers its software with AnyBank, an ASPSP, by Open Banking dynamic client
registration (DCR): an API call over mutual TLS that carries what the Open Banking Directory
gave the TPP: certificates and a signed software statement. Then a customer of the bank
connects their accounts to the TPP: they consent at the bank, and the TPP reads what they
chose. The commands are shown as you would type them in the checkout (the command lines are
in .venv/bin: nothing to activate)."""


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
        print(f"the TPP's web page (its redirect URI: /callback): {sandbox.tpp_url}")
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
