import re

import pytest
from authlib.integrations.flask_oauth2 import AuthorizationServer

from flask_obdcr.storage import MemoryStore

pytest_plugins = ["flask_obdcr.testing.fixtures"]

# the `browser` fixture (Debian's Chromium through Selenium) for the page tests
from browser import browser  # noqa: E402, F401


@pytest.fixture
def issuer(ob_issuer) -> str:
    return ob_issuer


@pytest.fixture
def post_registration(ob_app):
    """POST a body to /register of ``ob_app`` (or of ``app=``) with a client certificate."""

    def post(body, *, software=None, environ=None, content_type="application/jwt", app=None):
        target = app or ob_app
        if environ is None:
            environ = software.environ() if software is not None else {}
        with target.test_client() as client:
            return client.post(
                "/register", data=body, content_type=content_type, environ_base=environ
            )

    return post


# -- a bank with an Authlib token endpoint (tests/test_authlib_server.py, test_hardened_edge.py)


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def bank(request, ob_app_factory, store):
    """A sandbox bank with /token and /accounts; indirect parameters are OBDCR_* settings."""
    app = ob_app_factory(store=store, **getattr(request, "param", {}))
    from flask_obdcr.testing.fixtures import DCR_KEY  # after pytest_plugins has loaded it

    dcr = app.extensions[DCR_KEY]
    server = AuthorizationServer(app, query_client=dcr.query_client, save_token=dcr.save_token)
    dcr.configure_authorization_server(server)

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.get("/accounts")
    @dcr.require_token("accounts")
    def accounts():
        return {"Data": {"Account": [{"AccountId": "22289"}]}}

    app.dcr = dcr
    return app


@pytest.fixture
def http(bank):
    return bank.test_client()


# -- skipped tests: one line per reason, with what to do about it -----------------------------
#
# Without slapd (or Redis, or PostgreSQL) a whole family of tests skips, each for the same
# reason; `-ra` (pytest's addopts) would print a line for every place they skip from. These
# hooks print one line per reason instead, with the count and the remedy; other summary lines
# (failures, errors, xfails) stay as pytest prints them. `-vv` restores pytest's own lines.

#: (pattern of a skip reason, what the line says); the first that matches names the group
SKIP_REMEDIES: list[tuple[str, str]] = [
    (
        r"slapd|ldapsearch|ldap-utils",
        "LDAP tests skipped (no slapd): install slapd and ldap-utils"
        " (apt-get install slapd ldap-utils), as .ci/run does",
    ),
    (r"ldap3", "LDAP tests skipped (no ldap3): pip install -e '.[test]'"),
    (
        r"no Redis at (?P<url>\S+):\s",
        "Redis tests skipped (no Redis at {url}): start redis-server, or point"
        " OBDCR_TEST_REDIS_URL at one",
    ),
    (
        r"no PostgreSQL at (?P<url>\S+):\s",
        "PostgreSQL tests skipped (no PostgreSQL at {url}): start PostgreSQL, or point"
        " OBDCR_TEST_POSTGRES_URL at one",
    ),
    (
        r"could not import '(?P<module>[\w.]+)'",
        "tests needing {module} skipped ({module} is not installed): pip install -e '.[test]'",
    ),
]


def _without_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def skip_group(reason: str) -> str:
    """The summary line for a skip ``reason``: its group's line with the remedy, or the
    reason itself."""
    reason = reason.removeprefix("Skipped: ")
    for pattern, line in SKIP_REMEDIES:
        found = re.search(pattern, reason)
        if found:
            fields = {k: _without_password(v) for k, v in found.groupdict().items()}
            return line.format(**fields)
    return reason


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    reporter = terminalreporter
    chars = reporter.reportchars
    collapse = (
        ("s" in chars or "S" in chars)
        and reporter.config.get_verbosity() < 2
        and not getattr(reporter, "no_summary", False)
    )
    if collapse:  # pytest's short summary without its skip lines: ours follow it
        reporter.reportchars = chars.replace("s", "").replace("S", "")
    try:
        return (yield)
    finally:
        reporter.reportchars = chars
        if collapse:
            _summarise_skips(reporter)


def _summarise_skips(reporter) -> None:
    counts: dict[str, int] = {}
    for report in reporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
        group = skip_group(str(reason))
        counts[group] = counts.get(group, 0) + 1
    if not counts:
        return
    reporter.write_sep("=", "skipped tests, by reason", yellow=True)
    for group, count in sorted(counts.items(), key=lambda item: -item[1]):
        reporter.write_line(f"SKIPPED [{count}] {group}")
