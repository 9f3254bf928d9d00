"""The sandbox Directory's command line: ``obdcr-directory COMMAND`` (the same as ``python -m
example_app.directory``).

``init``, ``server-cert`` and ``serve`` work on the state folder (``--state``); ``onboard``,
``revoke`` and ``org-status`` are what an operator or a TPP's technical contact does through
the running service's HTTP API (``--url``, ``--ca``; by default the ``make serve`` layout), so
that the service, which holds the registry, makes every change itself. ``onboard --workdir``
also writes the new ids into a TPP working folder's ``tpp.json``, where ``obdcr-tpp`` reads
them. A refusal prints its cause and what to do next, and exits with status 1.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .._util import (
    Refusal,
    connection_refusal,
    program_name,
    read_json,
    refuse_placeholder,
    write_json,
)
from .state import ORG_STATUSES, REVOCATION_REASONS, ROLES, DirectoryState

__all__ = [
    "cli",
    "directory_command",
    "flask_command",
    "installed_command",
    "main",
    "revocation_consequences",
    "shown_path",
]

DEFAULT_URL = "https://127.0.0.1:8443"
DEFAULT_CA = os.path.join("instance", "directory", "ca-bundle.pem")
#: printed explanations are wrapped to this width
WIDTH = 92

#: every state command works on one state folder
state_option = click.option(
    "--state",
    "state_dir",
    default="instance/directory",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder holding the Directory's state.",
)


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--url`` and ``--ca`` of a command that calls the running service."""
    command = click.option(
        "--ca",
        "ca_file",
        default=DEFAULT_CA,
        show_default=True,
        type=click.Path(dir_okay=False),
        help="The sandbox CA bundle, to verify the Directory's HTTPS certificate.",
    )(command)
    return click.option(
        "--url",
        default=DEFAULT_URL,
        show_default=True,
        envvar="DIRECTORY_URL",
        help="The Directory's URL.",
    )(command)


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as it can be typed here: relative to the current folder when under it (symlinks
    not followed), shell-quoted."""
    absolute = Path(os.path.abspath(path))
    try:
        shown = str(absolute.relative_to(Path(os.path.abspath(os.getcwd()))))
    except ValueError:
        shown = str(absolute)
    return shlex.quote(shown)


def installed_command(script: str) -> str:
    """How to run one of the checkout's command lines (``obdcr-tpp``, ``obdcr-directory``,
    ``flask``) from a fresh shell, no virtual environment activated: the program as it was
    invoked when that is the script (``sys.argv[0]``, a path), else the script next to this
    Python (``.venv/bin/obdcr-tpp``), shown relative to the current folder when under it."""
    started = sys.argv[0] if sys.argv else ""
    if os.path.basename(started) == script and os.sep in started:
        return shown_path(started)
    beside = Path(sys.executable).parent / script
    if beside.exists():
        return shown_path(beside)
    return os.path.join(".venv", "bin", script)


def directory_command(args: str, *, url: str | None = None, ca_file: str | None = None) -> str:
    """``.venv/bin/obdcr-directory ARGS``, with ``--url`` and ``--ca`` when they are not the
    ``make serve`` layout's (the defaults)."""
    command = f"{installed_command('obdcr-directory')} {args}"
    if url and url.rstrip("/") != DEFAULT_URL:
        command += f" --url {shlex.quote(url.rstrip('/'))}"
    if ca_file and os.path.abspath(ca_file) != os.path.abspath(DEFAULT_CA):
        command += f" --ca {shown_path(ca_file)}"
    return command


def flask_command(args: str) -> str:
    """``.venv/bin/flask ARGS`` (the checkout's .flaskenv names the example bank)."""
    return f"{installed_command('flask')} {args}"


def prog() -> str:
    """How to run this command line again, for the hints (``.venv/bin/obdcr-directory``)."""
    return installed_command("obdcr-directory")


def _call(
    url: str, ca_file: str, method: str, path: str, *, ok: int = 200, **kwargs: Any
) -> dict[str, Any]:
    """One call to the running Directory's API; any refusal is a :class:`Refusal` with its
    cause and what to do next."""
    import requests

    if not os.path.isfile(ca_file):
        raise Refusal(
            f"no sandbox CA bundle at {ca_file}",
            cause=f"the Directory's state is not in {os.path.dirname(ca_file) or '.'} (looked"
            f" from {os.getcwd()})",
            remedy="run from the checkout where `make serve` runs, or pass --ca (`make serve`"
            " prints the bundle's path)",
        )
    target = url.rstrip("/") + path
    try:
        response = requests.request(method, target, verify=ca_file, timeout=10, **kwargs)
    except requests.exceptions.RequestException as exc:
        raise connection_refusal(
            exc, target, server="the Directory", prog=prog(), ca=ca_file
        ) from None
    if response.status_code != ok:
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error", "") if isinstance(body, dict) else ""
        description = body.get("error_description", "") if isinstance(body, dict) else ""
        said = description or response.text.strip()[:200]
        if response.status_code == 404:
            remedy = (
                "check the id: the one `onboard` printed, at this Directory"
                f" (GET {url.rstrip('/')}/api/software/<software_id> lists its certificates)"
            )
        elif response.status_code == 400:
            remedy = f"see `{prog()} {click.get_current_context().info_name} --help`"
        else:
            remedy = "see the Directory's log (the `make serve` terminal)"
        raise Refusal(
            f"{method} {path}: HTTP {response.status_code} {error}".rstrip(),
            cause=said,
            remedy=remedy,
        )
    return response.json()


def revocation_consequences(record: dict[str, Any], directory_url: str) -> list[str]:
    """What a revocation changes at the Directory, and when a bank notices, as printed lines."""
    kid, serial = record["kid"], record["serial_number"]
    directory = [
        f"key {kid} has moved to the software's revoked key set (software_jwks_revoked_endpoint);",
    ]
    if record.get("ocsp_url"):
        directory += [
            f"the CRL ({record['crl_distribution_point']}) lists serial {serial};",
            f'the OCSP responder ({record["ocsp_url"]}) answers "revoked" for it.',
        ]
    else:
        directory.append(
            f"serial {serial} is on the CRL ({directory_url.rstrip('/')}/pki/issuing.crl), but"
            " this certificate names no CRL or OCSP URL (it was issued before they existed)."
        )
    if record.get("type") == "signing":
        bank = [
            "requests and client assertions signed with this key are refused once the bank's"
            " copy of the revoked key set is refreshed (after at most 60 s, the Directory's"
            " max-age);",
        ]
    else:
        bank = [
            "every call made with this certificate (registration, token, /register/<id>, the"
            " accounts API) is refused with 401: at once if the bank has no answer about it"
            " cached, else once that answer is older than OBDCR_REVOCATION_CACHE_SECONDS (300 s"
            " by default); registrations and token requests as soon as the bank's copy of the"
            " revoked key set is refreshed (after at most 60 s), if that comes first;",
        ]
    bank.append(
        f"`{flask_command('obdcr revalidate')}` at the bank suspends the registrations concerned."
    )
    lines = ["At the Directory, now:"]
    lines += [
        textwrap.fill(item, WIDTH, initial_indent="  - ", subsequent_indent="    ")
        for item in directory
    ]
    lines.append("At a bank:")
    lines += [
        textwrap.fill(item, WIDTH, initial_indent="  - ", subsequent_indent="    ") for item in bank
    ]
    return lines


@click.group(help="The sandbox Open Banking Directory.")
def cli() -> None:
    pass


@cli.command()
@state_option
def init(state_dir: str) -> None:
    """Create the Directory's PKI and SSA signing key (kept if they exist)."""
    state = DirectoryState.open(state_dir)
    click.echo(f"sandbox CA bundle: {state.ca_bundle}")


@cli.command("server-cert")
@state_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to write <name>.pem and <name>.key.",
)
@click.option("--name", default="server", show_default=True)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    default=["127.0.0.1", "localhost"],
    show_default=True,
    help="IP address or DNS name (repeat).",
)
def server_cert(state_dir: str, out_dir: str, name: str, hosts: tuple[str, ...]) -> None:
    """Issue an HTTPS server certificate from the sandbox PKI (e.g. for the bank)."""
    state = DirectoryState.open(state_dir)
    cert, key = state.issue_server_certificate(out_dir, name=name, hosts=hosts)
    click.echo(f"certificate: {cert}\nkey: {key}")


@cli.command()
@state_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8443, show_default=True, help="0: a free port.")
@click.option(
    "--url-file",
    type=click.Path(dir_okay=False),
    help="Write the service URL here once it is listening.",
)
@click.option("--exit-with-parent", is_flag=True, help="Stop when the parent process ends.")
def serve(state_dir: str, host: str, port: int, url_file: str | None, exit_with_parent: bool):
    """Serve the Directory over HTTPS until interrupted (its CRL and OCSP responder too)."""
    from ..serving import serve_until_stopped, server_hosts, tls_context
    from .api import create_directory_app

    parent = os.getppid() if exit_with_parent else None
    state = DirectoryState.open(state_dir)
    cert, key = state.issue_server_certificate(state.folder / "tls", hosts=server_hosts(host))

    def make_app(url: str):
        state.base_url = url
        return create_directory_app(state)

    serve_until_stopped(
        name="directory",
        title="Sandbox Open Banking Directory",
        host=host,
        port=port,
        ssl_context=tls_context(cert, key),
        make_app=make_app,
        url_file=url_file,
        parent_pid=parent,
    )


@cli.command()
@api_options
@click.option("--org-id", help="Add the software to this organisation (default: a new one).")
@click.option("--org-name", default="Sandbox TPP Ltd", show_default=True)
@click.option("--client-name", required=True, help="The software's name.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(ROLES),
    help="Software role (repeat).",
)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    required=True,
    help="https redirect URI (repeat).",
)
@click.option("--description")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="A TPP working folder: write the new org_id and software_id (and the Directory's URL"
    " and CA bundle) into its tpp.json, for obdcr-tpp.",
)
def onboard(
    url, ca_file, org_id, org_name, client_name, roles, redirect_uris, description, workdir
):
    """Onboard an organisation and a piece of software (the "Add new statement" form)."""
    if org_id is not None:
        _not_placeholder(org_id, "org_id")
    if org_id is None:
        organisation = _call(
            url, ca_file, "POST", "/api/organisations", ok=201, json={"org_name": org_name}
        )
        org_id = organisation["org_id"]
    body: dict[str, Any] = {
        "client_name": client_name,
        "roles": list(roles),
        "redirect_uris": list(redirect_uris),
    }
    if description:
        body["description"] = description
    software = _call(
        url, ca_file, "POST", f"/api/organisations/{org_id}/software", ok=201, json=body
    )
    click.echo(json.dumps(software, indent=2))
    if workdir is not None:
        tpp_json = Path(workdir) / "tpp.json"
        config = read_json(tpp_json, {}) or {}
        config.update(
            directory_url=url.rstrip("/"),
            ca_file=os.path.abspath(ca_file),
            org_id=software["org_id"],
            software_id=software["software_id"],
            client_name=software["client_name"],
            roles=software["roles"],
        )
        write_json(tpp_json, config)
        click.echo(f"wrote org_id and software_id to {tpp_json.resolve()}", err=True)
    return software


def _not_placeholder(value: str, what: str) -> str:
    return refuse_placeholder(
        value,
        what,
        f"pass the real {what}: `{installed_command('obdcr-tpp')} status` shows the ids of a TPP"
        f" working folder, `{installed_command('obdcr-tpp')} onboard` makes new ones",
    )


@cli.command()
@api_options
@click.option("--software-id", required=True, help="The software the certificate was issued to.")
@click.option(
    "--kid",
    required=True,
    help="The certificate's kid (GET /api/software/<software_id> lists them).",
)
@click.option(
    "--reason",
    type=click.Choice(list(REVOCATION_REASONS)),
    default="unspecified",
    show_default=True,
    help="The CRL reason code.",
)
def revoke(url: str, ca_file: str, software_id: str, kid: str, reason: str) -> dict[str, Any]:
    """Revoke a certificate: its key moves to the software's revoked JWKS, the issuing CA's
    CRL lists its serial and the OCSP responder answers "revoked"."""
    _not_placeholder(software_id, "software_id")
    _not_placeholder(kid, "kid")
    record = _call(
        url,
        ca_file,
        "DELETE",
        f"/api/software/{software_id}/certificates/{kid}",
        params={"reason": reason},
    )
    click.echo(json.dumps(record, indent=2))
    click.echo("\n".join(revocation_consequences(record, url)))
    return record


@cli.command("org-status")
@api_options
@click.argument("org_id")
@click.argument("status", required=False, type=click.Choice(ORG_STATUSES, case_sensitive=False))
def org_status(url: str, ca_file: str, org_id: str, status: str | None) -> dict[str, Any]:
    """Show an organisation's status, or set it to STATUS (Active, Revoked, Withdrawn).

    The Directory reports it at GET /api/organisations/<org_id> and puts it in the SSAs it
    generates from now on; a bank re-validating its clients (flask obdcr revalidate) suspends
    the registrations of an organisation that is not Active."""
    _not_placeholder(org_id, "org_id")
    path = f"/api/organisations/{org_id}"
    if status is None:
        organisation = _call(url, ca_file, "GET", path)
    else:
        organisation = _call(url, ca_file, "PATCH", path, json={"org_status": status})
    click.echo(json.dumps(organisation, indent=2))
    return organisation


def main(args: list[str] | None = None) -> Any:
    """The ``obdcr-directory`` console script (and ``python -m example_app.directory``)."""
    return cli.main(
        args=args, prog_name=program_name("obdcr-directory", "python -m example_app.directory")
    )
