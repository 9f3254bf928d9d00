"""``flask obdcr clients list | show ID | delete ID``, through app.test_cli_runner()."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from test_explain import DEFAULT_CHECKS

from flask_obdcr import OpenBankingDCR
from flask_obdcr.storage import MemoryStore, SQLiteStore, StoredClient


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def app(ob_app_factory, store):
    return ob_app_factory(store=store)


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def registered(app, ob_directory, ob_software, ob_ec_software, issuer, post_registration):
    """Three clients registered through POST /register: their 201 response bodies."""
    bodies = []
    for software, method in [
        (ob_software, "tls_client_auth"),
        (ob_ec_software, "private_key_jwt"),
        (ob_software, "client_secret_basic"),
    ]:
        body = ob_directory.registration_request(
            software, aud=issuer, token_endpoint_auth_method=method
        )
        response = post_registration(body, software=software, app=app)
        assert response.status_code == 201, response.get_json()
        bodies.append(response.get_json())
    return bodies


def invoke(runner, *args, input=None):
    return runner.invoke(args=["obdcr", "clients", *args], input=input)


def test_list_empty(runner):
    result = invoke(runner, "list")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "0 client(s)\n"


def test_list_registered_clients(runner, store, registered, ob_software, ob_ec_software):
    result = invoke(runner, "list")
    assert result.exit_code == 0, result.output
    expected = [
        "\t".join(
            [
                client.client_id,
                str(client.client_id_issued_at),
                client.software_id,
                client.org_id,
                client.token_endpoint_auth_method,
                "active",
            ]
        )
        for client in store.list()
    ]
    assert result.stdout.splitlines() == expected
    assert result.stderr == "3 client(s)\n"
    # what the lines say about each registered client
    by_id = {line.split("\t")[0]: line.split("\t")[1:] for line in result.stdout.splitlines()}
    software = [ob_software, ob_ec_software, ob_software]
    methods = ["tls_client_auth", "private_key_jwt", "client_secret_basic"]
    assert by_id == {
        body["client_id"]: [
            str(body["client_id_issued_at"]),
            sw.software_id,
            sw.org_id,
            method,
            "active",
        ]
        for body, sw, method in zip(registered, software, methods, strict=True)
    }


def test_show_prints_the_response_view(runner, store, registered):
    client_id = registered[2]["client_id"]
    result = invoke(runner, "show", client_id)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown == store.get(client_id).to_response()
    assert shown["client_id"] == client_id
    # never a secret, nor its hash
    for secret in ("client_secret", "registration_access_token"):
        assert secret not in shown
        assert registered[2][secret] not in result.stdout
    stored = store.get(client_id)
    assert stored.client_secret_hash not in result.stdout
    assert stored.registration_access_token_hash not in result.stdout


@pytest.mark.parametrize("client_id", ["unknown", "a/b", "x" * 37])
def test_show_unknown_fails(runner, registered, client_id):
    result = invoke(runner, "show", client_id)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: no client {client_id!r}\n"


def test_delete_removes_the_client(runner, store, registered):
    client_id = registered[0]["client_id"]
    result = invoke(runner, "delete", client_id, "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"deleted {client_id}\n"
    assert store.get(client_id) is None
    assert sorted(c.client_id for c in store.list()) == sorted(
        b["client_id"] for b in registered[1:]
    )
    again = invoke(runner, "delete", client_id, "--yes")
    assert again.exit_code == 1
    assert again.stderr == f"Error: no client {client_id!r}\n"


def test_delete_unknown_fails(runner, store, registered):
    result = invoke(runner, "delete", "unknown", "--yes")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: no client 'unknown'\n"
    assert len(store) == 3


def test_delete_asks_for_confirmation(runner, store, registered):
    client_id = registered[1]["client_id"]
    refused = invoke(runner, "delete", client_id, input="n\n")
    assert refused.exit_code == 1
    assert store.get(client_id) is not None
    confirmed = invoke(runner, "delete", client_id, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert store.get(client_id) is None
    assert len(store) == 2


def test_commands_use_the_default_sqlite_store(tmp_path, ob_directory, issuer):
    client = StoredClient(
        client_id="from-elsewhere",
        client_id_issued_at=1_700_000_000,
        metadata={"redirect_uris": ["https://tpp.example.com/cb"], "scope": "openid accounts"},
        ssa_claims={"software_id": "sw1", "org_id": "org1", "software_roles": ["AISP"]},
    )
    app = Flask("cli_bank", instance_path=str(tmp_path / "instance"))
    app.config.update(ob_directory.app_config(tmp_path / "ca.pem", issuer=issuer))
    OpenBankingDCR(app)
    # another process wrote the client into the instance database
    SQLiteStore(tmp_path / "instance" / "obdcr.db").add(client)
    runner = app.test_cli_runner()
    shown = invoke(runner, "show", "from-elsewhere")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == client.to_response()
    listed = invoke(runner, "list")
    assert listed.stdout == "from-elsewhere\t1700000000\tsw1\torg1\tNone\tactive\n"
    deleted = invoke(runner, "delete", "from-elsewhere", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert SQLiteStore(tmp_path / "instance" / "obdcr.db").get("from-elsewhere") is None


# -- flask obdcr explain ------------------------------------------------------------------------

EXPLAINED = DEFAULT_CHECKS  # the default pipeline's policies, in order


@pytest.fixture
def transport_pem(tmp_path, ob_software):
    path = tmp_path / "transport.pem"
    path.write_text(ob_software.transport_pem())
    return path


def request_file(tmp_path, body):
    path = tmp_path / "request.jwt"
    path.write_text(body + "\n")  # as an editor would save it
    return path


def table_rows(stdout):
    """(number, policy, verdict) of each row of the explain table."""
    rows = []
    for line in stdout.splitlines()[2:]:
        if line[:1].isdigit():
            number, policy, verdict = line.split()[:3]
            rows.append((int(number), policy, "not reached" if verdict == "not" else verdict))
    return rows


def test_explain_prints_a_table_and_registers_nothing(
    runner,
    app,
    store,
    tmp_path,
    transport_pem,
    ob_directory,
    ob_software,
    issuer,
    post_registration,
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    path = request_file(tmp_path, body)
    result = runner.invoke(args=["obdcr", "explain", str(path), "--cert", str(transport_pem)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#", "policy", "verdict", "detail", "clause"]
    assert table_rows(result.stdout) == [
        (number, name, "passed") for number, name in enumerate(EXPLAINED, 1)
    ]
    assert 'OB DCR v3.3 "Software Statement"' in result.stdout
    assert lines[-1] == "registrable: every check passed"
    assert len(store) == 0
    # the request's jti was not consumed: the same body registers
    assert post_registration(body, software=ob_software, app=app).status_code == 201


@pytest.mark.parametrize(
    "claims,cert,failed",
    [
        pytest.param({"aud": "https://another-bank.example"}, True, "request_claims", id="aud"),
        pytest.param({}, False, "transport_certificate", id="no-cert"),
    ],
)
def test_explain_exits_1_and_names_the_failed_check(
    claims,
    cert,
    failed,
    runner,
    store,
    tmp_path,
    transport_pem,
    ob_directory,
    ob_software,
    issuer,
):
    body = ob_directory.registration_request(ob_software, **{"aud": issuer, **claims})
    args = ["obdcr", "explain", str(request_file(tmp_path, body))]
    result = runner.invoke(args=args + (["--cert", str(transport_pem)] if cert else []))
    assert result.exit_code == 1, result.output
    index = EXPLAINED.index(failed)
    assert [verdict for _, _, verdict in table_rows(result.stdout)] == (
        ["passed"] * index + ["failed"] + ["not reached"] * (len(EXPLAINED) - index - 1)
    )
    assert result.stdout.splitlines()[-1] == f"not registrable: refused by {failed}"
    assert len(store) == 0


def test_explain_json_is_the_report(
    runner, app, store, tmp_path, transport_pem, ob_directory, ob_software, issuer
):
    body = ob_directory.registration_request(ob_software, aud="https://another-bank.example")
    args = ["obdcr", "explain", str(request_file(tmp_path, body)), "--cert", str(transport_pem)]
    result = runner.invoke(args=[*args, "--json"])
    assert result.exit_code == 1, result.output
    printed = json.loads(result.stdout)
    dcr = app.extensions["obdcr.testing.extension"]
    assert printed == {
        "report": dcr.explain(body.encode() + b"\n", certificate=ob_software.transport_pem()),
        "registrable": False,
    }
    failed = printed["report"][EXPLAINED.index("request_claims")]
    assert failed["verdict"] == "failed"
    assert failed["detail"] == (
        "400 invalid_client_metadata: The request aud does not name this authorization server."
        " (aud 'https://another-bank.example')"
    )
    assert len(store) == 0
