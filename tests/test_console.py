"""The operator console (docs/architecture.md, "Contract: console and consent discovery")."""

import re

import pytest

from flask_obdcr.console import console_blueprint
from flask_obdcr.console.refusals import LOG_KEY as REFUSALS_KEY
from flask_obdcr.console.settings import redact_url
from flask_obdcr.registration import SUSPENDED
from flask_obdcr.signals import registration_rejected, registration_request_refused
from flask_obdcr.storage import MemoryStore, StoredClient
from flask_obdcr.testing.fixtures import DCR_KEY


@pytest.fixture
def allowed():
    return {"value": True}


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def console_app(ob_app_factory, store, allowed):
    app = ob_app_factory(store=store, SECRET_KEY="console-test-key")
    dcr = app.extensions[DCR_KEY]
    app.register_blueprint(
        dcr.console_blueprint(authorize=lambda: allowed["value"]), url_prefix="/console"
    )
    return app


@pytest.fixture
def registered(console_app, ob_directory, ob_software, issuer, post_registration):
    """A client registered with client_secret_basic; the 201's JSON."""
    body = ob_directory.registration_request(
        ob_software, aud=issuer, token_endpoint_auth_method="client_secret_basic"
    )
    response = post_registration(body, software=ob_software, app=console_app)
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["client_secret"] and created["registration_access_token"]
    return created


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def test_authorize_is_required(ob_app_factory):
    dcr = ob_app_factory().extensions[DCR_KEY]
    with pytest.raises(TypeError):
        dcr.console_blueprint()
    with pytest.raises(TypeError):
        dcr.console_blueprint(authorize=None)


def test_list_shows_the_client_and_links_to_its_page(console_app, registered, ob_software):
    page = console_app.test_client().get("/console/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    client_id = registered["client_id"]
    assert f'href="/console/clients/{client_id}"' in text
    assert ob_software.client_name in text
    assert ob_software.org_name in text
    assert "client_secret_basic" in text
    assert "active" in text


def test_search_filters_by_client_id_software_and_org(console_app, registered, ob_software):
    http = console_app.test_client()
    client_id = registered["client_id"]
    for query in (client_id[:8], ob_software.client_name.upper(), ob_software.org_name):
        assert client_id in http.get("/console/", query_string={"q": query}).get_data(True)
    assert client_id not in http.get("/console/?q=no-such-client-zzz").get_data(as_text=True)


def test_client_page_shows_metadata_and_ssa_but_no_secret(console_app, registered, ob_software):
    http = console_app.test_client()
    client_id = registered["client_id"]
    page = http.get(f"/console/clients/{client_id}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    for shown in (
        client_id,
        ob_software.org_name,
        ob_software.client_name,
        "software_client_name",
        "org_name",
        "redirect_uris",
        ob_software.redirect_uris[0],
        "token_endpoint_auth_method",
        "software_roles",
        # an https logo URI is a link
        '<a href="https://tpp.example.com/logo.png"',
    ):
        assert shown in text, shown
    secret, rat = registered["client_secret"], registered["registration_access_token"]
    pages = [
        "/console/",
        f"/console/?q={client_id}",
        f"/console/clients/{client_id}",
        f"/console/clients/{client_id}/delete",
        f"/console/clients/{client_id}/suspend",
        "/console/refused",
        "/console/settings",
    ]
    for url in pages:
        body = http.get(url).get_data(as_text=True)
        assert secret not in body, url
        assert rat not in body, url
        assert "sha256:" not in body, url
        assert "client_secret_hash" not in body and "registration_access_token" not in body


def test_client_page_shows_the_certificate_binding(console_app, registered, store):
    trust = store.get(registered["client_id"]).extra["trust"]
    text = (
        console_app.test_client()
        .get(f"/console/clients/{registered['client_id']}")
        .get_data(as_text=True)
    )
    assert trust["x5t#S256"] in text


def test_unknown_client_is_404(console_app):
    assert console_app.test_client().get("/console/clients/nope").status_code == 404


def test_authorize_false_is_403_with_nothing_of_any_client(console_app, registered, allowed):
    http = console_app.test_client()
    client_id = registered["client_id"]
    token = csrf_of(http.get(f"/console/clients/{client_id}/suspend").get_data(as_text=True))
    allowed["value"] = False
    for response in (
        http.get("/console/"),
        http.get(f"/console/clients/{client_id}"),
        http.get(f"/console/clients/{client_id}/delete"),
        http.get(f"/console/clients/{client_id}/suspend"),
        http.post(f"/console/clients/{client_id}/suspend", data={"csrf_token": token}),
        http.post(f"/console/clients/{client_id}/delete", data={"csrf_token": token}),
    ):
        assert response.status_code == 403
        assert client_id not in response.get_data(as_text=True)
    stored = console_app.extensions["obdcr"].store.get(client_id)
    assert stored is not None and SUSPENDED not in stored.extra


def test_authorize_is_called_before_every_request(ob_app_factory):
    calls = []
    app = ob_app_factory(SECRET_KEY="k")
    bp = app.extensions[DCR_KEY].console_blueprint(authorize=lambda: calls.append(1) or True)
    app.register_blueprint(bp, url_prefix="/console")
    http = app.test_client()
    http.get("/console/")
    http.post("/console/clients/x/suspend")
    assert len(calls) == 2


def test_values_are_escaped(console_app, store):
    evil = "<script>alert(1)</script>"
    store.add(
        StoredClient(
            client_id="evil-client",
            client_id_issued_at=1_700_000_000,
            metadata={
                "token_endpoint_auth_method": "private_key_jwt",
                "client_name": evil,
                "logo_uri": 'javascript:alert("x")',
                "policy_uri": 'https://tpp.example.com/p?"><script>',
            },
            ssa_claims={"software_client_name": evil, "org_name": evil, "software_id": "s1"},
        )
    )
    http = console_app.test_client()
    for url in (
        "/console/",
        "/console/clients/evil-client",
        "/console/clients/evil-client/delete",
        "/console/clients/evil-client/suspend",
    ):
        text = http.get(url).get_data(as_text=True)
        assert "<script>" not in text, url
        assert "&lt;script&gt;" in text, url
    text = http.get("/console/clients/evil-client").get_data(as_text=True)
    assert 'href="javascript:' not in text  # not https: text, not a link
    assert 'href="https://tpp.example.com/p?&#34;&gt;&lt;script&gt;"' in text


def test_post_without_or_with_a_wrong_csrf_token_is_400(console_app, registered, store):
    http = console_app.test_client()
    client_id = registered["client_id"]
    http.get(f"/console/clients/{client_id}")  # the session has a token now
    for action in ("suspend", "delete"):
        for data in ({}, {"csrf_token": "wrong"}):
            response = http.post(f"/console/clients/{client_id}/{action}", data=data)
            assert response.status_code == 400
            assert "CSRF" in response.get_data(as_text=True)
    stored = store.get(client_id)
    assert stored is not None and SUSPENDED not in stored.extra


def test_a_token_of_another_session_is_refused(console_app, registered, store):
    client_id = registered["client_id"]
    first = console_app.test_client()
    token = csrf_of(first.get(f"/console/clients/{client_id}/suspend").get_data(as_text=True))
    other = console_app.test_client()
    other.get("/console/")
    response = other.post(f"/console/clients/{client_id}/suspend", data={"csrf_token": token})
    assert response.status_code == 400
    assert SUSPENDED not in store.get(client_id).extra


def test_without_secret_key_pages_work_and_actions_say_why(ob_app_factory, ob_directory, store):
    app = ob_app_factory(store=store)
    assert not app.secret_key
    app.register_blueprint(
        app.extensions[DCR_KEY].console_blueprint(authorize=lambda: True), url_prefix="/console"
    )
    store.add(
        StoredClient(
            client_id="c1",
            client_id_issued_at=1_700_000_000,
            metadata={"token_endpoint_auth_method": "private_key_jwt"},
            ssa_claims={"software_client_name": "App", "org_name": "Org"},
        )
    )
    http = app.test_client()
    assert http.get("/console/").status_code == 200
    page = http.get("/console/clients/c1")
    assert page.status_code == 200 and "SECRET_KEY" in page.get_data(as_text=True)
    response = http.post("/console/clients/c1/suspend", data={"csrf_token": "x"})
    assert response.status_code == 400
    assert "SECRET_KEY" in response.get_data(as_text=True)
    assert SUSPENDED not in store.get("c1").extra


def test_suspend_then_reinstate(console_app, registered, store, ob_clock):
    http = console_app.test_client()
    client_id = registered["client_id"]
    now = ob_clock()
    page = http.get(f"/console/clients/{client_id}").get_data(as_text=True)
    assert f'href="/console/clients/{client_id}/suspend"' in page  # a link to confirm first
    confirm = http.get(f"/console/clients/{client_id}/suspend")
    assert confirm.status_code == 200
    page = confirm.get_data(as_text=True)
    assert "Suspend this client?" in page
    assert f'action="/console/clients/{client_id}/suspend"' in page
    assert SUSPENDED not in store.get(client_id).extra  # the GET changed nothing
    response = http.post(
        f"/console/clients/{client_id}/suspend", data={"csrf_token": csrf_of(page)}
    )
    assert response.status_code == 303
    held = store.get(client_id).extra[SUSPENDED]
    assert held == {"reason": "suspended by an operator", "since": int(now)}
    page = http.get(f"/console/clients/{client_id}").get_data(as_text=True)
    assert "suspended by an operator" in page and "Reinstate" in page
    assert "suspended" in http.get("/console/").get_data(as_text=True)

    response = http.post(
        f"/console/clients/{client_id}/reinstate", data={"csrf_token": csrf_of(page)}
    )
    assert response.status_code == 303
    assert SUSPENDED not in store.get(client_id).extra
    assert "trust" in store.get(client_id).extra  # the rest of extra is kept
    assert "Suspend" in http.get(f"/console/clients/{client_id}").get_data(as_text=True)


def test_suspend_revokes_the_clients_tokens(console_app, registered, monkeypatch):
    state = console_app.extensions["obdcr"]
    revoked = []
    monkeypatch.setattr(state.tokens, "revoke_client", lambda cid: revoked.append(cid) or 0)
    http = console_app.test_client()
    client_id = registered["client_id"]
    page = http.get(f"/console/clients/{client_id}/suspend").get_data(as_text=True)
    http.post(f"/console/clients/{client_id}/suspend", data={"csrf_token": csrf_of(page)})
    assert revoked == [client_id]


def test_delete_asks_for_confirmation_then_deletes(console_app, registered, store, monkeypatch):
    state = console_app.extensions["obdcr"]
    revoked = []
    original = state.tokens.revoke_client
    monkeypatch.setattr(
        state.tokens, "revoke_client", lambda cid: revoked.append(cid) or original(cid)
    )
    http = console_app.test_client()
    client_id = registered["client_id"]
    confirm = http.get(f"/console/clients/{client_id}/delete")
    assert confirm.status_code == 200
    text = confirm.get_data(as_text=True)
    assert "Delete this client?" in text
    assert f'action="/console/clients/{client_id}/delete"' in text
    assert store.get(client_id) is not None  # the GET changed nothing
    response = http.post(f"/console/clients/{client_id}/delete", data={"csrf_token": csrf_of(text)})
    assert response.status_code == 303 and response.headers["Location"].endswith("/console/")
    assert store.get(client_id) is None
    assert revoked == [client_id]
    assert client_id not in http.get("/console/").get_data(as_text=True)
    assert http.get(f"/console/clients/{client_id}").status_code == 404


@pytest.mark.parametrize("action", ["suspend", "reinstate", "delete"])
def test_a_store_that_is_down_is_a_503_page_not_a_500(
    console_app, registered, store, monkeypatch, action
):
    state = console_app.extensions["obdcr"]
    http = console_app.test_client()
    client_id = registered["client_id"]
    page = http.get(f"/console/clients/{client_id}/delete").get_data(as_text=True)
    before = store.get(client_id)

    def down(*args, **kwargs):
        raise ConnectionError("database is down")

    monkeypatch.setattr(state.tokens, "revoke_client", down)
    monkeypatch.setattr(store, "replace", down)
    response = http.post(
        f"/console/clients/{client_id}/{action}", data={"csrf_token": csrf_of(page)}
    )
    assert response.status_code == 503
    assert "retry later" in response.get_data(as_text=True)
    assert response.headers["Retry-After"]
    assert store.get(client_id) == before


# -- refused registrations (GET /console/refused) ----------------------------------------------

EVIL = '<script>alert("x")</script>'


def refuse(app, body, *, software=None, environ=None, content_type="application/jwt"):
    """POST ``body`` to /register of ``app``; asserts it is refused and returns the JSON."""
    if environ is None:
        environ = software.environ() if software is not None else {}
    response = app.test_client().post(
        "/register", data=body, content_type=content_type, environ_base=environ
    )
    assert response.status_code >= 400, response.get_json()
    return response


def refusals_of(app):
    return app.extensions[REFUSALS_KEY].recent()


def test_a_refused_registration_is_on_the_refused_page_with_its_explain_report(
    console_app, ob_directory, ob_software, issuer
):
    other = "https://tpp.example.com/other"
    body = ob_directory.registration_request(ob_software, aud=issuer, redirect_uris=[other])
    response = refuse(console_app, body, software=ob_software)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_redirect_uri"

    (refusal,) = refusals_of(console_app)
    assert refusal.policy == "redirect_uris" and refusal.code == "invalid_redirect_uri"
    assert refusal.software_id == ob_software.software_id and refusal.ssa_verified
    assert refusal.certificate_subject == ob_software.transport_certificate.subject.rfc4514_string()
    # the same rows dcr.explain gives for that request
    dcr = console_app.extensions[DCR_KEY]
    with console_app.app_context():
        explained = dcr.explain(body, certificate=ob_software.transport_certificate)
    assert [dict(row) for row in refusal.report] == explained

    page = console_app.test_client().get("/console/refused")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    text = page.get_data(as_text=True)
    for shown in (
        "Refused registrations",
        "memory",  # the page says where the list lives
        "redirect_uris",
        "invalid_redirect_uri",
        "is not one of the software statement&#39;s redirect URIs",
        ob_software.software_id,
        ob_software.org_name,
        ob_software.org_id,
        ob_software.transport_certificate.subject.rfc4514_string(),
        "Explain report",
    ):
        assert shown in text, shown
    rows = re.findall(r'<tr class="verdict-([a-z-]+)">\s*<td>\d+</td>\s*<td><code>(\w+)', text)
    assert rows == [(row["verdict"].replace(" ", "-"), row["policy"]) for row in explained]
    assert rows.count(("failed", "redirect_uris")) == 1  # the failed row, highlighted


def test_the_refused_list_is_bounded_and_newest_first(
    ob_app_factory, ob_directory, ob_software, issuer
):
    app = ob_app_factory(SECRET_KEY="k")
    app.register_blueprint(console_blueprint(lambda: True, keep_refused=3), url_prefix="/console")
    auds = [f"https://bank-{n}.example" for n in range(5)]
    for aud in auds:
        refuse(app, ob_directory.registration_request(ob_software, aud=aud), software=ob_software)
    kept = refusals_of(app)
    assert len(kept) == 3
    assert [auds[-1] in r.detail for r in kept] == [True, False, False]  # newest first
    text = app.test_client().get("/console/refused").get_data(as_text=True)
    assert "3 refusals kept" in text
    assert all(aud in text for aud in auds[2:]) and not any(aud in text for aud in auds[:2])
    assert text.index(auds[4]) < text.index(auds[3]) < text.index(auds[2])


def test_keep_refused_must_be_a_positive_integer():
    for wrong in (0, -1, True, "50"):
        with pytest.raises(ValueError):
            console_blueprint(lambda: True, keep_refused=wrong)


def test_a_hostile_request_is_escaped_and_cut(console_app, ob_directory, ob_software, issuer):
    # an SSA the Directory did not sign, naming a kid and claims of the attacker's choosing
    long_name = "A" * 5000
    ssa = ob_directory.ssa(
        ob_software,
        key=ob_software.signing_key,
        headers={"kid": EVIL},
        software_id=EVIL,
        org_name=long_name,
    )
    body = ob_directory.registration_request(ob_software, aud=issuer, software_statement=ssa)
    assert refuse(console_app, body, software=ob_software).status_code == 400

    (refusal,) = refusals_of(console_app)
    assert refusal.policy == "software_statement" and not refusal.ssa_verified
    assert refusal.software_id == EVIL  # shown, as claimed, marked unverified
    assert len(refusal.org) <= 200
    text = console_app.test_client().get("/console/refused").get_data(as_text=True)
    assert "<script>" not in text and EVIL not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text
    assert "not verified" in text
    assert "A" * 200 not in text and "A" * 199 + "…" in text  # cut, and said to be


def test_control_characters_of_a_request_are_shown_escaped(console_app, ob_directory, ob_software):
    aud = "https://bank.example/\r\nSet-Cookie: x=1"
    body = ob_directory.registration_request(ob_software, aud=aud)
    refuse(console_app, body, software=ob_software)
    (refusal,) = refusals_of(console_app)
    assert "\r" not in refusal.detail and "\\r\\n" in refusal.detail
    assert all("\n" not in (row["detail"] or "") for row in refusal.report)


def test_a_body_that_is_no_jwt_is_kept_with_an_unknown_software(console_app, ob_software):
    refuse(console_app, b"not a JWT at all", software=ob_software)
    (refusal,) = refusals_of(console_app)
    assert refusal.policy == "request_jwt"
    assert refusal.software_id == "unknown" and refusal.org == "unknown"
    assert [row["verdict"] for row in refusal.report[:3]] == ["passed", "failed", "not reached"]


def test_a_body_too_large_is_kept_without_being_read(console_app, ob_software):
    state = console_app.extensions["obdcr"]
    limit = state.settings.max_request_bytes
    response = refuse(console_app, b"x" * (limit + 10), software=ob_software)
    assert response.status_code == 413
    (refusal,) = refusals_of(console_app)
    assert refusal.policy == "request_body" and refusal.status == 413
    assert refusal.report[0]["verdict"] == "failed"
    assert all(row["verdict"] == "not reached" for row in refusal.report[1:])


def test_no_certificate_is_said(console_app, ob_directory, ob_software, issuer):
    refuse(console_app, ob_directory.registration_request(ob_software, aud=issuer))
    (refusal,) = refusals_of(console_app)
    assert refusal.policy == "transport_certificate" and refusal.certificate_subject is None
    assert "none presented" in console_app.test_client().get("/console/refused").get_data(True)


def test_a_replayed_request_fails_in_request_claims_row(
    console_app, registered, ob_directory, ob_software, issuer, post_registration
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    assert post_registration(body, software=ob_software, app=console_app).status_code == 201
    refuse(console_app, body, software=ob_software)
    (refusal,) = refusals_of(console_app)
    assert refusal.policy == "jti_replay"
    failed = [row for row in refusal.report if row["verdict"] == "failed"]
    assert [row["policy"] for row in failed] == ["request_claims"]
    assert "jti replayed" in failed[0]["detail"]


def test_a_store_refusal_is_noted_below_every_check_passed(
    console_app, store, ob_directory, ob_software, issuer, monkeypatch
):
    def down(client):
        raise ConnectionError("database is down")

    monkeypatch.setattr(store, "add", down)
    body = ob_directory.registration_request(ob_software, aud=issuer)
    assert refuse(console_app, body, software=ob_software).status_code == 503
    (refusal,) = refusals_of(console_app)
    assert refusal.policy == "client_store"
    assert all(row["verdict"] == "passed" for row in refusal.report)
    assert refusal.note and "client store refused" in refusal.note
    text = console_app.test_client().get("/console/refused").get_data(as_text=True)
    assert "client store refused" in text


def test_updates_are_kept_but_reads_and_deletes_are_not(
    console_app, registered, ob_directory, ob_software
):
    http = console_app.test_client()
    uri = f"/register/{registered['client_id']}"
    wrong = {"Authorization": "Bearer wrong-token"}
    assert http.get(uri, headers=wrong, environ_base=ob_software.environ()).status_code == 401
    assert http.delete(uri, headers=wrong, environ_base=ob_software.environ()).status_code == 401
    assert refusals_of(console_app) == []
    body = ob_directory.registration_request(ob_software, aud="https://elsewhere.example")
    token = {"Authorization": f"Bearer {registered['registration_access_token']}"}
    response = http.put(
        uri,
        data=body,
        content_type="application/jwt",
        headers=token,
        environ_base=ob_software.environ(),
    )
    assert response.status_code == 400
    (refusal,) = refusals_of(console_app)
    assert refusal.kind == "update" and refusal.policy == "request_claims"
    page = http.get("/console/refused").get_data(as_text=True)
    assert registered["registration_access_token"] not in page


def test_the_signal_carries_the_body_content_type_and_certificate(
    console_app, ob_directory, ob_software
):
    seen = []
    body = ob_directory.registration_request(ob_software, aud="https://elsewhere.example")
    with registration_request_refused.connected_to(
        lambda sender, **kw: seen.append(kw), console_app
    ):
        refuse(console_app, body, software=ob_software)
    (kw,) = seen
    assert kw["error"].policy == "request_claims" and kw["error"].error == "invalid_client_metadata"
    assert kw["body"] == body.encode() and kw["content_type"] == "application/jwt"
    assert kw["certificate"] == ob_software.transport_certificate


def test_registration_rejected_receivers_of_the_documented_keywords_keep_working(
    console_app, ob_directory, ob_software
):
    """``registration_rejected`` sends exactly error, code and policy: a receiver written
    for them, without ``**extra``, is not broken by the console being mounted."""
    seen = []

    def record(app, error, code, policy):
        seen.append((policy, code))

    body = ob_directory.registration_request(ob_software, aud="https://elsewhere.example")
    with registration_rejected.connected_to(record, console_app):
        response = refuse(console_app, body, software=ob_software)
    assert seen == [("request_claims", "invalid_client_metadata")]
    assert response.status_code == 400


def test_a_failing_console_receiver_never_turns_a_refusal_into_a_500(
    console_app, ob_directory, ob_software, monkeypatch
):
    import flask_obdcr.console.refusals as refusals

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the console")

    monkeypatch.setattr(refusals, "_refusal", broken)
    body = ob_directory.registration_request(ob_software, aud="https://elsewhere.example")
    response = refuse(console_app, body, software=ob_software)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert refusals_of(console_app) == []


def test_refusals_are_per_app(ob_app_factory, ob_directory, ob_software):
    first, second = ob_app_factory(SECRET_KEY="a"), ob_app_factory(SECRET_KEY="b")
    for app in (first, second):
        app.register_blueprint(console_blueprint(lambda: True), url_prefix="/console")
    body = ob_directory.registration_request(ob_software, aud="https://elsewhere.example")
    refuse(first, body, software=ob_software)
    assert len(refusals_of(first)) == 1 and refusals_of(second) == []


def test_authorize_false_shows_nothing_of_refusals_nor_settings(
    console_app, registered, allowed, ob_directory, ob_software
):
    body = ob_directory.registration_request(ob_software, aud="https://elsewhere.example")
    refuse(console_app, body, software=ob_software)
    allowed["value"] = False
    http = console_app.test_client()
    for url in ("/console/refused", "/console/settings"):
        response = http.get(url)
        assert response.status_code == 403, url
        text = response.get_data(as_text=True)
        for secret in (
            registered["client_id"],
            ob_software.software_id,
            "elsewhere.example",
            "request_claims",
            "OpenBanking Ltd",
            ob_directory.jwks_url,
        ):
            assert secret not in text, (url, secret)


def test_every_page_links_to_clients_refused_and_settings(console_app, registered):
    http = console_app.test_client()
    client_id = registered["client_id"]
    for url in (
        "/console/",
        f"/console/clients/{client_id}",
        f"/console/clients/{client_id}/delete",
        f"/console/clients/{client_id}/suspend",
        "/console/refused",
        "/console/settings",
    ):
        text = http.get(url).get_data(as_text=True)
        for link in ('href="/console/"', 'href="/console/refused"', 'href="/console/settings"'):
            assert link in text, (url, link)
        assert text.count('aria-current="page">') == (0 if "/clients/" in url else 1), url


# -- settings (GET /console/settings) -------------------------------------------------------


def test_settings_show_the_configured_values(ob_app_factory, ob_directory, store, tmp_path):
    app = ob_app_factory(
        store=store,
        SECRET_KEY="k",
        OBDCR_AUDIENCES=["0015800001041RHAAY"],
        OBDCR_SIGNING_ALGS=["PS256"],
        OBDCR_TOKEN_ENDPOINT_AUTH_METHODS=["tls_client_auth", "private_key_jwt"],
        OBDCR_MTLS_BASE_URL="https://mtls.anybank.example",
        OBDCR_ACCESS_TOKEN_LIFETIME=600,
        OBDCR_MAX_ASSERTION_LIFETIME=120,
        OBDCR_REVOCATION="prefer",
        OBDCR_REVOCATION_CACHE_SECONDS=90,
        OBDCR_REPLAY_QUOTA_PER_SOFTWARE=500,
        OBDCR_EXPLAIN_ENDPOINT=True,
        OBDCR_CERTIFICATE_BOUND_TOKENS=False,
        OBDCR_JWKS_ALLOWED_HOSTS=["keystore.example.org"],
        OBDCR_DATABASE_URL="postgresql://obdcr:hunter2-secret@db.example:5432/obdcr",
    )
    app.register_blueprint(console_blueprint(lambda: True), url_prefix="/console")
    page = app.test_client().get("/console/settings")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    text = page.get_data(as_text=True)
    settings = app.extensions["obdcr"].settings
    for shown in (
        settings.issuer,
        "https://mtls.anybank.example/register",
        "https://mtls.anybank.example/token",
        "mTLS alias: token_endpoint",
        "OpenBanking Ltd",
        ob_directory.jwks_url,
        "keystore.example.org",
        "0015800001041RHAAY",
        "<td>PS256</td>",
        "tls_client_auth, private_key_jwt",
        "accounts: AISP",
        "payments: PISP",
        "fundsconfirmations: CBPII",
        "600 s",
        "120 s",
        "prefer",
        "90 s",
        "500",
        "MemoryStore",
        "postgresql://***@db.example:5432/obdcr",
    ):
        assert shown in text, shown
    assert re.search(r"Certificate-bound tokens</th><td>off<", text)
    assert re.search(r"Explain endpoint \(/register/explain\)</th><td>on<", text)
    assert "hunter2" not in text and "obdcr:" not in text.split("Storage", 1)[1].split("***")[0]


def test_settings_never_show_a_password_of_the_store(ob_app_factory):
    import sqlalchemy  # the test extra brings the postgres extra

    from flask_obdcr.storage.sqlalchemy import SQLAlchemyStore

    # an engine connects on first use only: the page must not need the database
    engine = sqlalchemy.create_engine("postgresql+psycopg://obdcr:hunter2@127.0.0.1:1/obdcr")
    app = ob_app_factory(store=SQLAlchemyStore(engine), SECRET_KEY="k")
    app.register_blueprint(console_blueprint(lambda: True), url_prefix="/console")
    page = app.test_client().get("/console/settings")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "SQLAlchemyStore" in text and "postgresql+psycopg://***@127.0.0.1:1/obdcr" in text
    assert "hunter2" not in text and "obdcr:" not in text


@pytest.mark.parametrize(
    "url,shown",
    [
        ("postgresql://user:pw@db:5432/x", "postgresql://***@db:5432/x"),
        ("postgresql://user@db/x", "postgresql://***@db/x"),
        ("redis://:pw@[::1]:6379/0", "redis://***@[::1]:6379/0"),
        (
            "postgresql://db/x?sslkey=/k.pem&sslmode=require",
            "postgresql://db/x?sslkey=***&sslmode=require",
        ),
        ("https://keystore.example/ob.jwks", "https://keystore.example/ob.jwks"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_settings_show_while_the_store_is_down(console_app, store, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("database is down")

    for name in ("get", "list", "add", "replace", "delete"):
        monkeypatch.setattr(store, name, down)
    http = console_app.test_client()
    for url in ("/console/", "/console/clients/c1"):
        response = http.get(url)
        assert response.status_code == 503, url
        assert "retry later" in response.get_data(as_text=True)
    for url in ("/console/settings", "/console/refused"):
        response = http.get(url)
        assert response.status_code == 200, url
        assert "database is down" not in response.get_data(as_text=True)


def test_the_extension_passes_keep_refused_on(ob_app_factory, ob_directory, ob_software):
    from flask_obdcr.testing.fixtures import DCR_KEY

    app = ob_app_factory(SECRET_KEY="k")
    dcr = app.extensions[DCR_KEY]
    app.register_blueprint(
        dcr.console_blueprint(authorize=lambda: True, keep_refused=2), url_prefix="/console"
    )
    for n in range(4):
        request = ob_directory.registration_request(ob_software, aud=f"https://bank-{n}.example")
        refuse(app, request, software=ob_software)
    assert len(refusals_of(app)) == 2


def test_operator_actions_send_the_extensions_signals(console_app, registered):
    """Suspend, reinstate and delete from the console are heard as re-validation's and DELETE
    /register/<id>'s are: audit receivers, and the client cache of this process."""
    from flask_obdcr.signals import client_deleted, client_reinstated, client_suspended

    heard: list[tuple[str, str, str | None]] = []

    def receiver(name):
        def receive(sender, client, reason=None, **extra):
            assert sender is console_app
            heard.append((name, client.client_id, reason))

        return receive

    receivers = {
        signal: receiver(name)
        for signal, name in (
            (client_suspended, "suspended"),
            (client_reinstated, "reinstated"),
            (client_deleted, "deleted"),
        )
    }
    for signal, receive in receivers.items():
        signal.connect(receive, sender=console_app)
    try:
        http = console_app.test_client()
        client_id = registered["client_id"]
        page = http.get(f"/console/clients/{client_id}/suspend").get_data(as_text=True)
        http.post(f"/console/clients/{client_id}/suspend", data={"csrf_token": csrf_of(page)})
        page = http.get(f"/console/clients/{client_id}").get_data(as_text=True)
        http.post(f"/console/clients/{client_id}/reinstate", data={"csrf_token": csrf_of(page)})
        page = http.get(f"/console/clients/{client_id}/delete").get_data(as_text=True)
        http.post(f"/console/clients/{client_id}/delete", data={"csrf_token": csrf_of(page)})
    finally:
        for signal, receive in receivers.items():
            signal.disconnect(receive, sender=console_app)
    assert heard == [
        ("suspended", client_id, "suspended by an operator"),
        ("reinstated", client_id, None),
        ("deleted", client_id, None),
    ]
