"""``flask obdcr clients list | show ID | delete ID``, ``purge``, ``revalidate``, ``explain``."""

from __future__ import annotations

import json
import shutil
import sys
from typing import IO

import click
from flask import current_app
from flask.cli import AppGroup

from .errors import RegistrationError
from .explain import certificate_loader, explain, format_report, registrable
from .jobs import revalidate_app
from .registration import suspension
from .state import EXTENSION_KEY, DCRState

obdcr_cli = AppGroup("obdcr", help="Open Banking Dynamic Client Registration.")
clients_cli = AppGroup("clients", help="Registered clients.")
obdcr_cli.add_command(clients_cli)


def _state() -> DCRState:
    return current_app.extensions[EXTENSION_KEY]


def _store():
    return _state().store


@clients_cli.command("list")
def list_clients() -> None:
    """One line per client: id, issued at, software, org, auth method, status (and why a
    suspended client is suspended)."""
    count = 0
    for client in _store().list():
        count += 1
        suspended = suspension(client)
        status = "active" if suspended is None else f"suspended: {suspended.get('reason')}"
        click.echo(
            f"{client.client_id}\t{client.client_id_issued_at}\t{client.software_id}"
            f"\t{client.org_id}\t{client.token_endpoint_auth_method}\t{status}"
        )
    click.echo(f"{count} client(s)", err=True)


@clients_cli.command("show")
@click.argument("client_id")
def show_client(client_id: str) -> None:
    """The client as the registration endpoint returns it (no secrets)."""
    client = _store().get(client_id)
    if client is None:
        raise click.ClickException(f"no client {client_id!r}")
    click.echo(json.dumps(client.to_response(), indent=2, sort_keys=True))


@clients_cli.command("delete")
@click.argument("client_id")
@click.confirmation_option(prompt="Delete this client?")
def delete_client(client_id: str) -> None:
    """Revoke the client's access tokens, then delete it (as DELETE /register/<id> does)."""
    state = _state()
    client = state.store.get(client_id)
    if client is None:
        raise click.ClickException(f"no client {client_id!r}")
    try:
        state.registrar.delete(client)
    except RegistrationError as exc:
        raise click.ClickException(exc.description) from None
    click.echo(f"deleted {client_id}")


@obdcr_cli.command("purge")
def purge() -> None:
    """Delete expired access tokens, and expired replay-cache entries where the backend keeps
    them (Redis expires its own), now rather than as new ones are written. Prints the counts."""
    state = _state()
    try:
        tokens = state.tokens.purge_expired()
        purge_jtis = getattr(state.replay_cache, "purge_expired", None)  # a 0.2-style cache
        jtis = purge_jtis() if purge_jtis is not None else 0
    except Exception as exc:  # noqa: BLE001 - the store is down: say so, no traceback
        raise click.ClickException(f"purge failed: {exc!r}") from None
    click.echo(f"purged {tokens} expired access token(s) and {jtis} expired replay entry(ies)")


#: exit status of ``revalidate`` when another pass holds the lock (sysexits EX_TEMPFAIL)
BUSY = 75


@obdcr_cli.command("revalidate")
@click.option("--workers", default=8, show_default=True, help="Concurrent key-set fetches.")
def revalidate_clients(workers: int) -> None:
    """Re-check every registered client against the Directory as it is now: the SSA's
    signature, revoked keys, the transport certificate, the organisation's status. Suspends
    the clients that fail (their token requests get 401) and reinstates suspended ones that
    pass. Exit status 1 when any client is suspended, 75 when another pass is running; safe
    to run from cron on several hosts."""
    total = len(_store())
    with click.progressbar(length=total, label="Re-validating", file=sys.stderr) as bar:
        report = revalidate_app(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            max_workers=workers,
            on_finding=lambda finding, client: bar.update(1),
        )
    if report is None:
        click.echo("Another re-validation pass is running; nothing done.", err=True)
        raise SystemExit(BUSY)
    rows = [f for f in report.findings if f.outcome != "passed"]
    if rows:
        click.echo(f"{'client_id':36}  {'outcome':15}  reason")
        for finding in rows:
            click.echo(f"{finding.client_id:36}  {finding.outcome:15}  {finding.reason or ''}")
    outcomes = ("passed", "suspended", "still suspended", "reinstated", "undecided")
    summary = ", ".join(f"{report.count(o)} {o}" for o in outcomes if report.count(o))
    click.echo(
        f"{len(report.findings)} client(s): {summary or 'none'};"
        f" {report.fetched} key set(s) fetched, {report.fetch_failures} failed"
    )
    if report.any_failed:
        raise SystemExit(1)


@obdcr_cli.command("explain")
@click.argument("request_file", metavar="FILE", type=click.File("rb"))
@click.option(
    "--cert",
    "cert_file",
    type=click.File("rb"),
    help="The transport certificate (PEM) the TPP would present; without it, no certificate.",
)
@click.option(
    "--content-type",
    default="application/jwt",
    show_default=True,
    help="The Content-Type the request would be sent with.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def explain_request(
    request_file: IO[bytes], cert_file: IO[bytes] | None, content_type: str, as_json: bool
) -> None:
    """What POST /register would make of the registration request in FILE (a signed JWT; - for
    stdin), policy by policy: passed, failed or not reached, the detail a refusal withholds on
    the wire, and the rule each enforces. Stores nothing and does not consume the request's
    jti. Exit status 1 when a check failed."""
    state = _state()
    limit = state.settings.max_request_bytes
    body = request_file.read(limit + 1)  # enough for request_body to tell it is too large
    certificate = cert_file.read() if cert_file is not None else None
    report = explain(state.registrar, body, content_type, certificate_loader(certificate))
    ok = registrable(report)
    if as_json:
        click.echo(json.dumps({"report": report, "registrable": ok}, indent=2))
    else:
        click.echo(format_report(report, width=shutil.get_terminal_size((120, 24)).columns))
    if not ok:
        raise SystemExit(1)
