import pytest

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
