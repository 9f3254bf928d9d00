"""The operator console (docs/architecture.md, "Console pages and the consent journey")."""

import re

import pytest

from flask_obdcr.registration import SUSPENDED
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
    token = csrf_of(http.get(f"/console/clients/{client_id}").get_data(as_text=True))
    allowed["value"] = False
    for response in (
        http.get("/console/"),
        http.get(f"/console/clients/{client_id}"),
        http.get(f"/console/clients/{client_id}/delete"),
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
    for url in ("/console/", "/console/clients/evil-client", "/console/clients/evil-client/delete"):
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
    token = csrf_of(first.get(f"/console/clients/{client_id}").get_data(as_text=True))
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
    page = http.get(f"/console/clients/{client_id}").get_data(as_text=True)
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
    page = http.get(f"/console/clients/{client_id}").get_data(as_text=True)
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
