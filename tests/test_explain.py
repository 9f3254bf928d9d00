"""dcr.explain, POST /register/explain, and the name of the check in every refusal's log line
(docs/architecture.md, "Contract: explain").

Every report is checked whole: one row per policy of the pipeline in order, then the replay
check; "passed" before the first failure, "failed" with the wire answer and the withheld
detail, "not reached" after it; a clause on every default check; and nothing stored.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
from jwcrypto import jwk

from flask_obdcr.explain import FAILED, NOT_REACHED, PASSED, format_report, registrable
from flask_obdcr.signals import client_registered, registration_rejected
from flask_obdcr.storage import MemoryStore
from flask_obdcr.testing import SandboxDirectory
from flask_obdcr.testing.fixtures import DCR_KEY

DEFAULT_CHECKS = [
    "request_body",
    "request_jwt",
    "software_statement",
    "request_signature",
    "request_claims",
    "redirect_uris",
    "token_endpoint_auth",
    "grant_types",
    "scope",
    "application_type",
    "signing_algorithms",
    "transport_certificate",
    "key_revocation",
]


@pytest.fixture(scope="module")
def foreign_software():
    """Software of a Directory the bank does not trust: its certificate chains to nothing."""
    return SandboxDirectory(issuer="Some Other Directory").register_software(roles=["AISP"])


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def app(ob_app_factory, store):
    return ob_app_factory(store=store)


@pytest.fixture
def dcr(app):
    return app.extensions[DCR_KEY]


def assert_report(report, *, failed_at=None, detail=None):
    """The whole report: the default checks in order, every clause given; the rows before
    ``failed_at`` passed, that one failed with ``detail``, the ones after not reached."""
    assert [row["policy"] for row in report] == DEFAULT_CHECKS
    for row in report:
        assert set(row) == {"policy", "verdict", "detail", "clause"}
        assert isinstance(row["clause"], str) and row["clause"], row
    index = DEFAULT_CHECKS.index(failed_at) if failed_at else len(report)
    expected = [PASSED] * index
    if failed_at:
        expected += [FAILED] + [NOT_REACHED] * (len(report) - index - 1)
    assert [row["verdict"] for row in report] == expected
    assert [row["detail"] for row in report] == [
        detail if position == index else None for position in range(len(report))
    ]
    assert registrable(report) is (failed_at is None)


# -- dcr.explain --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "certificate",
    [
        pytest.param(lambda software: software.transport_certificate, id="x509"),
        pytest.param(lambda software: software.transport_pem(), id="pem-str"),
        pytest.param(lambda software: software.transport_pem().encode(), id="pem-bytes"),
    ],
)
def test_a_good_request_passes_and_can_be_registered_afterwards(
    certificate, dcr, app, store, ob_directory, ob_software, issuer, post_registration
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    report = dcr.explain(body, certificate=certificate(ob_software))
    assert_report(report)
    assert len(store) == 0
    # explained twice, still passes: the jti was only looked at
    assert_report(dcr.explain(body, certificate=certificate(ob_software)))
    registered = post_registration(body, software=ob_software, app=app)
    assert registered.status_code == 201, registered.get_json()
    assert len(store) == 1


def test_explain_sends_no_signal(dcr, app, ob_directory, ob_software, issuer):
    seen = []
    with (
        client_registered.connected_to(lambda sender, **kw: seen.append("registered"), app),
        registration_rejected.connected_to(lambda sender, **kw: seen.append("rejected"), app),
    ):
        good = ob_directory.registration_request(ob_software, aud=issuer)
        bad = ob_directory.registration_request(ob_software, aud="https://elsewhere.example")
        dcr.explain(good, certificate=ob_software.transport_certificate)
        dcr.explain(bad, certificate=ob_software.transport_certificate)
    assert seen == []


def _other_rsa_key(kid):
    key = jwk.JWK.generate(kty="RSA", size=2048)
    return jwk.JWK(**{**json.loads(key.export_private()), "kid": kid})


FAILURES = [
    pytest.param(
        lambda d, s, issuer: (
            d.registration_request(
                s,
                aud=issuer,
                software_statement=d.ssa(s, key=_other_rsa_key(d.ssa_key["kid"])),
            ),
            s.transport_certificate,
        ),
        "software_statement",
        "400 invalid_software_statement: The software statement signature is invalid.",
        id="ssa-bad-signature",
    ),
    pytest.param(
        lambda d, s, issuer: (
            d.registration_request(s, aud="https://another-bank.example"),
            s.transport_certificate,
        ),
        "request_claims",
        "400 invalid_client_metadata: The request aud does not name this authorization"
        " server. (aud 'https://another-bank.example')",
        id="aud-wrong",
    ),
    pytest.param(
        lambda d, s, issuer: (
            d.registration_request(s, aud=issuer, redirect_uris=["https://tpp.example.com/other"]),
            s.transport_certificate,
        ),
        "redirect_uris",
        "400 invalid_redirect_uri: 'https://tpp.example.com/other' is not one of the software"
        " statement's redirect URIs.",
        id="redirect-uri-not-in-ssa",
    ),
    pytest.param(
        lambda d, s, issuer: (d.registration_request(s, aud=issuer), None),
        "transport_certificate",
        "401 invalid_client: A client certificate is required (mutual TLS).",
        id="no-certificate",
    ),
]


@pytest.mark.parametrize("build,failed_at,detail", FAILURES)
def test_the_first_failure_is_explained_and_the_rest_not_reached(
    build, failed_at, detail, dcr, store, ob_directory, ob_software, issuer
):
    body, certificate = build(ob_directory, ob_software, issuer)
    assert_report(dcr.explain(body, certificate=certificate), failed_at=failed_at, detail=detail)
    assert len(store) == 0


@pytest.mark.parametrize(
    "content_type,encode",
    [
        pytest.param("application/json", json.dumps, id="json-string"),
        pytest.param("application/jose", lambda body: body.encode(), id="jose-bytes"),
    ],
)
def test_each_media_type_of_post_register_is_explained(
    content_type, encode, dcr, ob_directory, ob_software, issuer
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    report = dcr.explain(
        encode(body), certificate=ob_software.transport_certificate, content_type=content_type
    )
    assert_report(report)


def test_a_media_type_post_register_refuses_is_explained(dcr, ob_directory, ob_software, issuer):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    report = dcr.explain(body, ob_software.transport_certificate, "text/plain")
    assert_report(
        report,
        failed_at="request_body",
        detail="415 invalid_client_metadata: The request body must be a signed JWT sent as"
        " application/jwt, application/jose or application/json. (Content-Type 'text/plain')",
    )


def test_an_untrusted_certificate_is_explained(
    dcr, store, ob_directory, ob_software, foreign_software, issuer
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    report = dcr.explain(body, certificate=foreign_software.transport_certificate)
    detail = report[DEFAULT_CHECKS.index("transport_certificate")]["detail"]
    # the wire answer, then the verifier's reason, whose last words are cryptography's own
    subject = foreign_software.transport_certificate.subject.rfc4514_string()
    assert detail.startswith(
        "401 invalid_client: The client certificate is not trusted. (client certificate"
        f" {subject}: validation failed: "
    )
    assert_report(report, failed_at="transport_certificate", detail=detail)
    assert len(store) == 0


def test_a_certificate_that_is_not_one_fails_where_it_is_read(
    dcr, ob_directory, ob_software, issuer
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    report = dcr.explain(body, certificate="not a certificate")
    row = report[DEFAULT_CHECKS.index("transport_certificate")]
    assert row["verdict"] == FAILED
    assert row["detail"].startswith(
        "401 invalid_client: The client certificate could not be read. (not a PEM certificate"
    )
    with pytest.raises(TypeError, match="certificate must be PEM"):
        dcr.explain(body, certificate=42)


def test_a_replayed_jti_fails_the_replay_check(
    dcr, app, store, ob_directory, ob_software, issuer, post_registration
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    assert post_registration(body, software=ob_software, app=app).status_code == 201
    jti = json.loads(base64.urlsafe_b64decode(body.split(".")[1] + "=="))["jti"]
    report = dcr.explain(body, certificate=ob_software.transport_certificate)
    assert_report(
        report,
        failed_at="request_claims",  # the replay check is its rule
        detail="400 invalid_client_metadata: The request JWT has been used before (jti"
        f" replayed). (jti {jti!r} of software {ob_software.software_id!r} is in the replay"
        " cache)",
    )
    assert len(store) == 1


def test_a_replay_cache_that_is_down_fails_the_replay_check(
    dcr, app, store, ob_directory, ob_software, issuer, monkeypatch
):
    def down(key):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dcr.registrar.replay_cache, "seen", down)
    body = ob_directory.registration_request(ob_software, aud=issuer)
    report = dcr.explain(body, certificate=ob_software.transport_certificate)
    assert_report(
        report,
        failed_at="request_claims",  # the replay check is its rule
        detail="503 temporarily_unavailable: The replay check cannot be made right now; retry"
        " later. (ConnectionError('redis is down'))",
    )


def test_a_custom_policy_without_a_clause_is_reported_with_none(
    ob_app_factory, ob_directory, ob_software, issuer
):
    from flask_obdcr import policy

    @policy("only_on_weekdays")
    def only_on_weekdays(context):
        return None

    app = ob_app_factory()
    dcr = app.extensions[DCR_KEY]
    dcr.registrar.pipeline.insert_after("scope", only_on_weekdays)
    body = ob_directory.registration_request(ob_software, aud=issuer)
    report = dcr.explain(body, certificate=ob_software.transport_certificate)
    names = [row["policy"] for row in report]
    assert names == [*DEFAULT_CHECKS[:9], "only_on_weekdays", *DEFAULT_CHECKS[9:]]
    custom = report[9]
    assert custom == {
        "policy": "only_on_weekdays",
        "verdict": PASSED,
        "detail": None,
        "clause": None,
    }


def test_format_report_is_a_table_with_the_verdict_line(dcr, ob_directory, ob_software, issuer):
    body = ob_directory.registration_request(ob_software, aud="https://another-bank.example")
    report = dcr.explain(body, certificate=ob_software.transport_certificate)
    table = format_report(report, width=200)
    lines = table.splitlines()
    assert lines[0].split() == ["#", "policy", "verdict", "detail", "clause"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[-1] == "not registrable: refused by request_claims"
    starts = [line.split()[:3] for line in lines[2:-2] if line and line[0].isdigit()]
    assert [start[:2] for start in starts] == [
        [str(n), name] for n, name in enumerate(DEFAULT_CHECKS, 1)
    ]
    assert [" ".join(start[2:]) for start in starts][3:6] == [PASSED, FAILED, "not"]
    assert all(len(line) <= 200 for line in lines)


# -- POST /register/explain ---------------------------------------------------------------------


def post_explain(app, body, environ, **kwargs):
    with app.test_client() as client:
        return client.post(
            "/register/explain",
            data=body,
            content_type=kwargs.pop("content_type", "application/jwt"),
            environ_base=environ,
            **kwargs,
        )


def test_the_endpoint_is_off_by_default(app, store, ob_directory, ob_software, issuer):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    response = post_explain(app, body, ob_software.environ())
    assert response.status_code in (404, 405)
    assert "report" not in (response.get_json() or {})
    assert len(store) == 0
    assert "obdcr_explain.explain_registration" not in app.view_functions


@pytest.fixture
def sandbox(ob_app_factory, store):
    return ob_app_factory(store=store, OBDCR_EXPLAIN_ENDPOINT=True)


def test_the_endpoint_explains_over_mtls_and_stores_nothing(
    sandbox, store, ob_directory, ob_software, issuer, post_registration
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    seen = []
    with (
        client_registered.connected_to(lambda sender, **kw: seen.append("registered"), sandbox),
        registration_rejected.connected_to(lambda sender, **kw: seen.append("rejected"), sandbox),
    ):
        response = post_explain(sandbox, body, ob_software.environ())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    data = response.get_json()
    assert set(data) == {"report", "registrable"}
    assert data["registrable"] is True
    assert_report(data["report"])
    assert data["report"] == sandbox.extensions[DCR_KEY].explain(
        body, certificate=ob_software.transport_certificate
    )
    assert seen == [] and len(store) == 0
    # the same body registers afterwards: its jti was not consumed
    assert post_registration(body, software=ob_software, app=sandbox).status_code == 201


def test_the_endpoint_uses_the_request_certificate(
    sandbox, store, ob_directory, ob_software, issuer
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    response = post_explain(sandbox, body, {})
    assert response.status_code == 200
    data = response.get_json()
    assert data["registrable"] is False
    assert_report(
        data["report"],
        failed_at="transport_certificate",
        detail="401 invalid_client: A client certificate is required (mutual TLS).",
    )
    assert len(store) == 0


def test_the_endpoint_keeps_the_body_limit(sandbox, store, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_obdcr"):
        response = post_explain(sandbox, "a" * 70000, {})
    assert response.status_code == 413
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert "refused by request_body: invalid_client_metadata" in caplog.text
    assert len(store) == 0


def test_the_endpoint_answers_only_post(sandbox):
    with sandbox.test_client() as client:
        response = client.get("/register/explain")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.get_json()["error"] == "invalid_request"


def test_turning_the_endpoint_on_is_logged(ob_app_factory, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_obdcr"):
        ob_app_factory(OBDCR_EXPLAIN_ENDPOINT=True)
    assert "OBDCR_EXPLAIN_ENDPOINT is on: POST /register/explain" in caplog.text


# -- every refusal names its check in the log ---------------------------------------------------


def refusal_lines(caplog):
    return [r.getMessage() for r in caplog.records if " refused by " in r.getMessage()]


def test_a_replay_is_logged_as_refused_by_jti_replay(
    app, ob_directory, ob_software, issuer, post_registration, caplog
):
    body = ob_directory.registration_request(ob_software, aud=issuer)
    assert post_registration(body, software=ob_software, app=app).status_code == 201
    with caplog.at_level(logging.WARNING, logger="flask_obdcr"):
        replay = post_registration(body, software=ob_software, app=app)
    assert replay.status_code == 400
    [line] = refusal_lines(caplog)
    assert line.startswith(
        "DCR POST /register refused by jti_replay: invalid_client_metadata (jti "
    )


@pytest.mark.parametrize(
    "send,check,code",
    [
        pytest.param(
            lambda d, s, i: {"data": d.registration_request(s, aud="https://x.example")},
            "request_claims",
            "invalid_client_metadata",
            id="pipeline-policy",
        ),
        pytest.param(
            lambda d, s, i: {"data": "a" * 70000},
            "request_body",
            "invalid_client_metadata",
            id="body-too-large",
        ),
        pytest.param(
            lambda d, s, i: {
                "data": d.registration_request(s, aud=i),
                "content_type": "text/plain",
            },
            "request_body",
            "invalid_client_metadata",
            id="media-type",
        ),
    ],
)
def test_every_registration_refusal_names_its_check(
    send, check, code, app, ob_directory, ob_software, issuer, caplog
):
    kwargs = {"content_type": "application/jwt", **send(ob_directory, ob_software, issuer)}
    with caplog.at_level(logging.WARNING, logger="flask_obdcr"), app.test_client() as client:
        response = client.post("/register", environ_base=ob_software.environ(), **kwargs)
    assert response.get_json()["error"] == code
    [line] = refusal_lines(caplog)
    assert line.startswith(f"DCR POST /register refused by {check}: {code} (")


def test_a_management_refusal_names_its_check(app, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_obdcr"), app.test_client() as client:
        response = client.get("/register/some-client")
    assert response.status_code == 401
    [line] = refusal_lines(caplog)
    assert line == (
        "DCR GET /register/some-client refused by management: invalid_token (An access token"
        " is required (Authorization: Bearer).)"
    )


def test_a_refusal_at_the_host_apps_mtls_gate_names_its_check(app, dcr, caplog):
    # the example bank's before_request hook: dcr.client_certificate() in front of everything
    app.before_request(dcr.client_certificate)
    with caplog.at_level(logging.WARNING, logger="flask_obdcr"), app.test_client() as client:
        response = client.post("/register", data="x", content_type="application/jwt")
    assert response.status_code == 401
    [line] = refusal_lines(caplog)
    assert line == (
        "DCR POST /register refused by transport_certificate: invalid_client (A client"
        " certificate is required (mutual TLS).)"
    )


def test_one_row_per_policy_of_the_pipeline_in_order(dcr, ob_directory, ob_software, issuer):
    # the contract: one row per policy of dcr.pipeline, nothing else
    body = ob_directory.registration_request(ob_software, aud=issuer)
    report = dcr.explain(body, certificate=ob_software.transport_certificate)
    assert [row["policy"] for row in report] == dcr.pipeline.names


def test_sandbox_only_settings_are_logged_in_one_line(ob_app_factory, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_obdcr"):
        ob_app_factory(OBDCR_EXPLAIN_ENDPOINT=True, OBDCR_LOOPBACK_REDIRECT_URIS=True)
    lines = [r.getMessage() for r in caplog.records if "for sandboxes only" in r.getMessage()]
    assert len(lines) == 1
    assert "OBDCR_EXPLAIN_ENDPOINT is on" in lines[0]
    assert "OBDCR_LOOPBACK_REDIRECT_URIS is on" in lines[0]
