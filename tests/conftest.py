import pytest
from authlib.integrations.flask_oauth2 import AuthorizationServer

from flask_obdcr.storage import MemoryStore

pytest_plugins = ["flask_obdcr.testing.fixtures"]


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
