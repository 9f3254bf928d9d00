"""OpenBankingDCR as a Flask extension: construction, init_app, per-app state, the blueprint."""

from __future__ import annotations

import os

import pytest
from flask import Flask

from flask_obdcr import ConfigurationError, OpenBankingDCR, Settings
from flask_obdcr.extension import DCRState
from flask_obdcr.storage import ClientStore, MemoryStore, SQLiteStore
from flask_obdcr.testing.pki import pem

ALREADY = "OpenBankingDCR is already registered on this app; call init_app once per app."


@pytest.fixture
def make_app(tmp_path, ob_directory, issuer):
    """A bank app trusting the sandbox Directory, without the extension; each ``name`` gets
    its own instance folder."""

    def make(name: str = "bank", **config) -> Flask:
        app = Flask(name, instance_path=str(tmp_path / name / "instance"))
        app.config.update(ob_directory.app_config(tmp_path / f"{name}-ca.pem", issuer=issuer))
        app.config.update(config)
        app.testing = True
        return app

    return make


@pytest.fixture
def make_dcr(ob_fetcher, ob_clock):
    """An extension that fetches JWKS from the sandbox and runs on the test clock."""

    def make(app: Flask | None = None, **kw) -> OpenBankingDCR:
        return OpenBankingDCR(app, jwks_fetcher=ob_fetcher, clock=ob_clock, **kw)

    return make


@pytest.fixture
def register(ob_directory, ob_software, issuer, post_registration):
    """POST a fresh registration request to ``app``; returns the 201 response's JSON."""

    def do(app: Flask) -> dict:
        body = ob_directory.registration_request(ob_software, aud=issuer)
        response = post_registration(body, software=ob_software, app=app)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return do


def assert_not_registered(app: Flask) -> None:
    assert "obdcr" not in app.extensions
    assert "obdcr" not in app.blueprints
    assert [rule.rule for rule in app.url_map.iter_rules() if "register" in rule.rule] == []


# -- construction ----------------------------------------------------------------------------


def test_constructor_with_app(make_app, make_dcr, register):
    app = make_app()
    store = MemoryStore()
    dcr = make_dcr(app, store=store)
    state = app.extensions["obdcr"]
    assert type(state) is DCRState
    with app.app_context():
        assert dcr.registrar is state.registrar
    assert state.store is store
    assert state.settings == Settings.from_config(app.config)
    assert dcr.store is store
    data = register(app)
    assert [c.client_id for c in store.list()] == [data["client_id"]]


def test_init_app_factory_pattern(make_app, make_dcr, register):
    store = MemoryStore()
    dcr = make_dcr(store=store)

    def create_app() -> Flask:
        app = make_app()
        dcr.init_app(app)
        return app

    with pytest.raises(RuntimeError) as excinfo:
        dcr.settings  # noqa: B018 - no app yet
    assert str(excinfo.value) == "OpenBankingDCR.init_app(app) has not been called."
    app = create_app()
    assert app.extensions["obdcr"].store is store
    with app.app_context():
        assert dcr.settings is app.extensions["obdcr"].settings
        assert dcr.registrar is app.extensions["obdcr"].registrar
    data = register(app)
    assert store.get(data["client_id"]).to_response() == {
        k: v
        for k, v in data.items()
        if k not in ("client_secret", "client_secret_expires_at")
        and k not in ("registration_access_token", "registration_client_uri")
    }


def test_registering_twice_on_one_app_raises(make_app, make_dcr):
    app = make_app()
    dcr = make_dcr(app, store=MemoryStore())
    state = app.extensions["obdcr"]
    with pytest.raises(RuntimeError) as excinfo:
        dcr.init_app(app)
    assert str(excinfo.value) == ALREADY
    with pytest.raises(RuntimeError) as excinfo:
        make_dcr(app, store=MemoryStore())
    assert str(excinfo.value) == ALREADY
    assert app.extensions["obdcr"] is state


# -- the store -------------------------------------------------------------------------------


def test_default_store_is_sqlite_in_the_instance_folder(make_app, make_dcr, register):
    app = make_app()
    make_dcr(app)
    store = app.extensions["obdcr"].store
    path = os.path.join(app.instance_path, "obdcr.db")
    assert type(store) is SQLiteStore
    assert store.path == path
    assert not os.path.exists(path)  # created on first use, not at start-up
    data = register(app)
    assert os.path.isfile(path)
    # another process (here: another store object) sees the registered client
    other = SQLiteStore(path)
    assert other.get(data["client_id"]) == store.get(data["client_id"])
    assert [c.client_id for c in other.list()] == [data["client_id"]]
    other.close()


def test_store_inside_and_outside_an_app_context(make_app, make_dcr, register):
    app = make_app()
    dcr = make_dcr(app)
    state = app.extensions["obdcr"]
    assert dcr.store is state.store
    with app.app_context():
        assert dcr.store is state.store
    data = register(app)
    assert dcr.store.get(data["client_id"]).client_id == data["client_id"]
    with app.app_context():
        assert dcr.store.get(data["client_id"]).client_id == data["client_id"]


def test_one_extension_two_apps_keeps_them_apart(make_app, make_dcr, register):
    dcr = make_dcr()
    app_a = make_app("bank_a")
    app_b = make_app("bank_b", OBDCR_CLOCK_SKEW=5)
    dcr.init_app(app_a)
    dcr.init_app(app_b)
    store_a = app_a.extensions["obdcr"].store
    store_b = app_b.extensions["obdcr"].store
    assert store_a is not store_b
    assert store_a.path == os.path.join(app_a.instance_path, "obdcr.db")
    assert store_b.path == os.path.join(app_b.instance_path, "obdcr.db")
    assert store_a.path != store_b.path

    a1 = register(app_a)["client_id"]
    with app_a.app_context():
        assert dcr.store is store_a
        assert dcr.settings.clock_skew == 30
        assert [c.client_id for c in dcr.store.list()] == [a1]
    with app_b.app_context():
        assert dcr.store is store_b
        assert dcr.settings.clock_skew == 5
        assert dcr.store.get(a1) is None
        assert len(dcr.store) == 0

    b1 = register(app_b)["client_id"]
    assert [c.client_id for c in store_a.list()] == [a1]
    assert [c.client_id for c in store_b.list()] == [b1]
    # the registration access token of one bank's client means nothing at the other
    with app_b.test_client() as client:
        response = client.get(f"/register/{a1}", headers={"Authorization": "Bearer x"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_token"


# -- start-up failures -----------------------------------------------------------------------


def test_misconfigured_app_fails_at_init_app(make_app, make_dcr):
    app = make_app()
    del app.config["OBDCR_ISSUER"]
    with pytest.raises(ConfigurationError) as excinfo:
        make_dcr(app)
    assert str(excinfo.value) == (
        "OBDCR_ISSUER must be set in the app config before init_app()"
        " (see the configuration table in the README)."
    )
    assert_not_registered(app)


def test_failed_init_app_can_be_retried_once_fixed(make_app, make_dcr, issuer, register):
    app = make_app(OBDCR_SIGNING_ALGS=["HS256"])
    dcr = make_dcr(store=MemoryStore())
    with pytest.raises(ConfigurationError) as excinfo:
        dcr.init_app(app)
    assert str(excinfo.value).startswith("OBDCR_SIGNING_ALGS must be a non-empty list")
    assert_not_registered(app)
    app.config["OBDCR_SIGNING_ALGS"] = ["PS256", "ES256"]
    dcr.init_app(app)
    assert app.extensions["obdcr"].settings.signing_algs == ("PS256", "ES256")
    assert len(dcr.store) == 0
    register(app)
    assert len(dcr.store) == 1


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param("not a certificate\n", id="text"),
        pytest.param("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", id="bad"),
        pytest.param("leaf", id="leaf-not-ca"),
    ],
)
def test_transport_ca_file_without_a_ca_certificate_fails_at_init_app(
    make_app, make_dcr, tmp_path, ob_software, content
):
    path = tmp_path / "not-a-ca.pem"
    path.write_text(pem(ob_software.transport_certificate) if content == "leaf" else content)
    app = make_app(OBDCR_TRANSPORT_CA_FILE=str(path))
    with pytest.raises(ConfigurationError) as excinfo:
        make_dcr(app)
    assert str(excinfo.value).startswith(
        f"OBDCR_TRANSPORT_CA_FILE {str(path)!r} holds no usable CA certificate: "
    )
    assert_not_registered(app)


# -- the blueprint ---------------------------------------------------------------------------


def test_blueprint_routes(make_app, make_dcr, register, issuer):
    app = make_app()
    make_dcr(app, store=MemoryStore())
    rules = {
        (rule.rule, rule.endpoint): sorted(rule.methods - {"HEAD", "OPTIONS"})
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("obdcr.")
    }
    assert rules == {
        ("/register", "obdcr.register"): ["POST"],
        ("/register", "obdcr.register_405"): ["DELETE", "GET", "PATCH", "PUT"],
        ("/register/<client_id>", "obdcr.manage"): ["DELETE", "GET", "PUT"],
        ("/register/<client_id>", "obdcr.manage_405"): ["PATCH", "POST"],
    }
    with app.test_client() as client:
        get = client.get("/register")
        put = client.put("/register", data=b"x")
        post = client.post("/register/some-client", data=b"x")
    for response, allow in ((get, "POST"), (put, "POST"), (post, "GET, PUT, DELETE")):
        # JSON, like every other answer of the DCR endpoints, not Flask's HTML page
        assert response.status_code == 405
        assert response.headers["Allow"] == allow
        assert response.headers["Cache-Control"] == "no-store"
        assert response.get_json() == {
            "error": "invalid_request",
            "error_description": f"Use {allow} on this endpoint.",
        }
    data = register(app)
    assert data["registration_client_uri"] == f"{issuer}/register/{data['client_id']}"


def test_url_prefix(make_app, make_dcr, ob_directory, ob_software, issuer, post_registration):
    app = make_app()
    store = MemoryStore()
    dcr = make_dcr(app, store=store, url_prefix="/dcr")
    body = ob_directory.registration_request(ob_software, aud=issuer)
    unprefixed = post_registration(body, software=ob_software, app=app)
    assert unprefixed.status_code == 404
    assert len(store) == 0
    with app.test_client() as client:
        response = client.post(
            "/dcr/register",
            data=body,
            content_type="application/jwt",
            environ_base=ob_software.environ(),
        )
        assert response.status_code == 201, response.get_json()
        data = response.get_json()
        assert data["registration_client_uri"] == (f"{issuer}/dcr/register/{data['client_id']}")
        read = client.get(
            f"/dcr/register/{data['client_id']}",
            headers={"Authorization": f"Bearer {data['registration_access_token']}"},
            environ_base=ob_software.environ(),
        )
    assert read.status_code == 200, read.get_json()
    assert read.get_json()["client_id"] == data["client_id"]
    assert [c.client_id for c in store.list()] == [data["client_id"]]
    assert dcr.discovery_metadata()["registration_endpoint"] == f"{issuer}/dcr/register"


class _DirectoryLikeStore(ClientStore):  # keeps clients, no tokens (as LDAPStore)
    def __init__(self):
        self._clients = MemoryStore()

    def _add(self, client):
        self._clients.add(client)

    def _get(self, client_id):
        return self._clients.get(client_id)

    def _list(self):
        return self._clients.list()

    def _replace(self, client):
        self._clients.replace(client)

    def _delete(self, client_id):
        return self._clients.delete(client_id)


def test_a_store_keeping_no_tokens_is_warned_about(ob_app_factory, caplog):
    from flask_obdcr.storage import MemoryTokenStore

    with caplog.at_level("WARNING", logger="flask_obdcr"):
        app = ob_app_factory(store=_DirectoryLikeStore())
    assert isinstance(app.extensions["obdcr"].tokens, MemoryTokenStore)
    assert [r.getMessage() for r in caplog.records if r.name == "flask_obdcr"] == [
        "_DirectoryLikeStore keeps no access tokens: they are kept in this process only, so"
        " with several processes pass token_store= or set OBDCR_REDIS_URL"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="flask_obdcr"):
        ob_app_factory(store=MemoryStore())  # single-process by nature: nothing to say
    assert [r for r in caplog.records if r.name == "flask_obdcr"] == []
