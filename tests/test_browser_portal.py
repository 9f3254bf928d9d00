"""The sandbox Directory's portal in a real browser (Chromium over HTTPS on loopback): from an
empty Directory, an organisation, a software statement, both CSRs (one pasted, one chosen as a
file), the certificates, the SSA with its decoded claims, and a revocation. Every page is kept
as a screenshot, ``build/screenshots/portal-*.png``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from example_app.directory import DirectoryState, create_directory_app
from example_app.serving import tls_context
from flask_obdcr.testing.loopback import LoopbackServer
from flask_obdcr.testing.pki import generate_key, ob_subject


@pytest.fixture
def directory(tmp_path) -> Iterator[tuple[str, DirectoryState]]:
    """An empty Directory served over HTTPS on loopback: its URL and its state."""
    state = DirectoryState.open(tmp_path / "directory")
    cert, key = state.issue_server_certificate(state.folder / "tls")
    server = LoopbackServer(None, ssl_context=tls_context(cert, key), quiet=True)
    server.app = create_directory_app(state, base_url=server.url)
    with server:
        yield server.url, state


def csr_pem(software_id: str, org_id: str) -> str:
    """A CSR as ``obdcr-tpp keys`` makes it (RSA 2048, the OB subject)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(ob_subject(software_id, org_id))
        .sign(generate_key("RSA"), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_a_tpp_onboards_in_the_portal(browser, directory, tmp_path):
    url, state = directory
    browser.get(url + "/")  # a browser asking for the index lands in the portal
    browser.wait_for_url("/portal/")
    assert "No organisation yet" in browser.text("main")
    assert "no authentication" in browser.text("footer")

    browser.fill("#org_name", "Acme <Payments> Ltd")
    browser.click("form button[type=submit]")
    browser.wait_for_url("/software/new")
    assert "Organisation Acme <Payments> Ltd created" in browser.text(".flash")
    (organisation,) = state.organisations()
    org_id = organisation["org_id"]

    browser.fill("#client_name", "Budget Helper")
    browser.click("#role-PISP")  # AISP is ticked already
    browser.fill("#redirect_uris", "https://tpp.example.com/cb\nhttps://tpp.example.com/cb2")
    browser.screenshot("portal-02-new-software")
    browser.click("form button[type=submit]")
    browser.wait_for_url("/portal/software/")
    software_id = browser.url.rsplit("/", 1)[1].split("#")[0]
    software = state.software(software_id)
    assert software["roles"] == ["AISP", "PISP"]
    assert software["redirect_uris"] == [
        "https://tpp.example.com/cb",
        "https://tpp.example.com/cb2",
    ]
    assert "No certificate yet" in browser.text("main")
    assert f"--software-id {software_id}" in browser.text("#commands")
    browser.screenshot("portal-03-software")

    # the transport CSR pasted, the signing CSR chosen as a file
    browser.find("#csr-transport").send_keys(csr_pem(software_id, org_id))
    browser.click("#upload-transport button[type=submit]")
    assert "Transport certificate issued" in browser.wait_for_text(
        ".flash", "Transport certificate issued"
    )
    signing_csr = tmp_path / "signing.csr"
    signing_csr.write_text(csr_pem(software_id, org_id))
    browser.find("#csr-file-signing").send_keys(str(signing_csr))
    browser.click("#upload-signing button[type=submit]")
    assert "Signing certificate issued" in browser.wait_for_text(
        ".flash", "Signing certificate issued"
    )
    rows = browser.find_all("#certificate-list tbody tr")
    assert len(rows) == 2
    for row, record in zip(rows, state.software(software_id)["certificates"], strict=True):
        assert record["kid"] in row.text
        assert "active" in row.text
        assert "OCSP: good" in row.text and "CRL: not listed" in row.text
    browser.screenshot("portal-04-certificates")

    browser.get(url + "/portal/")
    listed = browser.text("#organisations")
    assert "Acme <Payments> Ltd" in listed and org_id in listed
    assert "Budget Helper" in listed and "transport active, signing active" in listed
    browser.screenshot("portal-01-organisations")

    browser.click(".software-row a")
    browser.wait_for("#generate-ssa").click()
    browser.wait_for("#ssa-claims")
    claims = json.loads(browser.text("#ssa-claims"))
    assert claims["software_id"] == software_id
    assert claims["org_id"] == org_id
    assert claims["software_roles"] == ["AISP", "PISP"]
    assert json.loads(browser.text("#ssa-header"))["alg"] == "PS256"
    token = browser.find("#ssa").get_attribute("value")
    assert token.count(".") == 2
    assert browser.find("#copy").is_displayed()  # the script ran under the page's nonce
    browser.screenshot("portal-05-ssa")

    browser.get(f"{url}/portal/software/{software_id}")
    browser.click("#certificate-list tbody tr a.revoke")
    browser.wait_for("#reason")
    browser.find("#reason option[value=keyCompromise]").click()
    browser.screenshot("portal-06-revoke")
    browser.click("form button.danger")
    assert "revoked (keyCompromise)" in browser.wait_for_text(".flash", "revoked (keyCompromise)")
    first = browser.find_all("#certificate-list tbody tr")[0].text
    assert "OCSP: revoked" in first and "CRL: listed" in first
    browser.screenshot("portal-07-revoked")


def test_a_refused_form_in_the_browser(browser, directory):
    url, state = directory
    browser.get(url + "/portal/")
    browser.fill("#org_name", "Refusals Ltd")
    browser.click("form button[type=submit]")
    browser.wait_for_url("/software/new")
    browser.fill("#client_name", "Insecure App")
    browser.fill("#redirect_uris", "http://tpp.example.com/cb")
    browser.click("form button[type=submit]")
    browser.wait_for(".error")
    assert "redirect_uris must be a non-empty list of https URLs." in browser.text(".error")
    assert browser.find("#client_name").get_attribute("value") == "Insecure App"
    assert all(not state.software_of(o["org_id"]) for o in state.organisations())
    browser.screenshot("portal-08-refused")
