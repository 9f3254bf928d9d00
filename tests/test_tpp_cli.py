"""The workshop's command lines as an attendee meets them: the console scripts (``obdcr-tpp``,
``obdcr-directory``, ``obdcr-bank``) and ``flask obdcr`` from a fresh shell, ``obdcr-tpp
onboard`` remembering the ids, ``status``, ``decode``, ``register --brief``, ``explain``,
``conformance-config``, eIDAS transport certificates, and every refusal saying its cause, what
to run next and the working folder.

Real HTTPS on loopback: a sandbox Directory and bank in threads of this process (as in
tests/test_example_app.py); the command lines run with click's CliRunner, or as the console
scripts in a subprocess with a bare environment.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import tomllib
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import example_app.tpp as tpp_module
from example_app.bank import create_app, sandbox_config
from example_app.directory import cli as directory_cli
from example_app.sandbox import Sandbox
from example_app.serving import tls_context
from example_app.tpp import cli as tpp_cli
from flask_obdcr.testing.loopback import LoopbackServer
from flask_obdcr.testing.pki import CertificateAuthority, generate_key, key_pem, ob_subject, pem

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPTS = {
    "obdcr-tpp": "example_app.tpp:main",
    "obdcr-directory": "example_app.directory.cli:main",
    "obdcr-bank": "example_app.bank:cli",
}
FLOW = ("keys", "upload-csr", "download", "ssa", "discover", "request", "register", "token")


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_the_checkout(monkeypatch):
    """Run from the checkout, as the README does: the hints name ``.venv/bin/...``."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with Sandbox(tmp_path_factory.mktemp("workshop"), mode="thread") as running:
        yield running


#: what a hint must never name: a program that is not on PATH in a fresh shell
NOT_ON_PATH = re.compile(
    r"`(obdcr-tpp|obdcr-directory|flask|python -m)\b|^\s+obdcr-directory ", re.M
)


def typed(workdir: Path) -> str:
    """How the hints start for this working folder: ``.venv/bin/obdcr-tpp --workdir DIR``."""
    return f".venv/bin/obdcr-tpp --workdir {workdir.resolve()}"


def tpp(workdir: Path, *args: str, status: int = 0) -> str:
    """``obdcr-tpp --workdir WORKDIR ARGS``: its output (stdout and stderr), the exit status
    asserted. Every hint in it is asserted to be copy-pasteable (``.venv/bin/...``, the
    ``--workdir``); the output is returned with that prefix shortened to ``obdcr-tpp`` so
    that the assertions read as the README does."""
    result = CliRunner().invoke(tpp_cli, ["--workdir", str(workdir), *args])
    assert result.exit_code == status, result.output
    assert not NOT_ON_PATH.search(result.output), result.output
    return result.output.replace(typed(workdir), "obdcr-tpp")


def directory(*args: str, status: int = 0) -> str:
    result = CliRunner().invoke(directory_cli, list(args))
    assert result.exit_code == status, result.output
    return result.output


#: onboard's default redirect URI: the TPP's web page under make serve (a loopback address,
#: which the sandbox bank registers: OBDCR_LOOPBACK_REDIRECT_URIS)
PAGE_CALLBACK = tpp_module.DEFAULT_REDIRECT_URI


def onboard(sandbox: Sandbox, workdir: Path, *extra: str) -> dict:
    tpp(
        workdir,
        "onboard",
        "--directory",
        str(sandbox.directory_url),
        "--bank",
        str(sandbox.bank_url),
        "--ca",
        str(sandbox.ca_bundle),
        *extra,
    )
    return json.loads((workdir / "tpp.json").read_text())


def walk(sandbox: Sandbox, workdir: Path, until: str = "token") -> Path:
    """Onboard, then every step up to ``until`` (included)."""
    onboard(sandbox, workdir)
    for step in FLOW:
        tpp(workdir, step)
        if step == until:
            break
    return workdir


def assert_refused(output: str, workdir: Path, *, error: str, cause: str, remedy: str) -> None:
    """The refusal's four lines, in order: ``Error:``, cause, what to run next (each a regular
    expression matching the whole line's text) and the working folder."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert starts, output
    at = starts[-1]
    assert re.fullmatch(error, lines[at][len("Error: ") :]), output
    assert lines[at + 1].startswith("  cause: "), output
    assert re.fullmatch(cause, lines[at + 1][len("  cause: ") :]), output
    assert lines[at + 2].startswith("  next:  "), output
    assert re.fullmatch(remedy, lines[at + 2][len("  next:  ") :]), output
    assert lines[at + 3] == f"  working folder: {workdir.resolve()}", output


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _bare_env() -> dict[str, str]:
    """A fresh shell's environment: no venv activated, no PYTHONPATH, no FLASK_APP."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "FLASK_APP", "TPP_WORKDIR", "PYTHONHOME")
        and not key.startswith("FLASK_")
    }
    env["PATH"] = "/usr/bin:/bin"
    return env


# -- console scripts and flask obdcr from a fresh shell ---------------------------------------


def test_pyproject_declares_the_console_scripts():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: scripts.get(name) for name in SCRIPTS} == SCRIPTS


@pytest.mark.parametrize(
    ("script", "usage"),
    [
        ("obdcr-tpp", "Usage: obdcr-tpp [OPTIONS] COMMAND [ARGS]..."),
        ("obdcr-directory", "Usage: obdcr-directory [OPTIONS] COMMAND [ARGS]..."),
        ("obdcr-bank", "Usage: obdcr-bank [OPTIONS] COMMAND [ARGS]..."),
    ],
)
def test_console_scripts_run_from_a_fresh_shell(script, usage, tmp_path):
    done = subprocess.run(
        [str(BIN / script), "--help"],
        cwd=tmp_path,
        env=_bare_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == usage


def test_obdcr_tpp_from_a_fresh_shell_says_where_to_start(tmp_path):
    done = subprocess.run(
        [str(BIN / "obdcr-tpp"), "--workdir", "tpp", "status"],
        cwd=tmp_path,
        env=_bare_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"working folder  {(tmp_path / 'tpp').resolve()}"
    # as typed: the script's path and the working folder
    assert lines[-1] == f"next: `{BIN / 'obdcr-tpp'} --workdir tpp onboard`"


@pytest.fixture
def checkout_instance():
    """The checkout's ./instance as after `make serve` (the sandbox CA bundle the bank trusts);
    what this makes there is removed afterwards, what was there is left alone."""
    instance = REPO / "instance"
    existed = instance.exists()
    before = set(instance.iterdir()) if existed else set()
    yield instance
    if not existed:
        shutil.rmtree(instance, ignore_errors=True)
        return
    for made in set(instance.iterdir()) - before:
        if made.is_dir():
            shutil.rmtree(made, ignore_errors=True)
        else:
            made.unlink(missing_ok=True)


def test_flask_obdcr_works_in_the_checkout_without_app_option(checkout_instance):
    assert "FLASK_APP=example_app" in (REPO / ".flaskenv").read_text().splitlines()
    directory_state = checkout_instance / "directory"

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / command[0]), *command[1:]],
            cwd=REPO,
            env=_bare_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = run("obdcr-directory", "init", "--state", str(directory_state))
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"sandbox CA bundle: {directory_state / 'ca-bundle.pem'}\n"
    listed = run("flask", "obdcr", "clients", "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^\d+ client\(s\)$", listed.stderr, flags=re.M), listed.stderr


# -- onboard, init, placeholders --------------------------------------------------------------


def test_onboard_remembers_the_ids_nothing_to_copy(sandbox, tmp_path):
    workdir = tmp_path / "tpp"
    config = onboard(sandbox, workdir, "--client-name", "Onboarded TPP", "--role", "AISP")
    org_id, software_id = config["org_id"], config["software_id"]
    software = requests.get(
        f"{sandbox.directory_url}/api/software/{software_id}",
        verify=str(sandbox.ca_bundle),
        timeout=10,
    ).json()
    assert (software["org_id"], software["client_name"], software["roles"]) == (
        org_id,
        "Onboarded TPP",
        ["AISP"],
    )
    assert config["directory_url"] == sandbox.directory_url
    assert config["bank_url"] == sandbox.bank_url
    assert config["ca_file"] == str(sandbox.ca_bundle)
    # the next step uses them
    keys = tpp(workdir, "keys")
    assert f"CSR subject (RFC 4514): CN={software_id},OU={org_id},O=OpenBanking,C=GB" in (
        keys.splitlines()
    )
    # onboarding the same folder again would orphan its keys: refused, with what to do
    again = tpp(workdir, "onboard", status=1)
    assert_refused(
        again,
        workdir,
        error=f"this working folder already belongs to software {software_id}",
        cause=re.escape("`obdcr-tpp onboard` (or `obdcr-tpp init`) ran here before"),
        remedy=re.escape(
            "carry on (`obdcr-tpp status` says with what); for other software use another"
            " --workdir, or `obdcr-tpp onboard --force`"
        ),
    )


def test_onboard_force_starts_new_software_afresh(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="ssa")
    before = json.loads((workdir / "tpp.json").read_text())["software_id"]
    output = tpp(workdir, "onboard", "--force")
    after = json.loads((workdir / "tpp.json").read_text())
    assert after["software_id"] != before and "certificates" not in after
    assert not any((workdir / name).exists() for name in ("transport.key", "ssa.jwt"))
    assert "removed the files of the previous software:" in output
    assert output.splitlines()[-1] == "next: `obdcr-tpp keys`"


def test_directory_onboard_workdir_writes_the_ids_for_the_tpp(sandbox, tmp_path):
    workdir = tmp_path / "tpp"
    output = directory(
        "onboard",
        "--url",
        sandbox.directory_url,
        "--ca",
        str(sandbox.ca_bundle),
        "--client-name",
        "Directory-onboarded TPP",
        "--role",
        "AISP",
        "--redirect-uri",
        "https://tpp.example.com/cb",
        "--workdir",
        str(workdir),
    )
    config = json.loads((workdir / "tpp.json").read_text())
    assert f"wrote org_id and software_id to {(workdir / 'tpp.json').resolve()}" in output
    assert config["directory_url"] == sandbox.directory_url
    assert config["ca_file"] == str(sandbox.ca_bundle)
    # the TPP takes it from there: init adds the bank, keys use the ids
    tpp(workdir, "init", "--bank", sandbox.bank_url)
    assert f"OU={config['org_id']}/CN={config['software_id']}" in tpp(workdir, "keys")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        pytest.param(
            ["tpp", "init", "--org-id", "<org_id>", "--software-id", "<software_id>"],
            "`<org_id>` is a placeholder: run `obdcr-tpp onboard` or pass the org_id the"
            " Directory printed",
            id="tpp-init-banner-placeholder",
        ),
        pytest.param(
            ["tpp", "init", "--org-id", "abc", "--software-id", "<software_id>"],
            "`<software_id>` is a placeholder: run `obdcr-tpp onboard` or pass the software_id"
            " the Directory printed",
            id="tpp-init-software-placeholder",
        ),
        pytest.param(
            ["directory", "org-status", "<org_id>", "Revoked"],
            "`<org_id>` is a placeholder: pass the real org_id: `.venv/bin/obdcr-tpp status`"
            " shows the ids of a TPP working folder, `.venv/bin/obdcr-tpp onboard` makes new ones",
            id="directory-org-status",
        ),
        pytest.param(
            ["directory", "revoke", "--software-id", "SOFTWARE_ID", "--kid", "KID"],
            "`SOFTWARE_ID` is a placeholder: pass the real software_id: `.venv/bin/obdcr-tpp"
            " status` shows the ids of a TPP working folder, `.venv/bin/obdcr-tpp onboard` makes"
            " new ones",
            id="directory-revoke-readme-placeholder",
        ),
    ],
)
def test_placeholders_copied_as_they_stand_are_refused_at_once(command, message, sandbox, tmp_path):
    options = ["--url", sandbox.directory_url, "--ca", str(sandbox.ca_bundle)]
    if command[0] == "tpp":
        output = tpp(tmp_path, *command[1:], status=2)
    else:
        output = directory(command[1], *options, *command[2:], status=2)
    flat = " ".join(output.split())
    assert flat.endswith(message), output
    assert not (tmp_path / "tpp.json").exists()  # nothing remembered


def test_init_checks_the_ids_at_the_directory(sandbox, tmp_path):
    config = onboard(sandbox, tmp_path / "real")
    workdir = tmp_path / "tpp"
    common = ["--directory", sandbox.directory_url, "--bank", sandbox.bank_url]
    common += ["--ca", str(sandbox.ca_bundle)]
    unknown = tpp(workdir, "init", *common, "--org-id", "o1", "--software-id", "nope", status=1)
    assert_refused(
        unknown,
        workdir,
        error=re.escape(f"the Directory at {sandbox.directory_url} has no software nope"),
        cause="the software_id is mistyped, or comes from another sandbox",
        remedy=re.escape("run `obdcr-tpp onboard`, or pass the software_id the Directory printed"),
    )
    other_org = tpp(
        workdir, "init", *common, "--org-id", "o1", "--software-id", config["software_id"],
        status=1,
    )  # fmt: skip
    assert_refused(
        other_org,
        workdir,
        error=re.escape(f"software {config['software_id']} does not belong to organisation o1"),
        cause=re.escape(f"the Directory says its org_id is {config['org_id']}"),
        remedy="pass the org_id the Directory printed with this software",
    )
    tpp(workdir, "init", *common, "--org-id", config["org_id"], "--software-id",
        config["software_id"])  # fmt: skip
    assert json.loads((workdir / "tpp.json").read_text())["org_id"] == config["org_id"]


# -- status, decode, register --brief ---------------------------------------------------------


def test_status_says_what_is_done_and_what_to_run_next(sandbox, tmp_path):
    workdir = tmp_path / "tpp"
    onboard(sandbox, workdir)
    assert tpp(workdir, "status").splitlines()[-1] == "next: `obdcr-tpp keys`"
    for step in FLOW:
        tpp(workdir, step)
    shown = tpp(workdir, "status").splitlines()
    registration = json.loads((workdir / "registration.json").read_text())
    client_id = registration["client_id"]
    rows = {line[6:].split()[0]: line for line in shown if re.match(r"  \[[x ]\] ", line)}
    assert list(rows) == [
        "onboard",
        "keys",
        "upload-csr",
        "download",
        "ssa",
        "discover",
        "request",
        "register",
        "token",
        "consent",
    ]
    assert all(row.startswith("  [x] ") for name, row in rows.items() if name != "consent"), shown
    assert rows["consent"] == "  [ ] consent     no customer has connected yet"
    assert rows["register"] == (
        f"  [x] register    client_id {client_id} (tls_client_auth, scope 'openid accounts')"
    )
    assert re.fullmatch(
        r"  \[x\] token       scope 'accounts', expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
        r" \(in (59|60) min\)",
        rows["token"],
    ), rows["token"]
    assert shown[-1] == (
        "next: the customer connects: `obdcr-tpp web`, then open https://127.0.0.1:7443/ (or"
        " `obdcr-tpp consent`)"
    )

    # deleted: the registration and the used request are to be made again
    tpp(workdir, "registration", "delete")
    shown = tpp(workdir, "status").splitlines()
    assert "  [ ] request     request.jwt was registered (its jti is used)" in shown
    assert shown[-1] == "next: `obdcr-tpp request`"


def test_decode_prints_the_working_folders_files_readably(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="request")
    config = json.loads((workdir / "tpp.json").read_text())
    certificate = x509.load_pem_x509_certificate((workdir / "transport.pem").read_bytes())

    shown = tpp(workdir, "decode", "transport.pem").splitlines()
    assert shown[0] == str(workdir / "transport.pem")
    assert f"  subject     CN={config['software_id']},OU={config['org_id']},O=OpenBanking,C=GB" in (
        shown
    )
    assert f"  serial      {certificate.serial_number:x}" in shown
    assert "  ext. usage  clientAuth, serverAuth" in shown
    assert f"  CRL         {sandbox.directory_url}/pki/issuing.crl" in shown
    assert f"  OCSP        {sandbox.directory_url}/pki/ocsp" in shown
    assert "  its key     transport.key" in shown
    assert any(re.fullmatch(r"  not after   .* UTC \(in 36[45] days\)  valid", s) for s in shown)

    request = tpp(workdir, "decode", "request.jwt")
    assert '"alg": "PS256"' in request and f'"iss": "{config["software_id"]}"' in request
    assert "(software_statement: the SSA; `decode ssa.jwt` shows its claims)" in request
    assert re.search(r"^exp  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in [45] min\)$", request, re.M)
    kid = config["certificates"]["signing"]["kid"]
    assert f"kid  {kid}: the signing certificate's (signing.pem)" in request.splitlines()

    key = tpp(workdir, "decode", "transport.key")
    assert "private key: RSA 2048 bits (the private part is not shown)" in key.splitlines()
    assert "  certified by transport.pem" in key.splitlines()
    assert "PRIVATE KEY" not in key

    csr = tpp(workdir, "decode", "signing.csr").splitlines()
    assert "  signature  valid" in csr

    bundle = tpp(workdir, "decode", str(sandbox.ca_bundle))
    assert bundle.count("  CA          yes (issues certificates)") == 2
    assert "(2 PEM blocks)" in bundle

    missing = tpp(workdir, "decode", "token.json", status=1)
    assert_refused(
        missing,
        workdir,
        error=re.escape(f"no token.json in {workdir.resolve()}"),
        cause="`token` has not made it here yet",
        remedy=r"run `obdcr-tpp token`; files here to decode: discovery\.json, request\.jwt,"
        r" signing\.csr, signing\.key, signing\.pem, ssa\.jwt, transport\.csr, transport\.key,"
        r" transport\.pem",
    )


def test_register_brief_is_one_line_of_the_fields_that_matter(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="request")
    output = tpp(workdir, "register", "--brief")
    lines = output.splitlines()
    saved = json.loads((workdir / "registration.json").read_text())
    client_id = saved["client_id"]
    # what the demo shows: the status line, then one line with the fields that matter
    at = lines.index("HTTP 201 Created")
    assert json.loads(lines[at + 1]) == {
        "client_id": client_id,
        "token_endpoint_auth_method": "tls_client_auth",
        "scope": "openid accounts",
        "redirect_uris": [PAGE_CALLBACK],
    }
    assert re.fullmatch(
        r"\(and 25 claims of the software statement and \d+ more fields, left out: --brief\)",
        lines[at + 2],
    )
    assert lines[-2] == f"client_id {client_id}; next: `obdcr-tpp token`"
    # the consent journey's start, where the TPP's page is
    assert lines[-1] == (
        f"and a customer's consent: open {PAGE_CALLBACK.removesuffix('/callback')}/ in a"
        " browser (or `obdcr-tpp consent`)"
    )
    assert len(lines) <= 7, output
    for left_out in ("software_statement", "registration_access_token", '"exp"', '"aud"'):
        assert left_out not in output
    assert saved["registration_access_token"] not in output
    # the saved registration is whole
    assert "software_client_name" in saved
    got = tpp(workdir, "registration", "get", "--brief", "--registration-token").splitlines()
    assert len(got) == 4, got  # GET ..., the status line, the fields, the count
    assert json.loads(got[2])["client_id"] == client_id
    assert "registration_access_token" not in "\n".join(got)


# -- refusals: a cause, what to run next, the working folder ----------------------------------


def test_registering_a_request_twice_says_make_a_new_one(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="register")
    output = tpp(workdir, "register", status=1)
    assert_refused(
        output,
        workdir,
        error="registration: the server answered HTTP 400 invalid_client_metadata",
        cause=re.escape(
            "request.jwt was registered before, and the bank accepts each request (its jti) once"
        ),
        remedy=re.escape("run `obdcr-tpp request` again, then `obdcr-tpp register`"),
    )


def test_an_expired_request_says_make_a_new_one(sandbox, tmp_path, monkeypatch):
    workdir = walk(sandbox, tmp_path / "tpp", until="discover")
    now = int(time.time())
    monkeypatch.setattr(tpp_module, "_now", lambda: now - 600)
    tpp(workdir, "request")
    monkeypatch.undo()
    output = tpp(workdir, "register", status=1)
    assert_refused(
        output,
        workdir,
        error="registration: the server answered HTTP 400 invalid_client_metadata",
        cause=re.escape(
            "request.jwt has expired: it is valid for 5 minutes after `obdcr-tpp request` made"
            " it (The request JWT has expired)"
        ),
        remedy=re.escape("run `obdcr-tpp request` again, then `obdcr-tpp register`"),
    )
    tpp(workdir, "request")
    tpp(workdir, "register")


def test_after_registration_delete_the_hint_avoids_the_replay(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp")
    deleted = tpp(workdir, "registration", "delete").splitlines()
    assert deleted[-1] == (
        "to register again: `obdcr-tpp request` (a fresh request), then `obdcr-tpp register`"
    )
    refused = tpp(workdir, "accounts", "--client-credentials", status=1)
    assert_refused(
        refused,
        workdir,
        error="the accounts API: the server answered HTTP 401 invalid_token",
        cause="the client this token was issued to has been deleted",
        remedy=re.escape(
            "register again: `obdcr-tpp request`, then `obdcr-tpp register`, then `obdcr-tpp token`"
        ),
    )
    for step in ("request", "register", "token"):
        tpp(workdir, step)
    tpp(workdir, "registration", "get")  # the new token opens what needs no consent


def test_a_revoked_token_says_fetch_a_new_one(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp")
    other = walk(sandbox, tmp_path / "other", until="download")
    registration = json.loads((workdir / "registration.json").read_text())
    token = json.loads((workdir / "token.json").read_text())["access_token"]
    # presented once with another (valid) certificate: the bank revokes the token
    wrong = requests.get(
        registration["registration_client_uri"],
        headers={"Authorization": f"Bearer {token}"},
        cert=(str(other / "transport.pem"), str(other / "transport.key")),
        verify=str(sandbox.ca_bundle),
        timeout=10,
    )
    assert wrong.status_code == 401
    output = tpp(workdir, "accounts", "--client-credentials", status=1)
    assert_refused(
        output,
        workdir,
        error="the accounts API: the server answered HTTP 401 invalid_token",
        cause=r"the bank (has revoked the access token|no longer accepts token\.json's access"
        r" token) \(.*\).*",
        remedy=r"run `obdcr-tpp token` again.*",
    )
    tpp(workdir, "token")
    tpp(workdir, "registration", "get")


def test_a_scope_the_client_did_not_register_is_explained(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="register")
    output = tpp(workdir, "token", "--scope", "payments", status=1)
    assert_refused(
        output,
        workdir,
        error="the token request: the server answered HTTP 400 invalid_scope",
        cause=re.escape(
            "the bank will not grant scope 'payments': this client registered 'openid accounts'"
        ),
        remedy=re.escape(
            "ask for a scope it registered (`obdcr-tpp token --scope accounts`); another needs"
            " the software role and a registration with that scope (`obdcr-tpp request --scope"
            " ...`, `obdcr-tpp register`)"
        ),
    )


def test_token_warns_when_the_granted_scope_differs(sandbox, tmp_path, monkeypatch):
    workdir = walk(sandbox, tmp_path / "tpp", until="register")
    token_endpoint = json.loads((workdir / "discovery.json").read_text())["token_endpoint"]
    real = requests.request

    def narrowing_bank(method, url, **kwargs):
        response = real(method, url, **kwargs)
        if url == token_endpoint and response.status_code == 200:
            body = {**response.json(), "scope": "accounts"}
            response._content = json.dumps(body).encode()
        return response

    monkeypatch.setattr(tpp_module.requests, "request", narrowing_bank)
    output = tpp(workdir, "token", "--scope", "openid accounts")
    assert (
        "warning: the bank granted scope 'accounts', not the 'openid accounts' asked for (this"
        " client registered 'openid accounts')"
    ) in output.splitlines()
    saved = json.loads((workdir / "tpp.json").read_text())["token"]
    assert (saved["scope_asked"], saved["scope_granted"]) == ("openid accounts", "accounts")


def test_no_certificate_says_so(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="request")
    output = tpp(workdir, "register", "--no-cert", status=1)
    assert_refused(
        output,
        workdir,
        error="registration: the server answered HTTP 401 invalid_client",
        cause=re.escape(
            "no transport certificate was presented (--no-cert), and the bank needs one"
        ),
        remedy="run the same command without --no-cert",
    )


def test_a_missing_step_names_it_and_the_folder(sandbox, tmp_path):
    workdir = tmp_path / "tpp"
    onboard(sandbox, workdir)
    output = tpp(workdir, "request", status=1)
    assert_refused(
        output,
        workdir,
        error=re.escape(f"no ssa.jwt in {workdir.resolve()}"),
        cause=re.escape(
            "`ssa` has not been run in this working folder (or its ssa.jwt was removed)"
        ),
        remedy=re.escape("run `obdcr-tpp ssa` (`obdcr-tpp status` shows every step)"),
    )
    empty = tmp_path / "empty"
    output = tpp(empty, "keys", status=1)
    assert_refused(
        output,
        empty,
        error="software_id is not known yet",
        cause="tpp.json in this working folder has no software_id",
        remedy=re.escape(
            "run `obdcr-tpp onboard` (the Directory creates them), or `obdcr-tpp init --org-id"
            " ... --software-id ...` with the ids the Directory printed"
        ),
    )


def test_a_refused_connection_asks_whether_make_serve_runs(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="ssa")
    bank = f"https://127.0.0.1:{_closed_port()}"
    tpp(workdir, "init", "--bank", bank)
    output = tpp(workdir, "discover", status=1)
    assert_refused(
        output,
        workdir,
        error=re.escape(f"cannot reach the bank at {bank}"),
        cause=re.escape(f"nothing answers at {bank} (connection refused)"),
        remedy=re.escape(f"is `make serve` running? (the bank expected at {bank})")
        # the folder's servers are not make serve's (a make demo KEEP=1 folder): said so
        + re.escape(
            f"; this working folder's servers ({sandbox.directory_url}, {bank}) are not `make"
            " serve`'s (https://127.0.0.1:8443, https://127.0.0.1:9443): a `make demo KEEP=1`"
            " folder's servers are gone (offline commands still work: status, decode, p12,"
            " request), or point it at make serve: `obdcr-tpp init --directory"
            " https://127.0.0.1:8443 --bank https://127.0.0.1:9443`"
        ),
    )


def _replace_transport_certificate(workdir: Path, certificate: x509.Certificate, key) -> None:
    (workdir / "transport.pem").write_text(pem(certificate))
    (workdir / "transport.key").write_text(key_pem(key))


def test_an_expired_transport_certificate_is_translated(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp")
    config = json.loads((workdir / "tpp.json").read_text())
    key = generate_key("RSA")
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = sandbox.directory_state.sandbox.issuing_ca.issue(
        ob_subject(config["software_id"], config["org_id"]),
        key.public_key(),
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    _replace_transport_certificate(workdir, expired, key)
    output = tpp(workdir, "accounts", "--client-credentials", status=1)
    assert_refused(
        output,
        workdir,
        error=re.escape(f"TLS with {sandbox.bank_url} failed"),
        cause=re.escape(
            "the bank refused the TLS handshake: transport.pem has expired (TLS alert"
            " certificate_expired); OpenSSL: "
        )
        + ".*",
        remedy=re.escape(
            "get new certificates: `obdcr-tpp keys --force`, `obdcr-tpp upload-csr`,"
            " `obdcr-tpp download`"
        ),
    )
    assert "EXPIRED" in tpp(workdir, "status")


def test_a_certificate_of_an_unknown_ca_is_translated(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp")
    rogue = CertificateAuthority.root("Rogue Root CA")
    key = generate_key("RSA")
    _replace_transport_certificate(
        workdir, rogue.issue(ob_subject("a", "b"), key.public_key()), key
    )
    output = tpp(workdir, "accounts", "--client-credentials", status=1)
    assert_refused(
        output,
        workdir,
        error=re.escape(f"TLS with {sandbox.bank_url} failed"),
        cause=re.escape(
            "the bank refused the TLS handshake: it does not trust the CA that issued"
            " transport.pem (TLS alert unknown_ca); OpenSSL: "
        )
        + ".*",
        remedy=re.escape(
            "use a certificate the sandbox Directory issued (`obdcr-tpp upload-csr`, `obdcr-tpp"
            " download`), from the Directory the bank trusts"
        ),
    )


def test_a_certificate_that_is_not_its_keys_is_translated(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp")
    (workdir / "transport.key").write_text(key_pem(generate_key("RSA")))
    output = tpp(workdir, "accounts", "--client-credentials", status=1)
    assert_refused(
        output,
        workdir,
        error=re.escape(f"TLS with {sandbox.bank_url} failed"),
        cause=re.escape(
            "transport.pem is not the certificate of its key (the key was replaced after the"
            " certificate was issued); OpenSSL: [X509: KEY_VALUES_MISMATCH] key values mismatch"
        ),
        remedy=re.escape(
            "have the new keys certified: run `obdcr-tpp upload-csr`, then `obdcr-tpp download`"
        ),
    )


def test_an_untrusted_server_certificate_names_the_ca_bundle(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="ssa")
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(pem(CertificateAuthority.root("Another Root").certificate))
    tpp(workdir, "init", "--ca", str(other_ca))
    output = tpp(workdir, "discover", status=1)
    assert_refused(
        output,
        workdir,
        error=re.escape(f"TLS with {sandbox.bank_url} failed"),
        cause=re.escape(
            f"the bank's HTTPS certificate is not signed by a CA of {other_ca}; OpenSSL: [SSL:"
            " CERTIFICATE_VERIFY_FAILED] certificate verify failed"
        )
        + ".*",
        remedy=re.escape(
            "pass the CA bundle of the running sandbox (`make serve` prints it: usually"
            " instance/directory/ca-bundle.pem) with `obdcr-tpp init --ca BUNDLE`"
        ),
    )


def test_keys_force_removes_what_the_old_keys_made_and_says_what_to_run(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp")
    config = json.loads((workdir / "tpp.json").read_text())
    old = config["certificates"]
    client_id = json.loads((workdir / "registration.json").read_text())["client_id"]
    output = tpp(workdir, "keys", "--force").splitlines()
    assert (
        "removed (made for the old keys): transport.pem, signing.pem, request.jwt, token.json"
        in (output)
    )
    at = output.index(
        "the Directory still publishes the old certificates; if the old keys may have leaked,"
        " revoke them:"
    )
    assert output[at + 1 : at + 3] == [
        f"  .venv/bin/obdcr-directory revoke --software-id {config['software_id']} --kid"
        f" {old[cert_type]['kid']} --url {sandbox.directory_url} --ca {sandbox.ca_bundle}"
        f"   ({cert_type})"
        for cert_type in ("transport", "signing")
    ]
    assert output[-1] == (
        "run again: `obdcr-tpp upload-csr`, `obdcr-tpp download`, `obdcr-tpp token` (the"
        f" registration {client_id} stays)"
    )
    assert not any((workdir / n).exists() for n in ("transport.pem", "signing.pem", "token.json"))
    assert "certificates" not in json.loads((workdir / "tpp.json").read_text())
    # and every later call works again, with no KEY_VALUES_MISMATCH
    for step in ("upload-csr", "download", "token"):
        tpp(workdir, step)
    tpp(workdir, "registration", "get")


# -- explain ---------------------------------------------------------------------------------


@pytest.fixture
def bank_with(sandbox, tmp_path):
    """Start another bank trusting the sandbox's Directory, with extra settings: its URL."""
    servers: list[LoopbackServer] = []

    def start(**settings) -> str:
        folder = tmp_path / f"bank{len(servers)}"
        cert, key = sandbox.directory_state.issue_server_certificate(folder / "tls", name="bank")
        server = LoopbackServer(
            None,
            ssl_context=tls_context(cert, key, client_ca_file=sandbox.ca_bundle),
            name="bank",
        )
        servers.append(server)
        config = sandbox_config(
            issuer=server.url, directory_url=sandbox.directory_url, ca_file=str(sandbox.ca_bundle)
        )
        server.app = create_app({**config, **settings}, instance_path=folder)
        server.start()
        return server.url

    yield start
    for server in servers:
        server.stop()


def test_explain_prints_the_banks_report_and_keeps_the_request_usable(
    sandbox, tmp_path, bank_with, monkeypatch
):
    bank = bank_with(OBDCR_EXPLAIN_ENDPOINT=True)
    workdir = walk(sandbox, tmp_path / "tpp", until="ssa")
    tpp(workdir, "init", "--bank", bank)
    tpp(workdir, "request")
    output = tpp(workdir, "explain").splitlines()
    assert output[0] == (
        f"POST {bank}/register/explain  Content-Type: application/jwt  (mutual TLS: transport.pem)"
    )
    assert output[1] == "HTTP 200 OK"
    assert re.fullmatch(r"policy\s+verdict\s+detail", output[2])
    assert re.fullmatch(
        r"software_statement\s+passed", next(r for r in output if "software_st" in r)
    )
    assert re.fullmatch(
        r"transport_certificate\s+passed.*", next(r for r in output if "transport_" in r)
    )
    assert output[-1] == (
        "registrable: yes (the jti is unused: `obdcr-tpp register` sends this request)"
    )
    tpp(workdir, "register")  # the same request.jwt

    now = int(time.time())
    monkeypatch.setattr(tpp_module, "_now", lambda: now - 600)
    tpp(workdir, "request")
    monkeypatch.undo()
    refused = tpp(workdir, "explain", status=1)
    assert re.search(r"^request_claims\s+failed\s+.*expired", refused, flags=re.M), refused
    assert "registrable: no" in refused.splitlines()
    assert_refused(
        refused,
        workdir,
        error="the bank would refuse request.jwt",
        cause="request_claims: .*expired.*",
        remedy=re.escape(
            "`obdcr-tpp request` again (and `obdcr-tpp discover` if the aud is wrong)"
        ),
    )


def test_explain_at_a_bank_without_it_says_so(sandbox, tmp_path, bank_with):
    bank = bank_with(OBDCR_EXPLAIN_ENDPOINT=False)  # a bank that does not explain
    workdir = walk(sandbox, tmp_path / "tpp", until="ssa")
    tpp(workdir, "init", "--bank", bank)
    tpp(workdir, "request")
    output = tpp(workdir, "explain", status=1)
    status = re.search(r"^HTTP (40[45]) ", output, flags=re.M).group(1)
    assert_refused(
        output,
        workdir,
        error="the bank does not explain registrations",
        cause=re.escape(
            f"POST {bank}/register/explain answered HTTP {status}: the bank has not enabled"
            " explain (OBDCR_EXPLAIN_ENDPOINT)"
        ),
        remedy=re.escape(
            "send the request and read the bank's refusal: `obdcr-tpp register` (a bank turns"
            " explain on with OBDCR_EXPLAIN_ENDPOINT=True)"
        ),
    )


# -- the official conformance tool's config ----------------------------------------------------


def test_conformance_config_is_written_from_the_working_folder(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="discover")
    output = tpp(workdir, "conformance-config", "--aud", "0015800001041RHAAY").splitlines()
    target = workdir / "config.json"
    assert output[0] == f"wrote {target} (it holds private keys: owner-only)"
    assert target.stat().st_mode & 0o077 == 0
    config = json.loads(target.read_text())
    state = json.loads((workdir / "tpp.json").read_text())
    assert {k: config[k] for k in ("spec_version", "wellknown_endpoint", "aud", "issuer")} == {
        "spec_version": "3.3",
        "wellknown_endpoint": f"{sandbox.bank_url}/.well-known/openid-configuration",
        "aud": "0015800001041RHAAY",
        "issuer": state["software_id"],
    }
    assert config["ssa"] == (workdir / "ssa.jwt").read_text().strip()
    assert config["kid"] == state["certificates"]["signing"]["kid"]
    assert config["private_key"] == (workdir / "signing.key").read_text()
    assert config["transport_cert"] == (workdir / "transport.pem").read_text()
    assert config["transport_key"] == (workdir / "transport.key").read_text()
    assert config["redirect_uris"] == [PAGE_CALLBACK]
    assert (config["get_implemented"], config["put_implemented"], config["delete_implemented"]) == (
        True,
        True,
        True,
    )
    # one PEM block per entry (the tool reads the first certificate of each string only)
    bundle = x509.load_pem_x509_certificates(sandbox.ca_bundle.read_bytes())
    assert [
        entry.count("-----BEGIN CERTIFICATE-----") for entry in config["transport_root_cas"]
    ] == [
        1,
        1,
    ]
    assert [x509.load_pem_x509_certificate(e.encode()) for e in config["transport_root_cas"]] == (
        bundle
    )
    # without --aud: the bank's issuer
    tpp(workdir, "conformance-config", "--out", str(tmp_path / "c.json"))
    assert json.loads((tmp_path / "c.json").read_text())["aud"] == sandbox.bank_url


# -- eIDAS/OBWAC-shaped transport certificates --------------------------------------------------


def test_eidas_transport_certificate_registers_and_takes_a_token(sandbox, tmp_path):
    workdir = tmp_path / "tpp"
    config = onboard(sandbox, workdir)
    organisation = requests.get(
        f"{sandbox.directory_url}/api/organisations/{config['org_id']}",
        verify=str(sandbox.ca_bundle),
        timeout=10,
    ).json()
    tpp(workdir, "keys")
    uploaded = tpp(workdir, "upload-csr", "--eidas")
    assert f"/api/software/{config['software_id']}/certificates/transport?profile=eidas" in uploaded
    tpp(workdir, "download")
    certificate = x509.load_pem_x509_certificate((workdir / "transport.pem").read_bytes())
    identifier = f"PSDGB-OB-{organisation['registration_id']}"
    assert [
        (a.oid, a.value) for a in certificate.subject if a.oid != NameOID.ORGANIZATION_NAME
    ] == [
        (NameOID.COUNTRY_NAME, "GB"),
        (NameOID.ORGANIZATION_IDENTIFIER, identifier),
        (NameOID.COMMON_NAME, config["org_id"]),
    ]
    assert (
        certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        == (organisation["org_name"])
    )
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    # the signing certificate keeps the OB profile
    signing = x509.load_pem_x509_certificate((workdir / "signing.pem").read_bytes())
    assert signing.subject == ob_subject(config["software_id"], config["org_id"])
    decoded = tpp(workdir, "decode", "transport.pem").splitlines()
    assert f"  organizationIdentifier {identifier} (eIDAS/OBWAC)" in decoded
    status = tpp(workdir, "status")
    assert re.search(r"transport kid \w+ \(eidas\)", status), status
    for step in ("ssa", "discover", "request", "register", "token"):
        tpp(workdir, step)
    tpp(workdir, "registration", "get")
    registration = json.loads((workdir / "registration.json").read_text())
    assert f"2.5.4.97={identifier}" in registration["tls_client_auth_subject_dn"]
    # new keys: the hint keeps the profile
    assert tpp(workdir, "keys", "--force").splitlines()[-1] == (
        "run again: `obdcr-tpp upload-csr --eidas`, `obdcr-tpp download`, `obdcr-tpp token`"
        f" (the registration {registration['client_id']} stays)"
    )


@pytest.mark.parametrize(
    ("cert_type", "profile", "description"),
    [
        ("signing", "eidas", "the eidas profile is for transport certificates only."),
        ("transport", "qwac", "profile must be one of ['ob', 'eidas']."),
    ],
    ids=["eidas-signing", "unknown-profile"],
)
def test_directory_refuses_other_profiles(cert_type, profile, description, sandbox, tmp_path):
    config = onboard(sandbox, tmp_path / "tpp")
    tpp(tmp_path / "tpp", "keys")
    response = requests.post(
        f"{sandbox.directory_url}/api/software/{config['software_id']}/certificates/{cert_type}",
        params={"profile": profile},
        data=(tmp_path / "tpp" / f"{cert_type}.csr").read_bytes(),
        verify=str(sandbox.ca_bundle),
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": description}
    software = requests.get(
        f"{sandbox.directory_url}/api/software/{config['software_id']}",
        verify=str(sandbox.ca_bundle),
        timeout=10,
    ).json()
    assert software["certificates"] == []  # nothing issued


# -- the Directory's command line: refusals ---------------------------------------------------


def test_directory_cli_refusals_say_what_to_do(sandbox, tmp_path):
    closed = f"https://127.0.0.1:{_closed_port()}"
    ca = str(sandbox.ca_bundle)
    output = directory("org-status", "--url", closed, "--ca", ca, "abc", status=1).splitlines()
    assert output[-3:] == [
        f"Error: cannot reach the Directory at {closed}",
        f"  cause: nothing answers at {closed} (connection refused)",
        f"  next:  is `make serve` running? (the Directory expected at {closed})",
    ]

    missing = str(tmp_path / "nowhere" / "ca-bundle.pem")
    output = directory("org-status", "--url", closed, "--ca", missing, "abc", status=1)
    lines = output.splitlines()
    assert lines[-3] == f"Error: no sandbox CA bundle at {missing}"
    assert lines[-2].startswith(f"  cause: the Directory's state is not in {tmp_path / 'nowhere'}")
    assert lines[-1] == (
        "  next:  run from the checkout where `make serve` runs, or pass --ca (`make serve`"
        " prints the bundle's path)"
    )

    output = directory(
        "org-status", "--url", sandbox.directory_url, "--ca", ca, "nosuchorg", status=1
    ).splitlines()
    assert output[-3:] == [
        "Error: GET /api/organisations/nosuchorg: HTTP 404 not_found",
        "  cause: no organisation nosuchorg.",
        "  next:  check the id: the one `onboard` printed, at this Directory (GET"
        f" {sandbox.directory_url}/api/software/<software_id> lists its certificates)",
    ]


def test_tpp_main_is_the_console_entry_point(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["obdcr-tpp", "--workdir", str(tmp_path), "status"])
    with pytest.raises(SystemExit) as exited:
        tpp_module.main()
    assert exited.value.code == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"next: `{typed(tmp_path)} onboard`"


def test_decode_of_a_p12_needs_its_password(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="download")
    tpp(workdir, "p12", "--password", "s3cret")
    refused = tpp(workdir, "decode", "transport.p12", status=1)
    assert_refused(
        refused,
        workdir,
        error="cannot open the .p12",
        cause="it is protected by a password other than the one given",
        remedy=re.escape(
            "`obdcr-tpp decode transport.p12 --password ...` (the one given to `p12`)"
        ),
    )
    shown = tpp(workdir, "decode", "transport.p12", "--password", "s3cret").splitlines()
    assert "PKCS#12 bundle: a key, 1 certificate, 2 CA certificate(s)" in shown
    assert "  its key     transport.key" in shown


def test_status_flags_a_revoked_certificate(sandbox, tmp_path):
    workdir = walk(sandbox, tmp_path / "tpp", until="download")
    tpp(workdir, "revoke")
    shown = tpp(workdir, "status").splitlines()
    assert any(re.fullmatch(r"  \[ \] upload-csr  transport kid \w+ REVOKED, signing kid \w+", s)
               for s in shown), shown  # fmt: skip
    assert shown[-1] == "next: `obdcr-tpp keys --force` (the transport certificate is revoked)"


def test_hints_name_the_program_and_the_working_folder_as_typed(tmp_path):
    """One helper makes every hint: the default working folder needs no --workdir."""
    assert tpp_module.tpp_command(tpp_module.TPP("instance/tpp"), "keys --force") == (
        ".venv/bin/obdcr-tpp keys --force"
    )
    assert tpp_module.tpp_command(tpp_module.TPP(tmp_path / "my tpp"), "status") == (
        f".venv/bin/obdcr-tpp --workdir '{tmp_path / 'my tpp'}' status"
    )
    output = CliRunner().invoke(tpp_cli, ["--workdir", str(tmp_path), "keys"]).output
    assert f"run `{typed(tmp_path)} onboard` (the Directory creates them)" in output


def test_status_shows_what_the_files_and_the_registration_allow(sandbox, tmp_path):
    """No stale [x]: a token of a deleted registration is not usable, and a request.jwt that
    `keys --force` removed is not shown as made."""
    workdir = walk(sandbox, tmp_path / "tpp")
    tpp(workdir, "registration", "delete")
    shown = tpp(workdir, "status").splitlines()
    rows = {line[6:].split()[0]: line for line in shown if re.match(r"  \[[-x ]\] ", line)}
    assert rows["token"].startswith("  [ ] token "), shown
    assert "deleted registration: not usable" in rows["token"]
    assert rows["register"].startswith("  [ ] register "), shown
    assert rows["request"].startswith("  [ ] request "), shown
    assert shown[-1] == "next: `obdcr-tpp request`"

    other = walk(sandbox, tmp_path / "rekeyed")
    tpp(other, "keys", "--force")
    shown = tpp(other, "status").splitlines()
    rows = {line[6:].split()[0]: line for line in shown if re.match(r"  \[[-x ]\] ", line)}
    assert not (other / "request.jwt").exists()
    assert rows["request"].startswith("  [-] request     not needed: no request.jwt"), shown
    assert rows["token"] == "  [ ] token       no access token", shown
    assert shown[-1] == "next: `obdcr-tpp upload-csr`"
    tpp(other, "upload-csr")
    # the hints agree with keys --force's "upload-csr, download, token"
    client_id = json.loads((other / "registration.json").read_text())["client_id"]
    assert tpp(other, "download").splitlines()[-1] == (
        f"next: `obdcr-tpp token` (the registration {client_id} stays)"
    )
    assert tpp(other, "status").splitlines()[-1] == "next: `obdcr-tpp token`"


# -- the customer's consent journey, by hand ---------------------------------------------------


def _authorize_url(output: str) -> str:
    """The URL `consent` prints for the customer to open."""
    urls = [line for line in output.splitlines() if line.startswith("https://")]
    assert len(urls) == 1 and "/authorize?" in urls[0], output
    return urls[0]


@pytest.mark.parametrize("auth_method", ["tls_client_auth", "private_key_jwt"])
def test_the_consent_journey_by_hand(sandbox, tmp_path, auth_method):
    """consent, the customer's part at the bank's pages (as a browser: each form fetched and
    posted with its CSRF token; two of three accounts chosen), callback with the address the
    bank sends the browser to, accounts and balances of exactly those two, refresh,
    revoke-consent and the refusal after it, with either auth method."""
    from example_app.demo import CHOSEN_ACCOUNTS, Browser

    workdir = tmp_path / "tpp"
    onboard(sandbox, workdir)
    for step in FLOW:
        tpp(workdir, *((step, "--auth-method", auth_method) if step == "request" else (step,)))
    asked = tpp(workdir, "consent")
    consent_id = re.search(r"^ConsentId (\S+)  Status AwaitingAuthorisation$", asked, re.M)[1]
    url = _authorize_url(asked)
    assert f"redirect_uri {PAGE_CALLBACK}, valid 5 minutes" in asked
    # no page runs for this folder: the hint says how to start it
    assert "`obdcr-tpp web` serves that page; without it, copy the whole address" in asked

    browser = Browser(sandbox.ca_bundle)
    sign_in = browser.follow(browser.open(url))
    assert sign_in.status == 200 and sign_in.text("tpp-name") == "My TPP"
    consent_page = browser.follow(browser.submit(sign_in, {"user": "mits", "password": "sandbox"}))
    assert [value for _name, value, _label in consent_page.checkboxes] == [
        "22289",
        "31820",
        "42281",
    ]
    approved = browser.submit(
        consent_page, {"account": list(CHOSEN_ACCOUNTS), "decision": "approve"}
    )
    assert approved.status_code == 302
    location = approved.headers["Location"]
    assert location.startswith(f"{PAGE_CALLBACK}#code=")

    called_back = tpp(workdir, "callback", location)
    assert f"id_token valid: iss {sandbox.bank_url}, sub {consent_id}," in called_back
    record = json.loads((workdir / "consent.json").read_text())
    assert record["status"] == "Authorised" and record["consent_id"] == consent_id
    assert (workdir / "consent.json").stat().st_mode & 0o077 == 0
    for secret in (record["access_token"], record["refresh_token"]):
        assert secret not in called_back
    assert called_back.splitlines()[-1] == "next: `obdcr-tpp accounts`"
    # the same answer twice: its state was used
    replayed = tpp(workdir, "callback", location, status=1)
    assert "the bank's answer names no authorization this TPP started" in replayed

    def listed(output: str) -> list[str]:
        return re.findall(r'^ +"AccountId": "(\d+)",$', output, flags=re.M)

    read = tpp(workdir, "accounts")
    assert sorted(set(listed(read))) == sorted(CHOSEN_ACCOUNTS)
    balances = re.findall(r"^GET \S+/accounts/(\d+)/balances$", read, flags=re.M)
    assert sorted(balances) == sorted(CHOSEN_ACCOUNTS)
    refused = tpp(workdir, "accounts", "--account-id", "31820", status=1)
    assert "the accounts API: the server answered HTTP 404 UK.OBIE.Resource.NotFound" in refused

    first_token = record["access_token"]
    refreshed = tpp(workdir, "refresh")
    assert f"new access token for consent {consent_id}" in refreshed
    assert json.loads((workdir / "consent.json").read_text())["access_token"] != first_token
    assert sorted(set(listed(tpp(workdir, "accounts")))) == sorted(CHOSEN_ACCOUNTS)

    revoked = tpp(workdir, "revoke-consent")
    assert f"consent {consent_id} Revoked" in revoked
    after = tpp(workdir, "accounts", status=1)
    assert "UK.OBIE.Resource.InvalidConsentStatus" in after
    rows = [line for line in tpp(workdir, "status").splitlines() if "consent " in line]
    assert rows == [f"  [ ] consent     consent {consent_id} Revoked"]


def test_the_hints_name_the_page_where_it_runs(sandbox, tmp_path):
    """`status` and `accounts` say how the customer connects: the page the sandbox runs for
    this folder (on its own port), else the registered loopback redirect URI's page (with
    `web --port`), else make serve's default."""
    running = sandbox.tpp_folder  # the folder the sandbox's page reads
    onboard(sandbox, running, "--redirect-uri", f"{sandbox.tpp_url}/callback", "--force")
    for step in FLOW:
        tpp(running, step)
    assert sandbox.tpp_url != "https://127.0.0.1:7443"
    assert tpp(running, "status").splitlines()[-1] == (
        f"next: the customer connects: open {sandbox.tpp_url}/ in a browser and Connect (or"
        " `obdcr-tpp consent`)"
    )
    refused = tpp(running, "accounts", status=1)
    assert f"connect through the TPP's web page first (open {sandbox.tpp_url}/ in a" in refused
    asked = tpp(running, "consent")
    assert f"redirect_uri {sandbox.tpp_url}/callback," in asked
    assert "the TPP's page there finishes the journey" in asked

    elsewhere = tmp_path / "tpp"
    onboard(sandbox, elsewhere, "--redirect-uri", "https://127.0.0.1:7444/callback")
    for step in FLOW:
        tpp(elsewhere, step)
    assert tpp(elsewhere, "status").splitlines()[-1] == (
        "next: the customer connects: `obdcr-tpp web --port 7444`, then open"
        " https://127.0.0.1:7444/ (or `obdcr-tpp consent`)"
    )


def test_web_says_where_it_runs_while_it_runs(sandbox, tmp_path):
    """`obdcr-tpp web` on a free port: while it runs, `status` names its URL (web.url in the
    working folder); stopped, the file is gone and the hint says how to start it."""
    workdir = tmp_path / "tpp"
    onboard(sandbox, workdir)
    for step in FLOW:
        tpp(workdir, step)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "example_app.tpp", "--workdir", str(workdir), "web"]
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [*command, "--port", "0"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url_file = workdir / tpp_module.WEB_URL_FILE
    try:
        deadline = time.monotonic() + 30
        while not (url_file.exists() and url_file.read_text().strip()):
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "web did not start"
            time.sleep(0.05)
        url = url_file.read_text().strip()
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+", url) and not url.endswith(":7443")
        page = requests.get(f"{url}/", verify=str(sandbox.ca_bundle), timeout=10)
        assert page.status_code == 200 and "Connect your AnyBank accounts" in page.text
        assert tpp(workdir, "status").splitlines()[-1] == (
            f"next: the customer connects: open {url}/ in a browser and Connect (or"
            " `obdcr-tpp consent`)"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert not url_file.exists()
    assert tpp(workdir, "status").splitlines()[-1] == (
        "next: the customer connects: `obdcr-tpp web`, then open https://127.0.0.1:7443/ (or"
        " `obdcr-tpp consent`)"
    )
