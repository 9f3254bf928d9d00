"""Re-validation of registered clients (docs/architecture.md, "Contract: revocation"): a
client the Directory no longer vouches for is suspended (token requests 401 invalid_client,
tokens revoked, `clients list` says why, `client_suspended` sent) and reinstated when a later
pass finds it sound; one pass at a time per store; each distinct key set fetched once."""

from __future__ import annotations

import json
import threading

import pytest
from jwcrypto import jwk
from test_authlib_server import get_token, register

from flask_obdcr.jwks import JWKSUnavailable
from flask_obdcr.locks import lock_beside
from flask_obdcr.revalidation import StaticDirectoryStatus
from flask_obdcr.signals import client_reinstated, client_suspended
from flask_obdcr.storage import SQLiteStore


@pytest.fixture
def software(ob_directory, ob_fetcher):
    made = ob_directory.register_software(roles=["AISP"], key_type="EC")
    ob_fetcher.documents.update(ob_directory.documents())
    return made


def revalidate(bank, **kw):
    with bank.app_context():
        return bank.dcr.revalidate(**kw)


def outcome(report, client_id):
    return next(f for f in report.findings if f.client_id == client_id)


def token_status(http, software, registration) -> tuple[int, str | None]:
    response = get_token(http, software, registration)
    return response.status_code, (response.get_json() or {}).get("error")


def rotate_directory_keys(ob_fetcher, ob_directory) -> dict:
    """The Directory publishes a new SSA key and drops the old one; returns the old set."""
    old = ob_fetcher.documents[ob_directory.jwks_url]
    new = jwk.JWK.generate(kty="RSA", size=2048, kid="rotated", use="sig", alg="PS256")
    ob_fetcher.documents[ob_directory.jwks_url] = {"keys": [json.loads(new.export_public())]}
    return old


# -- suspension and reinstatement ---------------------------------------------------------------


def test_directory_key_rotated_away_suspends_then_reinstates(
    http, bank, ob_fetcher, ob_directory, software, issuer
):
    registration = register(http, ob_directory, software, issuer, "client_secret_basic")
    client_id = registration["client_id"]
    token = get_token(http, software, registration).get_json()["access_token"]
    old_keys = rotate_directory_keys(ob_fetcher, ob_directory)
    events = []
    with (
        client_suspended.connected_to(lambda app, **kw: events.append(("suspended", kw)), bank),
        client_reinstated.connected_to(lambda app, **kw: events.append(("reinstated", kw)), bank),
    ):
        report = revalidate(bank)
        finding = outcome(report, client_id)
        assert finding.outcome == "suspended"
        assert "no longer publishes the key" in finding.reason
        assert [name for name, _ in events] == ["suspended"]
        assert events[0][1]["client"].client_id == client_id
        # suspended: no new token, the old one revoked, the record kept
        assert token_status(http, software, registration) == (401, "invalid_client")
        assert bank.dcr.tokens.find(token) is None
        assert bank.dcr.store.get(client_id) is not None

        # a second pass while it still fails: no new signal
        assert outcome(revalidate(bank), client_id).outcome == "still suspended"
        assert len(events) == 1

        ob_fetcher.documents[ob_directory.jwks_url] = old_keys
        assert outcome(revalidate(bank), client_id).outcome == "reinstated"
    assert [name for name, _ in events] == ["suspended", "reinstated"]
    assert token_status(http, software, registration)[0] == 200


def test_organisation_revoked_suspends(http, bank, ob_directory, software, issuer):
    client_id = register(http, ob_directory, software, issuer)["client_id"]
    status = StaticDirectoryStatus({software.org_id: "Revoked"})
    finding = outcome(revalidate(bank, directory_status=status), client_id)
    assert finding.outcome == "suspended"
    assert finding.reason == "the Directory reports the organisation as Revoked"
    status.statuses[software.org_id] = "Active"
    assert outcome(revalidate(bank, directory_status=status), client_id).outcome == "reinstated"


@pytest.mark.parametrize("which", ["signing", "transport"])
def test_software_key_revoked_suspends(
    http, bank, ob_fetcher, ob_directory, software, issuer, which
):
    client_id = register(http, ob_directory, software, issuer)["client_id"]
    key = software.signing_key if which == "signing" else software.transport_jwk
    ob_directory.revoke_key(software, key)
    ob_fetcher.documents.update(ob_directory.documents())
    finding = outcome(revalidate(bank), client_id)
    assert finding.outcome == "suspended"
    assert "revoked" in finding.reason


def test_sound_client_passes_and_others_are_untouched(
    http, bank, ob_fetcher, ob_directory, software, ob_ec_software, issuer
):
    mine = register(http, ob_directory, software, issuer)["client_id"]
    other = register(http, ob_directory, ob_ec_software, issuer)["client_id"]
    ob_directory.revoke_key(software, software.signing_key)
    ob_fetcher.documents.update(ob_directory.documents())
    report = revalidate(bank)
    assert outcome(report, mine).outcome == "suspended"
    assert outcome(report, other).outcome == "passed"


def test_directory_down_decides_nothing(http, bank, ob_fetcher, ob_directory, software, issuer):
    client_id = register(http, ob_directory, software, issuer)["client_id"]
    bank.dcr.registrar.jwks.cache.clear()
    ob_fetcher.documents[ob_directory.jwks_url] = JWKSUnavailable("Directory down")
    finding = outcome(revalidate(bank), client_id)
    assert finding.outcome == "undecided"
    assert "cannot be had" in finding.reason
    assert "suspended" not in bank.dcr.store.get(client_id).extra


def test_expired_transport_certificate_suspends(
    http, bank, ob_clock, ob_directory, software, issuer
):
    client_id = register(http, ob_directory, software, issuer)["client_id"]
    ob_clock.set(software.transport_certificate.not_valid_after_utc.timestamp() + 1)
    finding = outcome(revalidate(bank), client_id)
    assert finding.outcome == "suspended"
    assert "transport certificate" in finding.reason


# -- one fetch per distinct key set; one pass at a time -----------------------------------------


def test_each_distinct_key_set_is_fetched_once(
    http, bank, ob_fetcher, ob_directory, software, issuer
):
    for _ in range(5):
        register(http, ob_directory, software, issuer)
    ob_fetcher.calls.clear()
    report = revalidate(bank)
    assert report.count("passed") == 5
    distinct = {
        ob_directory.jwks_url,
        software.jwks_url,
        software.revoked_jwks_url,
        software.org_revoked_jwks_url,
    }
    assert sorted(ob_fetcher.calls) == sorted(distinct)
    assert report.fetched == len(distinct)


def test_a_second_pass_while_one_runs_does_nothing(http, bank, ob_directory, software, issuer):
    register(http, ob_directory, software, issuer)
    holder = lock_beside(bank.dcr.store, "revalidate")
    assert holder.acquire()
    try:
        assert revalidate(bank) is None
        result = bank.test_cli_runner().invoke(args=["obdcr", "revalidate"])
        assert result.exit_code == 75
        assert "Another re-validation pass is running" in result.output
    finally:
        holder.release()
    assert revalidate(bank) is not None


def test_two_passes_at_once_on_a_shared_sqlite_store(
    tmp_path, ob_app_factory, ob_directory, software, issuer, post_registration
):
    store = SQLiteStore(tmp_path / "shared.db")
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(software, aud=issuer)
    assert post_registration(body, software=software, app=app).status_code == 201
    # the lock every process opening shared.db sees
    first = lock_beside(store, "revalidate")
    second = lock_beside(SQLiteStore(tmp_path / "shared.db"), "revalidate")
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()

    results = []
    barrier = threading.Barrier(2)

    def run():
        barrier.wait()
        with app.app_context():
            from flask_obdcr.testing.fixtures import DCR_KEY

            results.append(app.extensions[DCR_KEY].revalidate())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # either one ran while the other was refused, or they ran one after the other
    assert len(results) == 2
    assert any(result is not None for result in results)


# -- the command line ---------------------------------------------------------------------------


def test_cli_revalidate_and_clients_list(http, bank, ob_fetcher, ob_directory, software, issuer):
    client_id = register(http, ob_directory, software, issuer)["client_id"]
    runner = bank.test_cli_runner()
    clean = runner.invoke(args=["obdcr", "revalidate"])
    assert clean.exit_code == 0, clean.output
    assert "1 client(s): 1 passed" in clean.output

    ob_directory.revoke_key(software, software.signing_key)
    ob_fetcher.documents.update(ob_directory.documents())
    failed = runner.invoke(args=["obdcr", "revalidate"])
    assert failed.exit_code == 1
    assert client_id in failed.output and "suspended" in failed.output
    listing = runner.invoke(args=["obdcr", "clients", "list"])
    line = next(line for line in listing.output.splitlines() if line.startswith(client_id))
    assert line.split("\t")[-1].startswith("suspended: the key that signed its registration")


def test_a_still_suspended_client_shows_its_current_reason(
    http, bank, ob_fetcher, ob_directory, software, issuer
):
    client_id = register(http, ob_directory, software, issuer)["client_id"]
    status = StaticDirectoryStatus({software.org_id: "Revoked"})
    assert outcome(revalidate(bank, directory_status=status), client_id).outcome == "suspended"
    since = bank.dcr.store.get(client_id).extra["suspended"]["since"]
    # the organisation is Active again, but meanwhile the software's key was revoked
    status.statuses[software.org_id] = "Active"
    ob_directory.revoke_key(software, software.signing_key)
    ob_fetcher.documents.update(ob_directory.documents())
    finding = outcome(revalidate(bank, directory_status=status), client_id)
    assert finding.outcome == "still suspended"
    stored = bank.dcr.store.get(client_id).extra["suspended"]
    assert stored["reason"] == finding.reason
    assert stored["reason"].startswith("the key that signed its registration was revoked")
    assert stored["since"] == since
