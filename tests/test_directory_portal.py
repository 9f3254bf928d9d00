"""The sandbox Directory's portal (example_app/directory/portal.py) through Flask's test client:
every page, every form with good and bad input, CSRF, escaping, and the presenter's path from
the portal to a registration at the bank with the TPP's command line.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shlex
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from jwcrypto import jwk, jws

from example_app.directory import DirectoryState, create_directory_app
from example_app.directory.api import SESSION_COOKIE
from example_app.directory.state import PORTAL_SECRET_FILE
from example_app.sandbox import Sandbox
from example_app.tpp import cli as tpp_cli
from flask_obdcr.testing.pki import generate_key, ob_subject

REPO = Path(__file__).resolve().parent.parent
BASE = "https://127.0.0.1"  # the session cookie is Secure: the test client speaks https
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
HOSTILE = '<script>alert("x")</script>'
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(autouse=True)
def _in_the_checkout(monkeypatch):
    """Run from the checkout, as the presenter does: the commands name ``.venv/bin/...``."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> DirectoryState:
    return DirectoryState.open(tmp_path_factory.mktemp("portal") / "directory")


@pytest.fixture
def app(state):
    return create_directory_app(state, base_url="https://127.0.0.1:18443")


@pytest.fixture
def client(app):
    return app.test_client()


def get(client, path: str, status: int = 200, **kwargs):
    response = client.get(path, base_url=BASE, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    return response


def token_of(client) -> str:
    """The session's CSRF token, as the forms carry it."""
    found = CSRF.search(get(client, "/portal/").get_data(as_text=True))
    assert found is not None
    return found[1]


def post(client, path: str, data: dict, *, csrf: str | None = "session", **kwargs):
    """A form POST with the session's CSRF token (``csrf=None``: none; another string: that)."""
    data = dict(data)
    if csrf == "session":
        data["csrf_token"] = token_of(client)
    elif csrf is not None:
        data["csrf_token"] = csrf
    return client.post(path, data=data, base_url=BASE, **kwargs)


def snapshot(state: DirectoryState) -> str:
    """The registry as stored: to show that a refused form changed nothing."""
    return (
        (state.folder / "registry.json").read_text()
        if (state.folder / "registry.json").exists()
        else ""
    )


def text(response) -> str:
    """The page's text without tags, entities decoded, spaces collapsed."""
    body = re.sub(r"<script.*?</script>", " ", response.get_data(as_text=True), flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def shown(body: str, element_id: str) -> str:
    """The text of the element (a textarea, a pre) with this id, entities decoded."""
    found = re.search(rf'<(\w+) id="{element_id}"[^>]*>(.*?)</\1>', body, re.S)
    assert found is not None, element_id
    return html.unescape(found[2])


def new_organisation(client, name: str = "Sandbox TPP Ltd") -> str:
    response = post(client, "/portal/organisations", {"org_name": name})
    assert response.status_code == 303, response.get_data(as_text=True)
    return response.headers["Location"].split("/")[3]


def new_software(client, org_id: str, **fields) -> str:
    form = {
        "client_name": "My TPP",
        "roles": ["AISP", "PISP"],
        "redirect_uris": "https://tpp.example.com/cb\nhttps://tpp.example.com/cb2",
    }
    form.update(fields)
    response = post(client, f"/portal/organisations/{org_id}/software", form)
    assert response.status_code == 303, response.get_data(as_text=True)
    return response.headers["Location"].rsplit("/", 1)[1]


def csr_pem(software_id: str, org_id: str, key=None) -> str:
    key = key or generate_key("EC")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(ob_subject(software_id, org_id))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def upload(client, software_id: str, cert_type: str, pem: str = "", **fields):
    return post(
        client,
        f"/portal/software/{software_id}/certificates",
        {"cert_type": cert_type, "csr": pem, **fields},
        content_type="multipart/form-data",
    )


@pytest.fixture
def software(client, state):
    org_id = new_organisation(client)
    return state.software(new_software(client, org_id))


# -- the index: JSON for API clients, the portal for browsers ----------------------------------


def test_index_sends_a_browser_to_the_portal(client):
    response = get(client, "/", 303, headers={"Accept": BROWSER_ACCEPT})
    assert response.headers["Location"] == "/portal/"
    assert response.headers["Vary"] == "Accept"


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html"])
def test_index_answers_json_to_api_clients(client, accept):
    headers = {"Accept": accept} if accept else {}
    response = get(client, "/", headers=headers)
    assert response.mimetype == "application/json"
    assert response.get_json()["portal"] == "https://127.0.0.1:18443/portal/"


# -- organisations ---------------------------------------------------------------------------


def test_the_organisations_page_says_it_is_an_unauthenticated_sandbox(tmp_path, monkeypatch):
    empty = create_directory_app(DirectoryState.open(tmp_path / "directory")).test_client()
    response = get(empty, "/portal/")
    assert "No organisation yet" in text(response)
    assert "listens on loopback only and has no authentication" in text(response)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'nonce-" in policy and "frame-ancestors 'none'" in policy


def test_create_an_organisation(client, state):
    response = post(client, "/portal/organisations", {"org_name": "  Acme Payments  "})
    assert response.status_code == 303
    org_id = response.headers["Location"].split("/")[3]
    assert response.headers["Location"] == f"/portal/organisations/{org_id}/software/new"
    organisation = state.organisation(org_id)
    assert (organisation["org_name"], organisation["org_status"]) == ("Acme Payments", "Active")
    page = text(get(client, response.headers["Location"]))
    assert f"Organisation Acme Payments created: {org_id}." in page
    listed = text(get(client, "/portal/"))
    assert f"Acme Payments {org_id} Active" in listed


@pytest.mark.parametrize("name", ["", "   "])
def test_an_organisation_without_a_name_is_refused(client, state, name):
    before = snapshot(state)
    response = post(client, "/portal/organisations", {"org_name": name})
    assert response.status_code == 400
    assert "org_name is required." in text(response)
    assert 'id="org_name"' in response.get_data(as_text=True)  # the form, again
    assert snapshot(state) == before


# -- software statements ---------------------------------------------------------------------


def test_create_a_software_statement(client, state):
    org_id = new_organisation(client)
    response = post(
        client,
        f"/portal/organisations/{org_id}/software",
        {
            "client_name": "Budget Helper",
            "description": "reads balances",
            "roles": ["AISP", "CBPII"],
            "redirect_uris": " https://tpp.example.com/cb \r\n\r\nhttps://tpp.example.com/other\n",
        },
    )
    assert response.status_code == 303
    software_id = response.headers["Location"].rsplit("/", 1)[1]
    assert response.headers["Location"] == f"/portal/software/{software_id}"
    software = state.software(software_id)
    assert software["org_id"] == org_id
    assert software["roles"] == ["AISP", "CBPII"]
    assert software["redirect_uris"] == [
        "https://tpp.example.com/cb",
        "https://tpp.example.com/other",
    ]
    assert software["description"] == "reads balances"
    listed = text(get(client, "/portal/"))
    assert f"Budget Helper {software_id} · AISP, CBPII · no certificates yet" in listed


def test_the_new_software_form(client):
    org_id = new_organisation(client, "Form Org")
    page = get(client, f"/portal/organisations/{org_id}/software/new").get_data(as_text=True)
    for role in ("AISP", "PISP", "CBPII"):
        assert f'name="roles" value="{role}"' in page
    assert "ASPSP" not in page
    assert 'name="redirect_uris"' in page and "Form Org" in page


@pytest.mark.parametrize(
    ("fields", "api_body"),
    [
        ({"roles": []}, {"roles": []}),
        ({"roles": ["AISP", "BANK"]}, {"roles": ["AISP", "BANK"]}),
        (
            {"redirect_uris": "http://tpp.example.com/cb"},
            {"redirect_uris": ["http://tpp.example.com/cb"]},
        ),
        (
            {"redirect_uris": "https://tpp.example.com/cb\nftp://x.example/cb"},
            {"redirect_uris": ["https://tpp.example.com/cb", "ftp://x.example/cb"]},
        ),
        ({"redirect_uris": "https:///no-host"}, {"redirect_uris": ["https:///no-host"]}),
        ({"redirect_uris": " \n "}, {"redirect_uris": []}),
        ({"client_name": " "}, {"client_name": " "}),
    ],
)
def test_a_bad_software_statement_is_refused_as_the_api_refuses_it(client, state, fields, api_body):
    org_id = new_organisation(client)
    before = snapshot(state)
    form = {
        "client_name": "Keep me",
        "roles": ["AISP"],
        "redirect_uris": "https://tpp.example.com/cb",
        **fields,
    }
    response = post(client, f"/portal/organisations/{org_id}/software", form)
    assert response.status_code == 400
    assert snapshot(state) == before
    api = {"client_name": "Keep me", "roles": ["AISP"], "redirect_uris": ["https://a.test/cb"]}
    api.update(api_body)
    refused = client.post(f"/api/organisations/{org_id}/software", json=api, base_url=BASE)
    assert refused.status_code == 400
    assert refused.get_json()["error_description"] in text(response)
    assert snapshot(state) == before
    # the form comes back with what was typed
    page = response.get_data(as_text=True)
    assert f'value="{html.escape(form["client_name"])}"' in page


def test_software_of_an_unknown_organisation_is_a_404_page(client, state):
    before = snapshot(state)
    get(client, "/portal/organisations/nope/software/new", 404)
    response = post(
        client,
        "/portal/organisations/nope/software",
        {"client_name": "X", "roles": ["AISP"], "redirect_uris": "https://a.example/cb"},
    )
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "no organisation nope." in text(response)
    assert snapshot(state) == before


def test_unknown_pages_are_404_pages(client):
    for path in ("/portal/software/nope", "/portal/nothing/here", "/portal/software/nope/ssa"):
        response = get(client, path, 404)
        assert response.mimetype == "text/html", path
        assert "Sandbox Open Banking Directory" in text(response)


# -- the software page: certificates ---------------------------------------------------------


def test_the_software_page(client, software):
    sid, org = software["software_id"], software["org_id"]
    response = get(client, f"/portal/software/{sid}")
    page = text(response)
    assert f"software_id {sid}" in page
    assert "Roles AISP, PISP" in page
    assert "https://tpp.example.com/cb https://tpp.example.com/cb2" in page
    assert "No certificate yet" in page
    body = response.get_data(as_text=True)
    assert f'href="/{org}/{sid}.jwks"' in body
    assert f'href="/{org}/revoked/{sid}.jwks"' in body
    assert f'href="/portal/software/{sid}/ssa"' in body
    assert f"CN={sid}, OU={org}, O=OpenBanking, C=GB" in page


def test_paste_a_transport_csr_and_choose_a_signing_csr_file(client, state, software):
    sid, org = software["software_id"], software["org_id"]
    response = upload(client, sid, "transport", csr_pem(sid, org))
    assert response.status_code == 303
    assert response.headers["Location"] == f"/portal/software/{sid}#certificates"
    response = upload(
        client,
        sid,
        "signing",
        csr_file=(io.BytesIO(csr_pem(sid, org).encode()), "signing.csr"),
    )
    assert response.status_code == 303
    transport, signing = state.software(sid)["certificates"]
    assert (transport["type"], signing["type"]) == ("transport", "signing")
    page = get(client, f"/portal/software/{sid}")
    shown = text(page)
    assert f"Signing certificate issued: kid {signing['kid']}." in shown
    for record in (transport, signing):
        row = f"{record['kid']} {record['type']} {record['subject']} {record['serial_number']}"
        assert f"{row} {record['not_after']} active OCSP: good CRL: not listed" in shown
        download = get(client, f"/api/software/{sid}/certificates/{record['kid']}.pem")
        assert download.get_data(as_text=True) == record["pem"]
        assert f'href="/api/software/{sid}/certificates/{record["kid"]}.pem"' in page.get_data(
            as_text=True
        )
    assert "transport active, signing active" in text(get(client, "/portal/"))


def test_an_eidas_transport_certificate(client, state, software):
    sid, org = software["software_id"], software["org_id"]
    response = upload(client, sid, "transport", csr_pem(sid, org), eidas="1")
    assert response.status_code == 303
    (record,) = state.software(sid)["certificates"]
    assert record["profile"] == "eidas"
    assert "organizationIdentifier=PSDGB-OB-" in record["subject"]


@pytest.mark.parametrize(
    ("cert_type", "pem", "file", "message"),
    [
        ("transport", "", None, "Paste a CSR (PEM) or choose a CSR file."),
        ("transport", "hello", None, "the body is not a PEM or DER CSR."),
        ("signing", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", None, "not a PEM or DER CSR"),
        ("transport", "OTHER", None, "the CSR subject must be CN="),
        ("transport", "GOOD", "GOOD", "Paste the CSR or choose a file, not both."),
        ("transport", "", "garbage", "the body is not a PEM or DER CSR."),
        ("signing", "WEAK", None, "RSA keys must be 2048 bits or more."),
        ("bogus", "GOOD", None, "certificate type must be 'transport' or 'signing'."),
    ],
)
def test_a_bad_csr_is_refused_and_nothing_issued(
    client, state, software, cert_type, pem, file, message
):
    from cryptography.hazmat.primitives.asymmetric import rsa

    sid, org = software["software_id"], software["org_id"]
    made = {
        "GOOD": csr_pem(sid, org),
        "OTHER": csr_pem("someone-else", org),
        "WEAK": csr_pem(sid, org, rsa.generate_private_key(public_exponent=65537, key_size=1024)),
    }
    fields = {}
    if file is not None:
        fields["csr_file"] = (io.BytesIO(made.get(file, file).encode()), "x.csr")
    before = snapshot(state)
    issued = set(state.sandbox.issuing_ca.issued)
    response = upload(client, sid, cert_type, made.get(pem, pem), **fields)
    assert response.status_code == 400
    assert message in text(response)
    assert snapshot(state) == before
    assert state.software(sid)["certificates"] == []
    assert state.sandbox.issuing_ca.issued == issued
    # the pasted text is kept in its form
    if pem and cert_type in ("transport", "signing"):
        assert html.escape(made.get(pem, pem).strip()) in response.get_data(as_text=True)


def test_a_csr_over_the_size_limit_is_a_413_page(client, state, software):
    before = snapshot(state)
    response = upload(client, software["software_id"], "transport", "A" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.mimetype == "text/html"
    assert snapshot(state) == before


# -- revocation ------------------------------------------------------------------------------


def issued(client, state, software) -> dict:
    sid, org = software["software_id"], software["org_id"]
    assert upload(client, sid, "transport", csr_pem(sid, org)).status_code == 303
    return state.software(sid)["certificates"][-1]


def test_revoke_a_certificate_after_confirming(client, state, software):
    sid, org = software["software_id"], software["org_id"]
    record = issued(client, state, software)
    page = get(client, f"/portal/software/{sid}")
    assert f'href="/portal/software/{sid}/certificates/{record["kid"]}/revoke"' in page.get_data(
        as_text=True
    )
    confirm = get(client, f"/portal/software/{sid}/certificates/{record['kid']}/revoke")
    body = confirm.get_data(as_text=True)
    for reason in ("unspecified", "keyCompromise", "superseded", "cessationOfOperation"):
        assert f'value="{reason}"' in body
    assert state.certificate(sid, record["kid"])["status"] == "active"  # not yet

    response = post(
        client,
        f"/portal/software/{sid}/certificates/{record['kid']}/revoke",
        {"reason": "keyCompromise"},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == f"/portal/software/{sid}#certificates"
    revoked = state.certificate(sid, record["kid"])
    assert (revoked["status"], revoked["revocation_reason"]) == ("revoked", "keyCompromise")
    shown = text(get(client, f"/portal/software/{sid}"))
    assert f"Certificate {record['kid']} revoked (keyCompromise)." in shown
    assert "revoked keyCompromise OCSP: revoked since" in shown
    assert "(keyCompromise) CRL: listed" in shown
    keys = get(client, f"/{org}/revoked/{sid}.jwks").get_json()["keys"]
    assert [k["kid"] for k in keys] == [record["kid"]]
    assert "Revoke…" not in shown  # nothing left to revoke


@pytest.mark.parametrize("reason", ["", "becauseISaidSo"])
def test_a_revocation_with_a_bad_reason_is_refused(client, state, software, reason):
    record = issued(client, state, software)
    sid = software["software_id"]
    before = snapshot(state)
    revoked = dict(state.sandbox.issuing_ca.revoked)
    response = post(
        client, f"/portal/software/{sid}/certificates/{record['kid']}/revoke", {"reason": reason}
    )
    assert response.status_code == 400
    assert "reason must be one of" in text(response)
    assert snapshot(state) == before
    assert state.certificate(sid, record["kid"])["status"] == "active"
    assert state.sandbox.issuing_ca.revoked == revoked


def test_revoking_an_unknown_certificate_is_a_404_page(client, state, software):
    before = snapshot(state)
    sid = software["software_id"]
    get(client, f"/portal/software/{sid}/certificates/nope/revoke", 404)
    response = post(
        client, f"/portal/software/{sid}/certificates/nope/revoke", {"reason": "unspecified"}
    )
    assert response.status_code == 404
    assert f"no certificate nope for software {sid}." in text(response)
    assert snapshot(state) == before


# -- the SSA -----------------------------------------------------------------------------------


def test_generate_an_ssa(client, state, software):
    sid = software["software_id"]
    response = get(client, f"/portal/software/{sid}/ssa")
    body = response.get_data(as_text=True)
    token = html.unescape(
        re.search(r'<textarea id="ssa" readonly[^>]*>([^<]+)</textarea>', body)[1]
    )
    verified = jws.JWS()
    verified.deserialize(token.strip())
    verified.verify(jwk.JWKSet.from_json(json.dumps(state.sandbox.jwks())))
    claims = json.loads(verified.payload)
    assert claims["software_id"] == sid
    assert claims["software_roles"] == ["AISP", "PISP"]
    shown_claims = json.loads(
        html.unescape(re.search(r'id="ssa-claims">(.*?)</pre>', body, re.S)[1])
    )
    assert shown_claims == claims
    header = json.loads(html.unescape(re.search(r'id="ssa-header">(.*?)</pre>', body, re.S)[1]))
    assert header["alg"] == "PS256"
    # the Copy button's script runs under the page's nonce, and the button waits for it
    nonce = re.search(r"script-src 'nonce-([^']+)'", response.headers["Content-Security-Policy"])
    assert f'<script nonce="{nonce[1]}">' in body
    assert '<button type="button" id="copy" hidden>' in body


# -- CSRF --------------------------------------------------------------------------------------


def forms(client, state):
    """Every form of the portal: (path, fields), on a software with an issued certificate."""
    org_id = new_organisation(client)
    sid = new_software(client, org_id)
    software = state.software(sid)
    record = issued(client, state, software)
    return [
        ("/portal/organisations", {"org_name": "Nope Ltd"}),
        (
            f"/portal/organisations/{org_id}/software",
            {"client_name": "Nope", "roles": ["AISP"], "redirect_uris": "https://n.example/cb"},
        ),
        (
            f"/portal/software/{sid}/certificates",
            {"cert_type": "signing", "csr": csr_pem(sid, org_id)},
        ),
        (f"/portal/software/{sid}/certificates/{record['kid']}/revoke", {"reason": "superseded"}),
    ]


@pytest.mark.parametrize("csrf", [None, "", "wrong-token"])
def test_every_form_refuses_a_missing_or_wrong_csrf_token(client, state, csrf):
    for path, fields in forms(client, state):
        before = snapshot(state)
        revoked = dict(state.sandbox.issuing_ca.revoked)
        response = post(client, path, fields, csrf=csrf)
        assert response.status_code == 400, path
        assert "CSRF token is missing or wrong" in text(response), path
        assert snapshot(state) == before, path
        assert state.sandbox.issuing_ca.revoked == revoked, path


def test_a_token_of_another_session_is_refused(app, state):
    first, second = app.test_client(), app.test_client()
    token = token_of(first)
    token_of(second)  # the second browser has a session (and a token) of its own
    before = snapshot(state)
    response = post(second, "/portal/organisations", {"org_name": "Cross"}, csrf=token)
    assert response.status_code == 400
    assert snapshot(state) == before


def test_the_session_cookie_is_the_portals_own_and_secure(client):
    token_of(client)
    cookie = client.get_cookie(SESSION_COOKIE, domain="127.0.0.1")
    assert cookie is not None
    assert cookie.secure and cookie.http_only and cookie.same_site == "Lax"


def test_the_secret_key_is_kept_owner_only_in_the_state_folder(state, tmp_path):
    first = create_directory_app(state)
    path = state.folder / PORTAL_SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = create_directory_app(DirectoryState.open(state.folder))
    assert first.secret_key == again.secret_key  # a restart keeps the open forms valid
    other = create_directory_app(DirectoryState.open(tmp_path / "other"))
    assert other.secret_key != first.secret_key


# -- escaping ----------------------------------------------------------------------------------


def test_a_hostile_name_is_escaped_everywhere(client, state):
    org_id = new_organisation(client, HOSTILE)
    sid = new_software(
        client,
        org_id,
        client_name=HOSTILE,
        description=HOSTILE,
        redirect_uris='https://tpp.example.com/cb?"><script>alert(1)</script>',
    )
    record = issued(client, state, state.software(sid))
    pages = [
        "/portal/",
        f"/portal/organisations/{org_id}/software/new",
        f"/portal/software/{sid}",
        f"/portal/software/{sid}/ssa",
        f"/portal/software/{sid}/certificates/{record['kid']}/revoke",
    ]
    for path in pages:
        body = get(client, path).get_data(as_text=True)
        assert "<script>alert" not in body, path
        assert "&lt;script&gt;alert(" in body, path
    # and in a re-rendered form
    response = post(
        client,
        f"/portal/organisations/{org_id}/software",
        {"client_name": HOSTILE, "roles": [], "redirect_uris": "https://a.example/cb"},
    )
    assert response.status_code == 400
    assert "<script>alert" not in response.get_data(as_text=True)


# -- the TPP's next commands, and the presenter's path to a registration ----------------------


def commands(response) -> list[str]:
    """The command lines of the software page's "next commands", as shown."""
    body = response.get_data(as_text=True)
    listed = re.search(r'<ol class="commands" id="commands">(.*?)</ol>', body, re.S)
    assert listed is not None
    return [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", listed[1])]


def tpp(line: str) -> str:
    """Run a command line shown by the portal, as pasted into a shell in the checkout."""
    argv = shlex.split(line)
    assert argv[0] == ".venv/bin/obdcr-tpp", line  # as make serve prints it
    assert (REPO / argv[0]).exists()
    result = CliRunner().invoke(tpp_cli, argv[1:])
    assert result.exit_code == 0, f"{line}\n{result.output}"
    return result.output


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with Sandbox(tmp_path_factory.mktemp("workshop"), mode="thread") as running:
        yield running


@pytest.fixture
def fresh_tpp_folder(sandbox):
    """The sandbox's TPP folder emptied, as before a new presenter's run."""
    import shutil

    shutil.rmtree(sandbox.tpp_folder, ignore_errors=True)
    yield sandbox.tpp_folder
    shutil.rmtree(sandbox.tpp_folder, ignore_errors=True)


def portal_of(sandbox):
    """The portal of the sandbox's running Directory (the same state, through the test client)."""
    return create_directory_app(sandbox.directory_state).test_client()


def onboard_in_the_portal(portal) -> tuple[str, str, list[str]]:
    org_id = new_organisation(portal, "Presenter Ltd")
    sid = new_software(portal, org_id, client_name="Workshop App", roles=["AISP"])
    return org_id, sid, commands(get(portal, f"/portal/software/{sid}"))


def test_the_next_commands_are_the_command_lines_own(sandbox, fresh_tpp_folder):
    portal = portal_of(sandbox)
    org_id, sid, lines = onboard_in_the_portal(portal)
    typed = f".venv/bin/obdcr-tpp --workdir {sandbox.tpp_folder}"
    page = get(portal, f"/portal/software/{sid}").get_data(as_text=True)
    assert shown(page, "commands-folder") == str(REPO)  # where they are typed
    assert lines[0] == (
        f"{typed} init --org-id {org_id} --software-id {sid}"
        f" --directory {sandbox.directory_url} --bank {sandbox.bank_url}"
    )
    assert lines[1] == f"{typed} keys"
    assert lines[2:5] == [
        f"cat {sandbox.tpp_folder}/transport.csr",
        f"cat {sandbox.tpp_folder}/signing.csr",
        f"{typed} upload-csr",
    ]
    assert lines[5:] == [
        f"{typed} download",
        f"{typed} ssa",
        f"{sandbox.tpp_folder}/ssa.jwt",
        f"{typed} request",
        f"{typed} register --brief",
        f"{typed} status",
    ]


def test_the_presenters_path_with_upload_csr_and_the_portals_ssa(sandbox, fresh_tpp_folder):
    portal = portal_of(sandbox)
    org_id, sid, shown = onboard_in_the_portal(portal)
    workdir = sandbox.tpp_folder
    init, keys, _cat_transport, _cat_signing, upload_csr, download, _ssa, ssa_file = shown[:8]
    request, register = shown[8], shown[9]
    tpp(init)
    assert json.loads((workdir / "tpp.json").read_text())["software_id"] == sid
    tpp(keys)
    tpp(upload_csr)
    tpp(download)
    page = text(get(portal, f"/portal/software/{sid}"))
    assert page.count("active OCSP: good CRL: not listed") == 2
    # the SSA generated in the portal, saved where the command line keeps it
    body = get(portal, f"/portal/software/{sid}/ssa").get_data(as_text=True)
    token = html.unescape(
        re.search(r'<textarea id="ssa" readonly[^>]*>([^<]+)</textarea>', body)[1]
    )
    Path(ssa_file).write_text(token.strip() + "\n")
    tpp(request)
    output = tpp(register)
    assert "HTTP 201" in output
    registration = json.loads((workdir / "registration.json").read_text())
    assert registration["software_id"] == sid
    assert sandbox.bank_app.extensions["obdcr"].store.get(registration["client_id"]) is not None


def test_the_presenters_path_with_the_csrs_pasted_into_the_portal(sandbox, fresh_tpp_folder):
    portal = portal_of(sandbox)
    org_id, sid, shown = onboard_in_the_portal(portal)
    init, keys = shown[0], shown[1]
    download, ssa, request, register = shown[5], shown[6], shown[8], shown[9]
    tpp(init)
    tpp(keys)
    for cert_type in ("transport", "signing"):
        pem = (fresh_tpp_folder / f"{cert_type}.csr").read_text()
        assert upload(portal, sid, cert_type, pem).status_code == 303
    assert len(sandbox.directory_state.software(sid)["certificates"]) == 2
    # download finds the certificates issued for the pasted CSRs at the Directory
    assert "transport.pem" in tpp(download)
    tpp(ssa)
    tpp(request)
    assert "HTTP 201" in tpp(register)


def test_a_tpp_folder_of_other_software_is_left_alone(sandbox, fresh_tpp_folder):
    portal = portal_of(sandbox)
    _org, first, shown = onboard_in_the_portal(portal)
    tpp(shown[0])  # the folder now belongs to the first software
    _org, second, shown = onboard_in_the_portal(portal)
    other = fresh_tpp_folder.parent / f"tpp-{second}"
    assert shown[0].startswith(f".venv/bin/obdcr-tpp --workdir {other} init ")
    page = text(get(portal, f"/portal/software/{second}"))
    assert f"{fresh_tpp_folder} already holds software {first}" in page


# -- the logo the Directory draws for software without one --------------------------------------


def unverified_claims(token: str) -> dict:
    from flask_obdcr.jose import peek

    return peek(token)[1]


def test_a_software_without_a_logo_gets_one_drawn_by_the_directory(client, state):
    org_id = new_organisation(client)
    software_id = new_software(client, org_id, client_name=f"Budget {HOSTILE}")
    claims = unverified_claims(state.ssa(software_id))
    logo = claims["software_logo_uri"]
    assert logo == f"https://127.0.0.1:18443/logos/{software_id}.svg"
    response = get(client, f"/logos/{software_id}.svg")
    assert response.mimetype == "image/svg+xml"
    assert response.headers["Content-Security-Policy"] == "default-src 'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    svg = response.get_data(as_text=True)
    assert "<script" not in svg and "&lt;script&gt;" in svg  # the name escaped as XML
    assert ">B</text>" in svg  # the initials of the words that start with a letter or digit
    missing = client.get("/logos/nope.svg", base_url=BASE)
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"


def test_a_software_with_its_own_logo_keeps_it(state):
    org_id = state.add_organisation("Logo Ltd")["org_id"]
    software = state.add_software(
        org_id,
        client_name="Has A Logo",
        roles=["AISP"],
        redirect_uris=["https://tpp.example.com/cb"],
        logo_uri="https://tpp.example.com/logo.png",
    )
    claims = unverified_claims(state.ssa(software["software_id"]))
    assert claims["software_logo_uri"] == "https://tpp.example.com/logo.png"


def test_the_new_software_form_offers_the_tpps_own_page_as_redirect_uri(client):
    from example_app.tpp import DEFAULT_REDIRECT_URI

    org_id = new_organisation(client)
    page = get(client, f"/portal/organisations/{org_id}/software/new").get_data(as_text=True)
    assert shown(page, "redirect_uris").strip() == DEFAULT_REDIRECT_URI
