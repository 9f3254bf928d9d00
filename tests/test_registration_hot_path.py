"""What a registration does once per request, kept behaving as before it was made cheaper:
the body read (a declared length or a chunked stream), the JSON answer through the app's
provider, the request JWT decoded once for its signature check, the certificate kept with
the client, the software JWKS read in place, and the records the stores encode and copy.

Negative cases assert the status, the error code and that nothing was stored.
"""

from __future__ import annotations

import copy
import io
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from flask.json.provider import DefaultJSONProvider
from werkzeug.test import EnvironBuilder, run_wsgi_app

from flask_obdcr import jose
from flask_obdcr.certificates import load_certificate, pem_text
from flask_obdcr.policies import policy
from flask_obdcr.registration import TRUST
from flask_obdcr.signals import registration_request_refused
from flask_obdcr.storage import MemoryStore, StoredClient
from flask_obdcr.testing.fixtures import DCR_KEY, ISSUER


def _refused(response, status: int, error: str, store) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"] == error
    assert response.headers["Cache-Control"] == "no-store"
    assert len(store) == 0


def _wsgi_post(app, body: bytes, environ: dict, *, declared: int | None, terminated: bool):
    """POST /register with ``declared`` as Content-Length (None: none, as a chunked request
    arrives), the WSGI server ending the stream itself when ``terminated``."""
    built = EnvironBuilder(
        path="/register",
        method="POST",
        input_stream=io.BytesIO(body),
        content_type="application/jwt",
        environ_base=environ,
    ).get_environ()
    built.pop("CONTENT_LENGTH", None)
    if declared is not None:
        built["CONTENT_LENGTH"] = str(declared)
    if terminated:
        built["wsgi.input_terminated"] = True
    app_iter, status, headers = run_wsgi_app(app, built, buffered=True)
    return app.response_class(app_iter, status=status, headers=headers)


# -- the body ---------------------------------------------------------------------------------


def test_a_chunked_body_without_a_length_is_read_whole_and_registers(
    ob_app_factory, ob_directory, ob_software, issuer
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(ob_software, aud=issuer).encode()
    response = _wsgi_post(app, body, ob_software.environ(), declared=None, terminated=True)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert len(store) == 1


def test_a_chunked_body_beyond_the_limit_is_413_and_stores_nothing(
    ob_app_factory, ob_directory, ob_software, issuer
):
    store = MemoryStore()
    app = ob_app_factory(store=store, OBDCR_MAX_REQUEST_BYTES=2048)
    body = ob_directory.registration_request(ob_software, aud=issuer).encode()
    assert len(body) > 2048
    response = _wsgi_post(app, body, ob_software.environ(), declared=None, terminated=True)
    _refused(response, 413, "invalid_client_metadata", store)


def test_a_declared_length_beyond_the_limit_is_413_before_reading(
    ob_app_factory, ob_directory, ob_software, issuer
):
    store = MemoryStore()
    app = ob_app_factory(store=store, OBDCR_MAX_REQUEST_BYTES=2048)
    body = ob_directory.registration_request(ob_software, aud=issuer).encode()
    seen = []
    with registration_request_refused.connected_to(lambda s, **kw: seen.append(kw["body"]), app):
        response = _wsgi_post(
            app, body, ob_software.environ(), declared=len(body), terminated=False
        )
    _refused(response, 413, "invalid_client_metadata", store)
    assert seen == [None]  # refused on the header alone: nothing of the body was read


def test_only_the_declared_length_is_read(ob_app_factory, ob_directory, ob_software, issuer):
    # a Content-Length shorter than what follows: the body is what it declares, never more
    store = MemoryStore()
    app = ob_app_factory(store=store)
    body = ob_directory.registration_request(ob_software, aud=issuer).encode()
    seen = []
    with registration_request_refused.connected_to(lambda s, **kw: seen.append(kw["body"]), app):
        response = _wsgi_post(app, body, ob_software.environ(), declared=100, terminated=False)
    _refused(response, 400, "invalid_client_metadata", store)
    assert seen == [body[:100]]


# -- the answer -------------------------------------------------------------------------------


class _RecordingProvider(DefaultJSONProvider):
    def __init__(self, app):
        super().__init__(app)
        self.bodies: list = []

    def dumps(self, obj, **kwargs):
        self.bodies.append(obj)
        return super().dumps(obj, **kwargs)


def test_the_answer_is_encoded_by_the_apps_json_provider(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    app = ob_app_factory()
    app.json = provider = _RecordingProvider(app)
    body = ob_directory.registration_request(ob_software, aud=issuer)
    response = post_registration(body, software=ob_software, app=app)
    assert response.status_code == 201
    assert [b["client_id"] for b in provider.bodies] == [response.get_json()["client_id"]]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers.getlist("Cache-Control") == ["no-store"]


def test_a_refusals_own_headers_are_added_and_replace_ours(ob_app_factory):
    app = ob_app_factory()
    with app.test_client() as client:
        wrong_method = client.get("/register")
        no_token = client.get("/register/some-client")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert wrong_method.headers.getlist("Cache-Control") == ["no-store"]
    assert no_token.status_code == 401
    assert no_token.get_json()["error"] == "invalid_token"
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")
    assert no_token.headers["Pragma"] == "no-cache"


# -- the request JWT, decoded once --------------------------------------------------------------


def test_verify_of_a_decoded_token_gives_the_same_verdicts(ob_directory, ob_software, issuer):
    token = ob_directory.registration_request(ob_software, aud=issuer)
    keys = [ob_software.signing_key]
    decoded = jose.decode(token)
    assert (decoded.header, decoded.claims) == jose.peek(token)
    assert jose.verify(decoded, keys, decoded.alg) is jose.verify(token, keys, decoded.alg)
    # what the caller does to the header it was given changes nothing
    decoded.header["alg"] = "ES256"
    decoded.header["kid"] = "another"
    assert jose.verify(decoded, keys, "PS256") is ob_software.signing_key
    with pytest.raises(jose.BadSignature):
        jose.verify(decoded, keys, "ES256")  # the header names PS256
    other = ob_directory.register_software(roles=["AISP"])
    with pytest.raises(jose.BadSignature):
        jose.verify(decoded, [other.signing_key], "PS256")
    head, payload, signature = token.split(".")
    tampered = jose.decode(f"{head}.{payload}.{signature[:-4]}AAAA")
    with pytest.raises(jose.BadSignature):
        jose.verify(tampered, keys, "PS256")


def test_a_request_jwt_replaced_after_decoding_is_the_one_verified(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    # a user policy that swaps the token after the request_jwt policy decoded it: the
    # signature check must verify the token now in the context, not the one decoded before
    other = ob_directory.register_software(roles=["AISP", "PISP"])
    forged = ob_directory.registration_request(other, aud=issuer)

    @policy("swap_request")
    def swap_request(context):
        context.request_jwt = forged

    store = MemoryStore()
    app = ob_app_factory(store=store)
    app.extensions[DCR_KEY].registrar.pipeline.insert_after("request_jwt", swap_request)
    body = ob_directory.registration_request(ob_software, aud=issuer)
    response = post_registration(body, software=ob_software, app=app)
    _refused(response, 400, "invalid_client_metadata", store)


# -- redirect URIs ---------------------------------------------------------------------------------


def test_a_hosts_loopback_verdict_is_kept_apart_from_each_apps_setting(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    # the verdict on a host is remembered; whether a loopback literal may register is each
    # app's setting, asked on every request
    page = "https://127.0.0.1:7443/callback"
    ssa = ob_directory.ssa(ob_software, software_redirect_uris=[page, "https://localhost/cb"])
    default_store, sandbox_store = MemoryStore(), MemoryStore()
    default = ob_app_factory(store=default_store)
    sandbox = ob_app_factory(store=sandbox_store, OBDCR_LOOPBACK_REDIRECT_URIS=True)

    def post(app, uri):
        body = ob_directory.registration_request(
            ob_software, aud=issuer, software_statement=ssa, redirect_uris=[uri]
        )
        return post_registration(body, software=ob_software, app=app)

    for _ in range(2):
        _refused(post(default, page), 400, "invalid_redirect_uri", default_store)
        _refused(post(sandbox, "https://localhost/cb"), 400, "invalid_redirect_uri", sandbox_store)
    assert post(sandbox, page).status_code == 201
    _refused(post(default, page), 400, "invalid_redirect_uri", default_store)
    assert len(sandbox_store) == 1


# -- the certificate and the software JWKS --------------------------------------------------------


def test_each_client_keeps_its_own_certificate(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration, ob_fetcher
):
    second = ob_directory.register_software(roles=["AISP"])
    ob_fetcher.documents.update(ob_directory.documents())
    store = MemoryStore()
    app = ob_app_factory(store=store)
    for software in (ob_software, second, ob_software):
        body = ob_directory.registration_request(software, aud=issuer)
        response = post_registration(body, software=software, app=app)
        assert response.status_code == 201, response.get_json()
        trust = store.get(response.get_json()["client_id"]).extra[TRUST]
        presented = software.transport_certificate.public_bytes(Encoding.PEM).decode()
        assert trust["certificate"] == presented
        assert pem_text(load_certificate(presented)) == presented


def test_the_cached_software_jwks_is_read_not_changed(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    app = ob_app_factory()
    jwks = app.extensions[DCR_KEY].registrar.jwks
    first = ob_directory.registration_request(ob_software, aud=issuer)
    assert post_registration(first, software=ob_software, app=app).status_code == 201
    cached = jwks.shared_document(ob_software.jwks_url)
    before = copy.deepcopy(cached)
    again = ob_directory.registration_request(ob_software, aud=issuer)
    assert post_registration(again, software=ob_software, app=app).status_code == 201
    assert jwks.shared_document(ob_software.jwks_url) is cached
    assert cached == before


# -- the records ------------------------------------------------------------------------------


def _client(**extra) -> StoredClient:
    return StoredClient(
        client_id="client-1",
        client_id_issued_at=1700000000,
        metadata={"redirect_uris": ["https://tpp.example.com/cb"], "z": "é\u2028", "a": 1.5},
        ssa_claims={"software_id": "s", "org_id": "o", "nested": {"b": [1, {"c": None}]}},
        registration_access_token_hash="sha256:00",
        updated_at=1700000000,
        extra={"trust": {"x5t#S256": "t", "certificate_binding": "ob_subject"}, **extra},
    )


def test_the_record_encoding_is_unchanged():
    client = _client()
    record = client.to_record()
    assert record["metadata"] == json.dumps(client.metadata, separators=(",", ":"))
    assert record["ssa_claims"] == json.dumps(client.ssa_claims, separators=(",", ":"))
    assert record["extra"] == json.dumps(client.extra, sort_keys=True, separators=(",", ":"))
    assert StoredClient.from_record(record) == client


def test_memory_store_copies_values_that_are_not_json_too():
    store = MemoryStore()
    client = _client(tags={"a"})
    store.add(client)
    client.extra["tags"].add("changed")
    client.ssa_claims["nested"]["b"][1]["c"] = "changed"
    fetched = store.get("client-1")
    assert fetched.extra["tags"] == {"a"}
    assert fetched.ssa_claims["nested"]["b"][1]["c"] is None
    fetched.extra["tags"].add("again")
    assert store.get("client-1").extra["tags"] == {"a"}


def test_memory_store_keeps_a_subclass_whole():
    class Tagged(StoredClient):
        pass

    store = MemoryStore()
    store.add(Tagged(**{**_client().__dict__}))
    assert type(store.get("client-1")) is Tagged


def test_registration_client_uri_comes_from_configuration(
    ob_app_factory, ob_directory, ob_software, issuer, post_registration
):
    app = ob_app_factory()
    body = ob_directory.registration_request(ob_software, aud=issuer)
    with app.test_client() as client:
        response = client.post(
            "/register",
            data=body,
            content_type="application/jwt",
            environ_base=ob_software.environ(),
            headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        )
    data = response.get_json()
    assert data["registration_client_uri"] == f"{ISSUER}/register/{data['client_id']}"
