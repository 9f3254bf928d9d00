"""Workshop-ready: what a newcomer meets first. `make demo` (quiet by default; VERBOSE, STEP,
KEEP, AUTH_METHOD; its own small install), `make serve` run twice or on a taken port, `make
reset`, `make help`, and the test summary without slapd (one line per skip reason).

Each runs as a newcomer runs it, through make where there is a make target (the virtual
environment taken as built: its stamps are not remade), with no standard input unless a
terminal is the point.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from child_process import checkout_environment
from test_example_app import read_serve_banner

from example_app.demo import CHOSEN_ACCOUNTS, GLOSSARY, STEPS

REPO = Path(__file__).resolve().parent.parent
BIN = os.path.dirname(sys.executable)
#: the virtual environment is there: neither install stamp is remade
KEEP_STAMPS = ["-o", ".venv/.installed", "-o", ".venv/.installed-demo"]
#: make variables a developer's environment might set, which would change what is tested
MAKE_VARIABLES = (
    "VERBOSE",
    "STEP",
    "KEEP",
    "AUTH_METHOD",
    "INSTANCE",
    "STOP",
    "DIRECTORY_PORT",
    "BANK_PORT",
    "TPP_PORT",
    "SERVER",
    "VENV",
)
#: the acronyms make demo must explain, once, where each first appears
ACRONYMS = ("SSA", "PTC", "TPP", "ASPSP", "JWKS", "mTLS")

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _env(**extra: str) -> dict[str, str]:
    return checkout_environment((*MAKE_VARIABLES, "CI"), **extra)


def _make(*args: str, timeout: float = 90, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", *KEEP_STAMPS, *args, f"BIN={BIN}"],
        cwd=REPO,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def _port_closed(url: str) -> bool:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def _flat(text: str) -> str:
    return " ".join(text.split())


def assert_acronyms_explained_once(out: str) -> None:
    """Each acronym's meaning is printed once, where the acronym first appears."""
    flat = _flat(out)
    for acronym in ACRONYMS:
        explained = f"{acronym} ({GLOSSARY[acronym]})"
        assert flat.count(explained) == 1, f"{acronym}: explained {flat.count(explained)} times"
        first = re.search(rf"(?<![\w#-]){re.escape(acronym)}(?![\w-])", flat)
        assert first is not None and first.start() == flat.index(explained), (
            f"{acronym} is used before it is explained"
        )


def _steps(out: str) -> dict[int, str]:
    """The text of each step, by number."""
    parts = re.split(r"^== (\d+)\. ", out, flags=re.M)
    return {int(number): text for number, text in zip(parts[1::2], parts[2::2], strict=True)}


#: the step in which the customer (the demo, as a browser) signs in and consents at the bank
BROWSER_STEP = 16


def assert_consent_journey(steps: dict[int, str], tpp: str) -> None:
    """Steps 14-20 of a quiet demo: the client_credentials token refused at the accounts API
    (why a consent is needed), the consent, the customer at the bank choosing 2 of 3
    accounts, the callback, exactly those accounts with balances, refresh, revoke-consent
    and the refusal after it."""
    assert "UK.OBIE.Resource.ConsentMismatch" in steps[14]
    assert f"$ .venv/bin/obdcr-tpp --workdir {tpp} accounts --client-credentials\n" in steps[14]
    consent = steps[15]
    assert f"$ .venv/bin/obdcr-tpp --workdir {tpp} consent\n" in consent
    created = re.search(r"^ConsentId (urn-anybank-intent-\S+)  Status AwaitingAuthorisation$",
                        consent, flags=re.M)  # fmt: skip
    assert created, consent
    consent_id = created.group(1)
    assert '"openbanking_intent_id": {"value": "' + consent_id in consent
    bank = steps[BROWSER_STEP]
    assert "POST /sign-in  [user mits, password sandbox, Sign in]" in bank
    assert "'Sandbox TPP - AISP' (provided by 'Sandbox TPP Ltd')" in bank
    ticked = re.findall(r"^     \[(x| )\] ", bank, flags=re.M)
    assert sorted(ticked) == [" ", "x", "x"], bank
    assert re.search(r"-> 302 to https://127\.0\.0\.1:\d+/callback#code=", bank)
    callback = steps[17]
    assert re.search(rf"^\$ \.venv/bin/obdcr-tpp --workdir {re.escape(tpp)} callback 'https://"
                     r"127\.0\.0\.1:\d+/callback#code=[^']+&id_token=[^']+&state=[^']+'$",
                     callback, flags=re.M)  # fmt: skip
    assert "id_token valid: iss https://127.0.0.1:" in callback
    assert f"sub {consent_id}, acr urn:openbanking:psd2:sca" in callback
    assert "refresh token kept in consent.json" in callback
    shown = re.findall(r"^(\d{5})  \S.*: InterimAvailable -?[\d.]+ [A-Z]{3}$", steps[18], re.M)
    assert sorted(shown) == sorted(CHOSEN_ACCOUNTS)
    assert f"new access token for consent {consent_id}" in steps[19]
    assert "HTTP 200 OK (output left out: the same accounts as in step 18)" in steps[19]
    revoked = steps[20]
    assert f"consent {consent_id} Revoked" in revoked
    assert "HTTP 403 Forbidden" in revoked and "UK.OBIE.Resource.InvalidConsentStatus" in revoked
    assert "refused, as it should be" in revoked


# -- make demo: what it installs ------------------------------------------------------------------


@needs_make
def test_make_demo_installs_the_demo_extra_only_and_make_test_the_test_extra(tmp_path):
    venv = tmp_path / "venv"

    def dry_run(target: str) -> str:
        done = subprocess.run(
            ["make", "-n", target, f"VENV={venv}"],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    first_demo = dry_run("demo")
    assert "pip install --quiet -e '.[demo]'" in first_demo
    assert ".[test]" not in first_demo
    assert f"{venv}/bin/python -m example_app.demo" in first_demo.splitlines()
    assert "pip install --quiet -e '.[test]'" in dry_run("test")
    # the small install done, make demo installs nothing more
    venv.mkdir()
    later = time.time() + 60  # newer than pyproject.toml
    (venv / ".installed-demo").touch()
    os.utime(venv / ".installed-demo", (later, later))
    assert "pip" not in dry_run("demo") and "pip" not in dry_run("serve")
    assert "pip install --quiet -e '.[test]'" in dry_run("test")
    # the full install done (make test), make demo uses it
    (venv / ".installed-demo").unlink()
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (later, later))
    assert "pip" not in dry_run("demo")


def test_the_demo_extra_is_small_and_the_test_extra_includes_it():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    demo = " ".join(extras["demo"]).lower()
    for heavy in ("postgres", "psycopg", "redis", "ldap", "pytest", "hypothesis", "ruff", "mypy"):
        assert heavy not in demo
    assert any(
        "demo" in requirement for requirement in extras["test"] if "flask-obdcr[" in requirement
    )


def _requirement_closure(name: str, extras: frozenset[str]) -> set[str]:
    """The distributions ``name[extras]`` needs, itself included (canonical names)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    needed: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, extras)]
    while todo:
        distribution, wanted = todo.pop()
        key = (canonicalize_name(distribution), wanted)
        if key in seen:
            continue
        seen.add(key)
        needed.add(key[0])
        try:
            requirements = importlib.metadata.requires(distribution) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({"extra": extra}) for extra in (wanted or {""})
            ):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return needed


def test_demo_needs_nothing_beyond_the_demo_extra_and_verbose_prints_everything(tmp_path):
    """The whole demo in one process (servers as threads): every module it imported comes
    from a distribution `pip install -e '.[demo]'` installs. VERBOSE prints each command's
    output in full; --workdir keeps the folder."""
    from packaging.utils import canonicalize_name

    modules_file = tmp_path / "modules.json"
    workdir = tmp_path / "demo"
    code = (
        "import json, sys\n"
        "from example_app.demo import main\n"
        "status = main(['--threads', '--verbose', '--workdir', sys.argv[1]])\n"
        "json.dump(sorted({m.split('.')[0] for m in sys.modules}), open(sys.argv[2], 'w'))\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(workdir), str(modules_file)],
        cwd=REPO,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]

    by_module = importlib.metadata.packages_distributions()
    imported = {
        canonicalize_name(distribution)
        for module in json.loads(modules_file.read_text())
        for distribution in by_module.get(module, [])
    }
    allowed = _requirement_closure("flask-obdcr", frozenset({"demo"}))
    venv_tools = {"pip", "setuptools"}  # setuptools' _distutils_hack, loaded by a .pth file
    # requests.adapters imports urllib3.contrib.socks, hence PySocks, whenever it is installed
    # (the test extra has it through selenium's urllib3[socks]); the demo does not need it
    if_installed = {"pysocks"}
    assert imported - allowed - venv_tools - if_installed == set()

    # verbose: what each command prints, in full
    assert '"organisation_competent_authority_claims"' in out  # the SSA's every claim
    assert "Content-Type: application/json" in out  # the HTTP exchanges
    assert "make demo VERBOSE=1 prints everything" not in out
    assert sorted(_steps(out)) == list(range(1, STEPS + 1))
    assert_acronyms_explained_once(out)
    assert f"working folder kept: {workdir}" in out
    assert (workdir / "tpp" / "tpp.json").exists()


# -- make demo: quiet, step by step, kept, private_key_jwt ----------------------------------------


@needs_make
def test_make_demo_is_quiet_and_shows_each_command_with_its_working_folder(tmp_path):
    """STEP=1 KEEP=1 AUTH_METHOD=private_key_jwt, no standard input: quiet, every command
    with the --workdir it uses, the client assertion decoded, no pause, the folder kept."""
    done = _make("demo", "STEP=1", "KEEP=1", "AUTH_METHOD=private_key_jwt")
    out = done.stdout
    workdir = Path(re.search(r"^working folder: (\S+)", out, flags=re.M).group(1))
    try:
        assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
        assert "(step mode: standard input is not a terminal, so the demo does not pause)" in out
        assert "-- Enter:" not in out

        # quiet: a title, the commands, what matters; the rest one VERBOSE=1 away
        assert len(out.splitlines()) < 450, len(out.splitlines())
        assert '"organisation_competent_authority_claims"' not in out
        assert "Content-Type:" not in out
        assert "make demo VERBOSE=1 prints everything" in out
        steps = _steps(out)
        assert sorted(steps) == list(range(1, STEPS + 1))
        for number, text in steps.items():
            title = text.splitlines()[0].rstrip("= ")
            # the customer's part is a browser's: its requests, not a command line
            done_by = "\nPOST /consent  [" if number == BROWSER_STEP else "\n$ "
            assert title and done_by in text, f"step {number}: no title or no command"
        tpp = f"{workdir}/tpp"
        commands = [line for line in out.splitlines() if line.startswith("$ .venv/bin/obdcr-tpp")]
        assert len(commands) >= 20
        assert all(line.startswith(f"$ .venv/bin/obdcr-tpp --workdir {tpp} ") for line in commands)
        assert "$ .venv/bin/flask --app " in out and f'instance_path="{workdir}"' in out

        # register: the client_id right below the status line, not under the SSA's claims
        register = steps[11]
        client_id = re.search(r'"client_id": "([0-9a-f-]{36})"', register).group(1)
        after_status = register[register.index("HTTP 201 Created") :].splitlines()[:3]
        assert any(client_id in line for line in after_status)

        # private_key_jwt: the client assertion it signed, header and claims
        token = steps[13]
        assert "the client assertion it signed" in token
        bank_url = re.search(r"AnyBank \(asks for client certificates\): (\S+)", out).group(1)
        header = json.loads(
            re.search(r"client assertion header:\n(\{.*?\n\})", token, re.S).group(1)
        )
        claims = json.loads(
            re.search(r"client assertion claims:\n(\{.*?\n\})", token, re.S).group(1)
        )
        assert header["alg"] == "PS256" and header["kid"]
        assert claims["iss"] == claims["sub"] == client_id
        assert claims["aud"] == f"{bank_url}/token"
        assert claims["jti"] and claims["exp"] > claims["iat"]
        assert token.index("client assertion header:") < token.index("HTTP 200 OK")

        assert_consent_journey(steps, tpp)
        assert_acronyms_explained_once(out)

        # KEEP=1: the folder stays, and the demo says where and how to remove it
        assert f"working folder kept: {workdir}" in out
        assert f"rm -r {workdir}" in out
        # its servers are gone: only the offline commands work on it, and it says so
        flat = _flat(out)
        assert "only the offline commands work on it: status, decode, p12, request" in flat
        assert f".venv/bin/obdcr-tpp --workdir {workdir / 'tpp'} status" in flat
        assert (workdir / "tpp" / "registration.json").exists()
        assert out.rstrip().endswith("demo complete: every step behaved as expected")
        directory_url = re.search(r"sandbox Open Banking Directory: (\S+)", out).group(1)
        assert _port_closed(directory_url) and _port_closed(bank_url)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_demo_step_mode_waits_for_enter_on_a_terminal():
    """On a terminal, --step (STEP=1) stops before each step until Enter; the working folder
    is removed at the end, and the demo says how to keep it."""
    import pty

    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "example_app.demo", "--step", "--threads"],
        cwd=REPO,
        env=_env(),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.close(slave)
    assert process.stdout is not None
    output = b""

    def read_until(pattern: bytes, timeout: float) -> bool:
        nonlocal output
        deadline = time.monotonic() + timeout
        while not re.search(pattern, output):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([process.stdout], [], [], remaining)
            if not ready:
                return False
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                return bool(re.search(pattern, output))
            output += chunk
        return True

    try:
        assert read_until(rf"-- Enter: step 2 of {STEPS}".encode(), 60), output.decode()[-2000:]
        assert b"== 2. " not in output
        assert not read_until(rb"== 2\. ", 1.0)  # it waits
        for number in range(2, STEPS + 1):
            os.write(master, b"\n")
            assert read_until(rf"== {number}\. ".encode(), 30), output.decode()[-2000:]
            if number < STEPS:
                assert read_until(rf"-- Enter: step {number + 1} of {STEPS}".encode(), 30)
        assert read_until(rb"demo complete", 60), output.decode()[-2000:]
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(master)
    out = output.decode()
    workdir = re.search(r"^working folder: (\S+)", out, flags=re.M).group(1)
    assert f"working folder removed ({workdir}): make demo KEEP=1 keeps it" in out
    assert not Path(workdir).exists()


# -- make serve, make reset, make help ------------------------------------------------------------


@needs_make
def test_make_serve_twice_says_so_and_leaves_the_first_alone_then_make_reset(tmp_path):
    instance = tmp_path / "instance"
    variables = [f"INSTANCE={instance}", "DIRECTORY_PORT=0", "BANK_PORT=0", "TPP_PORT=0"]
    first = subprocess.Popen(
        ["make", "-s", *KEEP_STAMPS, "serve", *variables, f"BIN={BIN}"],
        cwd=REPO,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        banner, directory_url, bank_url = read_serve_banner(first, seconds=60)
        # the banner names the ports' variables, and how to start afresh
        ports = re.search(r"^ports\s+DIRECTORY_PORT=(\d+) BANK_PORT=(\d+)", banner, flags=re.M)
        assert ports and bank_url.endswith(f":{ports.group(2)}")
        assert "0: any free port" in banner
        assert f"make reset INSTANCE={instance}" in banner
        ca = str(instance / "directory" / "ca-bundle.pem")
        url_files = {p.name: p.read_text() for p in (instance / "run").glob("*.url")}
        assert sorted(url_files) == ["bank.url", "directory.url", "tpp.url"]

        # a second make serve on the same state: the URLs of the first, no traceback
        second = _make("serve", *variables, timeout=60)
        said = second.stdout + second.stderr
        assert second.returncode == 0, said
        assert "already running" in said and "Traceback" not in said
        assert bank_url in said and directory_url in said
        assert {p.name: p.read_text() for p in (instance / "run").glob("*.url")} == url_files
        discovery = requests.get(
            f"{bank_url}/.well-known/openid-configuration", verify=ca, timeout=10
        )
        assert discovery.json()["issuer"] == bank_url

        # make reset refuses while it runs
        refused = _make("reset", f"INSTANCE={instance}", timeout=60)
        assert refused.returncode != 0
        assert "Not reset" in refused.stderr and "make reset STOP=1" in refused.stderr
        assert (instance / "directory").is_dir()
        assert requests.get(f"{directory_url}/openbanking.jwks", verify=ca, timeout=10).ok

        # STOP=1: stopped, then removed
        reset = _make("reset", f"INSTANCE={instance}", "STOP=1", timeout=90)
        assert reset.returncode == 0, reset.stdout + reset.stderr
        assert f"removed {instance}" in reset.stdout
        assert not instance.exists()
        assert first.wait(timeout=30) == 0
        assert _port_closed(bank_url) and _port_closed(directory_url)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()


def test_make_serve_banner_prints_the_readme_commands_for_a_fresh_shell(monkeypatch):
    """The default instance on the default ports: the README's lines, runnable with no
    virtual environment activated (.venv/bin/..., the checkout's .flaskenv for flask)."""
    from types import SimpleNamespace

    from example_app.serve import banner

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [str(REPO / "example_app" / "serve.py")])
    instance = REPO / "instance"
    sandbox = SimpleNamespace(
        folder=instance,
        tpp_folder=instance / "tpp",
        ca_bundle=instance / "directory" / "ca-bundle.pem",
        directory_url="https://127.0.0.1:8443",
        bank_url="https://127.0.0.1:9443",
        tpp_url="https://127.0.0.1:7443",
    )
    lines = [line.strip() for line in banner(sandbox).splitlines()]  # type: ignore[arg-type]
    tpp = ".venv/bin/obdcr-tpp"
    # the redirect URI: onboard's default, the TPP's page's callback
    assert f'{tpp} onboard --client-name "My TPP" --role AISP' in lines
    assert "The TPP's web page              https://127.0.0.1:7443/" in lines
    assert "its redirect URI              https://127.0.0.1:7443/callback" in lines
    assert any(
        line.startswith("console") and "https://127.0.0.1:9443/console/" in line for line in lines
    )
    assert "portal                        https://127.0.0.1:8443/portal/" in lines
    console = "https://127.0.0.1:9443/console/  (sign in: operator / anybank-sandbox-only)"
    assert any(line.endswith(console) for line in lines)
    # the customer's journey: the page, the sandbox CA a browser warns about, the commands
    flat = _flat(banner(sandbox))  # type: ignore[arg-type]
    assert "open https://127.0.0.1:7443/ in a browser, Connect, sign in at AnyBank as mits" in flat
    assert "proceed, or trust instance/directory/ca-bundle.pem" in flat
    assert f"{tpp} accounts (then: refresh, revoke-consent)" in flat
    assert any(line.startswith(f"{tpp} keys ") for line in lines)
    assert any(line.startswith(f"{tpp} status ") for line in lines)
    assert any(line.startswith(f"{tpp} revoke ") for line in lines)
    assert ".venv/bin/flask obdcr clients list" in lines
    assert ".venv/bin/flask obdcr revalidate" in lines
    assert any(
        line.startswith(".venv/bin/obdcr-directory org-status <org_id> Revoked") for line in lines
    )
    text = "\n".join(lines)
    assert "python -m" not in text and " init " not in text and "--app" not in text
    for line in lines:  # every command line names a program that exists from a fresh shell
        if line.startswith(".venv/bin/"):
            assert (REPO / line.split()[0]).exists(), line

    # another folder and ports: the options that reach them
    other = REPO / "instance2"
    sandbox.folder, sandbox.tpp_folder = other, other / "tpp"
    sandbox.ca_bundle = other / "directory" / "ca-bundle.pem"
    sandbox.directory_url, sandbox.bank_url = "https://127.0.0.1:8444", "https://127.0.0.1:9444"
    sandbox.tpp_url = "https://127.0.0.1:7444"
    text = banner(sandbox)  # type: ignore[arg-type]
    assert f"{tpp} --workdir instance2/tpp onboard" in text
    assert "--role AISP --redirect-uri https://127.0.0.1:7444/callback" in text
    assert "--directory https://127.0.0.1:8444 --bank https://127.0.0.1:9444" in text
    assert "--url https://127.0.0.1:8444 --ca instance2/directory/ca-bundle.pem" in text
    assert ".venv/bin/flask --app " in text


@needs_make
def test_make_serve_names_a_port_another_program_holds(tmp_path):
    instance = tmp_path / "instance"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = _make(
            "serve",
            f"INSTANCE={instance}",
            f"DIRECTORY_PORT={port}",
            "BANK_PORT=0",
            "TPP_PORT=0",
            timeout=60,
        )
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"{port} (DIRECTORY_PORT)" in said
    assert "make serve DIRECTORY_PORT=8444 BANK_PORT=9444 TPP_PORT=7444" in said
    assert "Traceback" not in said
    assert not instance.exists()


@needs_make
def test_make_reset_removes_only_workshop_state(tmp_path):
    missing = _make("reset", f"INSTANCE={tmp_path / 'nothing'}")
    assert missing.returncode == 0 and "nothing to reset" in missing.stdout
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\n")
    refused = _make("reset", f"INSTANCE={project}")
    assert refused.returncode != 0 and "does not look like a sandbox" in refused.stderr
    assert (project / "pyproject.toml").exists()


@needs_make
def test_make_help_documents_the_targets_and_their_variables():
    for goal in ([], ["help"]):
        done = subprocess.run(
            ["make", "-s", *goal],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        text = done.stdout
        for target in ("make demo", "make serve", "make reset", "make test"):
            assert target in text, target
        for variable in (
            "VERBOSE=1",
            "STEP=1",
            "KEEP=1",
            "AUTH_METHOD=private_key_jwt",
            "DIRECTORY_PORT=8443",
            "BANK_PORT=9443",
            "TPP_PORT=7443",
            "INSTANCE=instance",
            "STOP=1",
        ):
            assert variable in text, variable
        assert "0: any free port" in text


# -- the test summary without slapd ---------------------------------------------------------------


def test_skips_collapse_to_one_line_per_reason_with_the_fix(tmp_path):
    """Without slapd, the ~130 LDAP tests skip: one summary line says so and what to install;
    other reasons keep a line each (counted), failures and xfails are reported as before."""
    other = tmp_path / "test_other_reasons.py"
    other.write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_skips(n):\n"
        "    pytest.skip('some other reason')\n\n"
        "def test_fails():\n"
        "    assert False\n\n"
        "@pytest.mark.xfail(reason='known')\n"
        "def test_xfails():\n"
        "    assert False\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_storage_ldap.py",
            str(other),
        ],
        cwd=REPO,
        env=_env(OBDCR_TEST_SLAPD=str(tmp_path / "no-slapd")),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    skipped_lines = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    ldap = [line for line in skipped_lines if "slapd" in line]
    assert len(ldap) == 1, skipped_lines
    count = int(re.search(r"SKIPPED \[(\d+)\]", ldap[0]).group(1))
    assert count > 50
    assert "install slapd and ldap-utils" in ldap[0] and ".ci/run" in ldap[0]
    assert "SKIPPED [2] some other reason" in skipped_lines
    assert len(skipped_lines) == 2
    assert re.search(rf"\b{count + 2} skipped\b", out)
    assert re.search(r"^FAILED .*test_fails", out, flags=re.M)
    assert re.search(r"^XFAIL .*test_xfails - known", out, flags=re.M)
