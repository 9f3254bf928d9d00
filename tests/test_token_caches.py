"""The caches of the token endpoint and ``require_token``, and how long each may be stale.

The client cache (``registration.ClientCache``) answers ``query_client`` and require_token's
client check; the shared token stores answer ``find`` from a lookup cache (``TokenStore``,
"The lookup cache"). A change made in this process is seen at once; one made by another
process sharing the store (played here by writing to the store directly, past this process's
hooks) within the cache's bound, on a clock of the test's. And a request pays for its client
certificate once: parsed, verified and thumbprinted at most once per request.
"""

from __future__ import annotations

import pytest
from test_authlib_server import assert_invalid_token, get_token, manage, register

from flask_obdcr import certificates as certificates_package
from flask_obdcr.certificates import binding, service, source
from flask_obdcr.errors import InvalidClient
from flask_obdcr.registration import SUSPENDED, ClientCache
from flask_obdcr.revalidation import StaticDirectoryStatus
from flask_obdcr.signals import client_reinstated
from flask_obdcr.storage import SQLiteStore, SQLiteTokenStore
from flask_obdcr.testing.clock import FrozenClock

BASE = "https://localhost"


@pytest.fixture
def store(tmp_path):
    # SQLite: its token store is shared by processes, so it keeps a lookup cache
    store = SQLiteStore(tmp_path / "obdcr.db")
    yield store
    store.close()


@pytest.fixture
def monotonic(bank):
    """The caches' clock, which the test moves: a second is their bound."""
    clock = FrozenClock(1000.0)
    state = bank.dcr._state()
    state.registrar.clients.clock = clock
    state.tokens.cache_clock = clock
    return clock


def api_get(http, token, software):
    return http.get(
        "/accounts",
        headers={"Authorization": f"Bearer {token}"},
        base_url=BASE,
        environ_base=software.environ(),
    )


@pytest.fixture
def tls_client(http, ob_directory, ob_software, issuer, monotonic):
    """A tls_client_auth client and a bound token, got with the caches on the test's clock."""
    registration = register(http, ob_directory, ob_software, issuer, method="tls_client_auth")
    response = get_token(http, ob_software, registration, scope="accounts")
    assert response.status_code == 200, response.get_json()
    return registration, response.get_json()["access_token"]


def test_the_bank_uses_both_caches(bank, store):
    state = bank.dcr._state()
    assert isinstance(state.tokens, SQLiteTokenStore) and state.tokens.cache_seconds == 1.0
    assert isinstance(state.registrar.clients, ClientCache)
    assert state.registrar.clients.seconds == 1.0


def elsewhere_suspend(store, client_id):
    """What another process's re-validation writes (its own hooks do not run here)."""
    client = store.get(client_id)
    extra = {**client.extra, SUSPENDED: {"reason": "elsewhere", "since": 0}}
    store.replace(client.with_changes(extra=extra))


def test_a_client_suspended_elsewhere_gets_no_token_beyond_the_bound(
    http, store, ob_software, tls_client, monotonic
):
    registration, token = tls_client
    elsewhere_suspend(store, registration["client_id"])
    monotonic.advance(0.5)  # inside the bound: this process has not seen it yet
    late = get_token(http, ob_software, registration, scope="accounts")
    assert late.status_code == 200
    monotonic.advance(0.5)  # the bound has passed
    refused = get_token(http, ob_software, registration, scope="accounts")
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "invalid_client"
    assert "suspended" in refused.get_json()["error_description"]
    # and the token issued inside the bound stops working with it, as the older one does
    assert_invalid_token(api_get(http, late.get_json()["access_token"], ob_software))
    assert_invalid_token(api_get(http, token, ob_software))


def test_a_client_deleted_elsewhere_gets_no_token_beyond_the_bound(
    http, bank, store, ob_software, tls_client, monotonic
):
    registration, token = tls_client
    assert api_get(http, token, ob_software).status_code == 200  # cached now
    store.delete(registration["client_id"])  # another process; its tokens left in place
    assert api_get(http, token, ob_software).status_code == 200  # inside the bound
    monotonic.advance(1.0)
    refused = get_token(http, ob_software, registration, scope="accounts")
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_client"
    assert_invalid_token(api_get(http, token, ob_software))


def test_a_client_rekeyed_elsewhere_is_judged_on_its_new_record_beyond_the_bound(
    http, store, ob_software, tls_client, monotonic
):
    registration, _ = tls_client
    client = store.get(registration["client_id"])
    metadata = {**client.metadata, "tls_client_auth_subject_dn": "CN=someone else,C=GB"}
    store.replace(client.with_changes(metadata=metadata))
    assert get_token(http, ob_software, registration, scope="accounts").status_code == 200
    monotonic.advance(1.0)
    refused = get_token(http, ob_software, registration, scope="accounts")
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_client"
    assert "subject" in refused.get_json()["error_description"]


def test_a_client_suspended_here_gets_no_token_at_once(
    http, bank, store, ob_software, tls_client, monotonic
):
    registration, token = tls_client
    client_id = registration["client_id"]
    state = bank.dcr._state()
    # re-validation's way: the record, then the tokens (revoke_client tells the client cache)
    elsewhere_suspend(store, client_id)
    state.tokens.revoke_client(client_id)
    refused = get_token(http, ob_software, registration, scope="accounts")
    assert refused.status_code == 401 and "suspended" in refused.get_json()["error_description"]
    assert_invalid_token(api_get(http, token, ob_software))


def test_a_client_reinstated_here_gets_tokens_at_once(
    http, bank, store, ob_software, tls_client, monotonic
):
    registration, _ = tls_client
    client_id = registration["client_id"]
    elsewhere_suspend(store, client_id)
    bank.dcr._state().tokens.revoke_client(client_id)
    assert get_token(http, ob_software, registration, scope="accounts").status_code == 401
    client = store.get(client_id)
    reinstated = client.with_changes(
        extra={k: v for k, v in client.extra.items() if k != SUSPENDED}
    )
    store.replace(reinstated)
    client_reinstated.send(bank, client=reinstated)  # as re-validation sends it
    assert get_token(http, ob_software, registration, scope="accounts").status_code == 200


def test_revalidation_suspends_at_once_in_its_process(
    http, bank, ob_software, tls_client, monotonic
):
    registration, token = tls_client
    assert api_get(http, token, ob_software).status_code == 200  # both caches warm
    status = StaticDirectoryStatus({ob_software.org_id: "Revoked"})
    with bank.app_context():
        report = bank.dcr.revalidate(directory_status=status)
    assert [f.outcome for f in report.findings] == ["suspended"]
    refused = get_token(http, ob_software, registration, scope="accounts")
    assert refused.status_code == 401 and "suspended" in refused.get_json()["error_description"]
    assert_invalid_token(api_get(http, token, ob_software))


def test_a_client_deleted_here_gets_no_token_and_its_tokens_stop_at_once(
    http, ob_software, tls_client, monotonic
):
    registration, token = tls_client
    assert api_get(http, token, ob_software).status_code == 200  # both caches warm
    deleted = manage(http, "DELETE", registration["client_id"], token, ob_software)
    assert deleted.status_code == 204
    refused = get_token(http, ob_software, registration, scope="accounts")
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_client"
    assert_invalid_token(api_get(http, token, ob_software))


def test_a_token_revoked_here_stops_at_once(
    http, bank, ob_software, tls_client, ob_directory, monotonic
):
    _, token = tls_client
    assert api_get(http, token, ob_software).status_code == 200  # cached
    bank.dcr.tokens.revoke(token)
    assert_invalid_token(api_get(http, token, ob_software))


def test_a_token_revoked_by_the_management_rule_stops_at_once(
    http, ob_directory, ob_software, issuer, tls_client, monotonic
):
    # a token presented for another client is revoked at once (OB DCR); cached before
    registration, token = tls_client
    other = register(http, ob_directory, ob_software, issuer, method="tls_client_auth")
    assert api_get(http, token, ob_software).status_code == 200
    assert manage(http, "GET", other["client_id"], token, ob_software).status_code == 401
    assert_invalid_token(api_get(http, token, ob_software))


def test_the_client_store_down_fails_closed(http, store, ob_software, tls_client, monotonic):
    registration, token = tls_client
    monotonic.advance(1.0)  # nothing cached any more

    def down(client_id):
        raise ConnectionError("store down")

    store._get = down  # type: ignore[method-assign]
    refused = get_token(http, ob_software, registration, scope="accounts")
    assert refused.status_code == 503
    assert refused.get_json()["error"] == "temporarily_unavailable"
    answer = api_get(http, token, ob_software)
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "temporarily_unavailable"


# -- the certificate: once per request -------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """How often each request parses, verifies and thumbprints its client certificate."""
    calls = {"parse": 0, "verify": 0, "thumbprint": 0}
    from_environ = source.client_certificate_from_environ
    verify = service.ClientCertificates.verify
    thumbprint = binding.thumbprint_sha256

    def counted_from_environ(*args, **kwargs):
        calls["parse"] += 1
        return from_environ(*args, **kwargs)

    def counted_verify(self, *args, **kwargs):
        calls["verify"] += 1
        return verify(self, *args, **kwargs)

    def counted_thumbprint(certificate):
        calls["thumbprint"] += 1
        return thumbprint(certificate)

    monkeypatch.setattr(service, "client_certificate_from_environ", counted_from_environ)
    monkeypatch.setattr(service.ClientCertificates, "verify", counted_verify)
    monkeypatch.setattr(service, "thumbprint_sha256", counted_thumbprint)
    assert certificates_package.ClientCertificates is service.ClientCertificates
    return calls


@pytest.mark.parametrize("method", ["tls_client_auth", "private_key_jwt", "client_secret_basic"])
def test_a_token_request_reads_its_certificate_once(
    method, http, ob_directory, ob_software, issuer, counted
):
    registration = register(http, ob_directory, ob_software, issuer, method=method)
    counted.update(parse=0, verify=0, thumbprint=0)
    response = get_token(http, ob_software, registration, scope="accounts")
    assert response.status_code == 200, response.get_json()
    # read from the request once, verified once; the thumbprint was remembered with the
    # verification at registration (at most once per request, never per use)
    assert counted == {"parse": 1, "verify": 1, "thumbprint": 0}
    counted.update(parse=0, verify=0, thumbprint=0)
    assert api_get(http, response.get_json()["access_token"], ob_software).status_code == 200
    assert counted == {"parse": 1, "verify": 1, "thumbprint": 0}


def test_a_certificate_verified_before_is_checked_again_outside_its_window(bank, ob_software):
    state = bank.dcr._state()
    certificate = state.certificates.from_environ(ob_software.environ())
    first = state.certificates.verify(certificate)
    assert state.certificates.verify(certificate) is first  # remembered
    expired = certificate.not_valid_after_utc.timestamp() + 1
    with pytest.raises(InvalidClient) as refused:
        state.certificates.verify(certificate, now=expired)
    assert refused.value.description == "The client certificate has expired or is not yet valid."
