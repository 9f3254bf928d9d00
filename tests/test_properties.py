"""Property tests of POST /register: whatever arrives, the answer is well formed.

For every input drawn here:

* the status is never 5xx (the app runs with ``testing=True``, so an unhandled exception
  surfaces as itself, with its traceback, rather than as a 500);
* every non-201 answer is JSON ``{"error", "error_description"}`` with ``Cache-Control:
  no-store`` and an ``error`` from the error table (docs/architecture.md, "Contract: errors");
* nothing is stored unless the status is 201, and inputs that are pure noise or forged
  are never stored at all;
* a 201 is deserved: the stored client satisfies the rules of the error table (redirect
  URIs, scopes, algorithms, certificate, claims), checked by independent oracles here.

Runs are reproducible (``derandomize=True``, no example database). Set
``OBDCR_PROPERTY_EXAMPLES`` to run more examples per test locally (default 150).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import string
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from flask_obdcr.certificates import client_certificate_from_environ, dn_matches
from flask_obdcr.policies import MEDIA_TYPES, ROLE_SCOPES
from flask_obdcr.policies.client_metadata import APPLICATION_TYPES, GRANT_TYPES, RESPONSE_TYPES
from flask_obdcr.storage import MemoryStore, StoredClient
from flask_obdcr.testing import REMOVE, SandboxDirectory, Software, ob_subject

# mutated certificates may carry a zero or negative serial number, which cryptography loads
# with a deprecation warning (and will refuse outright in a future release)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)

ERRORS = frozenset(
    {
        "invalid_client",
        "invalid_client_metadata",
        "invalid_software_statement",
        "unapproved_software_statement",
        "invalid_redirect_uri",
        "temporarily_unavailable",
    }
)
EXAMPLES = int(os.environ.get("OBDCR_PROPERTY_EXAMPLES", "150"))
SKEW = 30
SIGNING_ALGS = ("PS256", "ES256")
AUTH_METHODS = ("tls_client_auth", "private_key_jwt", "client_secret_basic", "client_secret_post")


def profile(examples: int = EXAMPLES):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


def event(name: str) -> None:
    if currently_in_test_context():  # Bank.post is also used outside @given
        _event(name)


def b64url(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


# -- the bank under test -------------------------------------------------------------------


@dataclass
class Bank:
    """One app built per test function; ``post`` checks the universal properties."""

    app: Flask
    store: MemoryStore
    clock: Any
    outcomes: Counter = field(default_factory=Counter)

    def post(
        self,
        body: bytes | str,
        *,
        content_type: str | None = "application/jwt",
        environ: dict[str, str] | None = None,
        may_register: bool,
    ) -> tuple[int, dict[str, Any], StoredClient | None]:
        """POST, then assert the properties; returns (status, JSON body, stored client)."""
        # the sandbox stamps iat/exp with the wall clock: keep the bank's frozen clock with it
        self.clock.set(int(time.time()))
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        overrides = dict(environ or {})
        overrides["CONTENT_TYPE"] = content_type if content_type is not None else ""
        before = len(self.store)
        with self.app.test_client() as client:
            response = client.post("/register", data=body, environ_overrides=overrides)
        status = response.status_code
        shown = response.get_data(as_text=True)[:300]
        assert status < 500, f"{status}: {shown}"
        assert response.headers.get("Cache-Control") == "no-store", shown
        assert response.mimetype == "application/json", shown
        data = response.get_json(silent=True)
        assert isinstance(data, dict), shown
        if status == 201:
            assert may_register, f"registered from input that must never register: {shown}"
            assert len(self.store) == before + 1
            client_id = data.get("client_id")
            assert isinstance(client_id, str), shown
            stored = self.store.get(client_id)
            assert stored is not None
            self.outcomes["201"] += 1
            event("201")
            return status, data, stored
        assert set(data) == {"error", "error_description"}, shown
        assert isinstance(data["error"], str) and data["error"] in ERRORS, shown
        description = data["error_description"]
        assert isinstance(description, str) and 1 <= len(description) <= 500, shown
        assert len(self.store) == before, f"stored a client and answered {status}"
        if status == 503:
            assert response.headers.get("Retry-After", "").isdigit(), shown
        outcome = f"{status} {data['error']}"
        self.outcomes[outcome] += 1
        event(outcome)
        return status, data, None


@pytest.fixture
def bank(ob_app_factory, ob_clock):
    def make(**config: Any) -> Bank:
        store = MemoryStore()
        return Bank(ob_app_factory(store=store, **config), store, ob_clock)

    return make


# -- strategies ----------------------------------------------------------------------------

# JSON values, surrogates and astral characters included (json.dumps escapes them)
json_text = st.text(st.characters(exclude_categories=()), max_size=30)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=8,
)
# what a WSGI server can put in an environ string: latin-1 "native strings"
latin1_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=200)

CONTENT_TYPES = (
    "application/jwt",
    "application/jose",
    "application/json",
    "APPLICATION/JWT",
    "Application/Jose",
    "application/jwt; charset=utf-8",
    "application/json;charset=UTF-8",
    " application/jwt ",
    "application/jwt;",
    "application/jwt, application/json",
    "application/jwt\x00",
    "application/jwt+json",
    "application/jwk-set+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=xyz",
    "text/plain",
    "text/json",
    "*/*",
    "",
)
content_types = st.one_of(
    st.sampled_from(CONTENT_TYPES),
    latin1_text.map(lambda t: t[:60]),
    st.tuples(st.sampled_from(CONTENT_TYPES[:3]), latin1_text).map(lambda p: f"{p[0]};{p[1]}"),
    st.none(),
)


def timestamps(now_offsets=(-(10**6), 10**6)):
    """Seconds near the wall clock (drawn as offsets, stamped when drawn), and odd shapes."""
    lo, hi = now_offsets
    near = st.integers(lo, hi).map(lambda d: int(time.time()) + d)
    edges = st.sampled_from([-SKEW - 1, -SKEW, 0, SKEW, SKEW + 1, 86400, 86400 + SKEW + 1]).map(
        lambda d: int(time.time()) + d
    )
    return st.one_of(
        near,
        edges,
        near.map(float),
        near.map(lambda t: t + 0.5),
        near.map(str),
        st.integers(),
        st.sampled_from([0, -1, 2**63, 10**20, 1e300, True, False]),
    )


def loopback_like(host: str) -> bool:
    """An independent oracle: does this redirect URI host reach the user's own machine?"""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    addresses = []
    try:
        addresses.append(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        try:  # what getaddrinfo and the WHATWG URL parser accept: 127.1, 0x7f.1, 2130706433
            addresses.append(ipaddress.ip_address(socket.inet_aton(host)))
        except (OSError, ValueError):
            pass
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback or address.is_unspecified:
            return True
    return False


REDIRECT_URIS = (
    "https://tpp.example.com/cb",
    "https://tpp.example.com/cb2",
    "https://tpp.example.com/other",
    "http://tpp.example.com/cb",
    "HTTPS://tpp.example.com/cb",
    "https://TPP.example.com/cb",
    "https://tpp.example.com:443/cb",
    "https://tpp.example.com/cb?x=1",
    "https://tpp.example.com/cb#fragment",
    "https://tpp.example.com/cb#",
    "https://tpp.example.com/cb/../cb2",
    "https://user@tpp.example.com/cb",
    "https://tpp.example.com/cb\n",
    "https://[invalid/cb",
    "https:///cb",
    "https://localhost/cb",
    "https://LOCALHOST/cb",
    "https://localhost./cb",
    "https://app.localhost/cb",
    "https://127.0.0.1/cb",
    "https://127.1/cb",
    "https://2130706433/cb",
    "https://0x7f.0.0.1/cb",
    "https://0.0.0.0/cb",
    "https://[::1]/cb",
    "https://[::ffff:127.0.0.1]/cb",
    "https://[0:0:0:0:0:0:0:1]/cb",
    "https://tpp.example.com/" + "x" * 300,
    "javascript:alert(1)",
    "",
)


def redirect_uri_lists():
    return st.one_of(
        st.lists(st.sampled_from(REDIRECT_URIS), min_size=1, max_size=3),
        st.lists(json_text, max_size=3),
        json_values,
    )


def request_claim_values(name: str, software: Software, others: dict[str, Any], issuer: str):
    specific = {
        "iss": st.sampled_from([software.software_id, others["software_id"], "", issuer]),
        "aud": st.sampled_from(
            [issuer, [issuer], ["https://x.example", issuer], "https://x.example", [], [issuer, 1]]
        ),
        "exp": timestamps(),
        "iat": timestamps(),
        "jti": st.one_of(
            st.builds(lambda: str(uuid.uuid4())),
            st.sampled_from(["", " ", "\t", "x" * 256, "x" * 257]),
        ),
        "redirect_uris": redirect_uri_lists(),
        "token_endpoint_auth_method": st.sampled_from(
            [*AUTH_METHODS, "client_secret_jwt", "none", "", "TLS_CLIENT_AUTH", "self_signed_tls"]
        ),
        "grant_types": st.one_of(
            st.lists(
                st.sampled_from(
                    sorted(GRANT_TYPES) + ["password", "implicit", "urn:ietf:params:oauth"]
                ),
                max_size=4,
            ),
            st.sampled_from(["authorization_code", "client_credentials refresh_token"]),
        ),
        "response_types": st.one_of(
            st.lists(st.sampled_from(["code", "code id_token", "id_token code", "token"])),
            st.sampled_from(["code", "code id_token", ""]),
        ),
        "scope": st.one_of(
            st.lists(
                st.sampled_from(["openid", "accounts", "payments", "fundsconfirmations", "x"]),
                max_size=4,
            ).map(" ".join),
            st.sampled_from(["", " ", "openid\taccounts", "openid\u00a0accounts", "OPENID"]),
        ),
        "software_id": st.sampled_from([software.software_id, others["software_id"], ""]),
        "software_statement": st.sampled_from(
            [others["ssa"], others["foreign_ssa"], "a.b.c", "", others["ssa_none"]]
        ),
        "application_type": st.sampled_from([*APPLICATION_TYPES, "native", "", "WEB"]),
        "tls_client_auth_subject_dn": subject_dns(software),
        **{
            alg: st.sampled_from(["PS256", "ES256", "RS256", "none", "HS256", "ps256", ""])
            for alg in (
                "token_endpoint_auth_signing_alg",
                "id_token_signed_response_alg",
                "request_object_signing_alg",
            )
        },
    }.get(name)
    choices = [json_values, st.just(REMOVE)]
    if specific is not None:
        choices.insert(0, specific)
    return st.one_of(*choices)


def subject_dns(software: Software):
    sid, org = software.software_id, software.org_id
    return st.one_of(
        st.sampled_from(
            [
                software.subject_dn,
                f"CN={sid},OU={org},O=OpenBanking,C=GB",
                f"cn={sid}, ou={org}, o=OpenBanking, c=GB",
                f"C=GB, O=OpenBanking, OU={org}, CN={sid}",
                f"2.5.4.3={sid},2.5.4.11={org},2.5.4.10=OpenBanking,2.5.4.6=GB",
                f"OID.2.5.4.3={sid},OU={org},O=OpenBanking,C=GB",
                f'CN="{sid}",OU={org},O=OpenBanking,C=GB',
                f"CN=#0c{len(sid):02x}{sid.encode().hex()},OU={org},O=OpenBanking,C=GB",
                f"CN={sid}+OU={org},O=OpenBanking,C=GB",
                f"CN={sid},OU={org},O=OpenBanking,C=GB,L=London",
                f"CN={sid},OU={org},O=OpenBanking",
                f"CN=other,OU={org},O=OpenBanking,C=GB",
                f"CN={sid}\\,OU={org},O=OpenBanking,C=GB",
                f"CN={sid},OU={org},O=Open\\42anking,C=GB",
                f"CN={sid},OU={org},O=OpenBanking,C=GBR",
                "CN=#1e03ffff",
                "CN=#0c8100",
                "CN=\\",
                'CN="unterminated',
                "1.2=x",
                "99999999999999999999.1=x",
                "",
                "=",
                ",,,",
            ]
        ),
        json_text,
        st.text(st.sampled_from(string.printable + '\\"#+=,;<>'), max_size=60),
    )


def ssa_claim_values(name: str, software: Software, others: dict[str, Any]):
    base = software.directory.base_url
    specific = {
        "iss": st.sampled_from([software.directory.issuer, "Evil Ltd", "", "openbanking ltd"]),
        "iat": timestamps(),
        "exp": timestamps(),
        "software_id": st.sampled_from([software.software_id, others["software_id"], ""]),
        "org_id": st.sampled_from([software.org_id, others["org_id"], ""]),
        "org_status": st.sampled_from(
            ["Active", "active", "ACTIVE", "Active ", "Revoked", "Withdrawn", "", "Actíve"]
        ),
        "software_jwks_endpoint": st.sampled_from(
            [
                software.jwks_url,
                others["jwks_url"],
                software.jwks_url.replace("https:", "http:"),
                software.jwks_url.replace("https:", "HTTPS:"),
                software.jwks_url.replace("https://", "https://user@"),
                software.jwks_url + "#x",
                software.jwks_url + "?x=1",
                software.jwks_url.replace(
                    software.directory.host, software.directory.host + ":443"
                ),
                software.jwks_url.replace(software.directory.host, software.directory.host.upper()),
                software.jwks_url.replace(software.directory.host, software.directory.host + "."),
                f"{base}/../{software.org_id}/{software.software_id}.jwks",
                f"https://{software.directory.host}\\@evil.example/x.jwks",
                "https://attacker.example/x.jwks",
                "https://127.0.0.1/x.jwks",
                "file:///etc/passwd",
                "",
            ]
        ),
        "software_redirect_uris": redirect_uri_lists(),
        "software_roles": st.one_of(
            st.lists(st.sampled_from(["AISP", "PISP", "CBPII", "aisp", "ASPSP", ""]), max_size=4),
            st.sampled_from(["AISP", "AISP PISP"]),
        ),
        "organisation_competent_authority_claims": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "authority_id": st.sampled_from(["OBGBR", "FCAGBR", "OBXXX", "", "obgbr"]),
                    "registration_id": st.sampled_from(["Unknown0015800001041REAAY", "", " x"]),
                    "status": st.sampled_from(["Active", "Revoked"]),
                },
            ),
            st.lists(json_values, max_size=3),
        ),
    }.get(name)
    choices = [json_values, st.just(REMOVE)]
    if specific is not None:
        choices.insert(0, specific)
    return st.one_of(*choices)


REQUEST_CLAIMS = (
    "iss",
    "aud",
    "exp",
    "iat",
    "jti",
    "redirect_uris",
    "token_endpoint_auth_method",
    "grant_types",
    "response_types",
    "software_id",
    "scope",
    "software_statement",
    "application_type",
    "tls_client_auth_subject_dn",
    "token_endpoint_auth_signing_alg",
    "id_token_signed_response_alg",
    "request_object_signing_alg",
)
SSA_CLAIMS = (
    "iss",
    "iat",
    "exp",
    "software_id",
    "org_id",
    "org_status",
    "software_jwks_endpoint",
    "software_redirect_uris",
    "software_roles",
    "organisation_competent_authority_claims",
    "software_client_name",
    "org_name",
)
# names the sandbox's helpers take as parameters, not claims
RESERVED = frozenset({"key", "alg", "headers", "ssa", "aud", "software", "self", "claims"})
extra_claim_names = st.text(string.ascii_letters + "_#.", min_size=1, max_size=12).filter(
    lambda name: name not in RESERVED
)


@pytest.fixture(scope="module")
def others(ob_directory, ob_software):
    """Other software and statements to splice into requests (made once per module)."""
    other = ob_directory.register_software(roles=["CBPII"])
    foreign = SandboxDirectory(issuer="Foreign Directory")
    foreign_software = foreign.register_software(
        software_id=ob_software.software_id, org_id=ob_software.org_id
    )
    claims = ob_directory.ssa_claims(ob_software)
    return {
        "software": other,
        "software_id": other.software_id,
        "org_id": other.org_id,
        "jwks_url": other.jwks_url,
        "ssa": ob_directory.ssa(other),
        "foreign_ssa": foreign.ssa(foreign_software),
        "ssa_none": f"{b64url(json.dumps({'alg': 'none'}))}.{b64url(json.dumps(claims))}.",
    }


@pytest.fixture
def fetcher_with_others(ob_fetcher, ob_directory, others):
    ob_fetcher.documents.update(ob_directory.documents())
    return ob_fetcher


# -- 201 oracles ---------------------------------------------------------------------------


def assert_deserved(stored: StoredClient, *, software: Software, certificate: x509.Certificate):
    """What a stored client must satisfy, checked independently of the policies."""
    metadata, ssa = stored.metadata, stored.ssa_claims
    assert ssa.get("iss") == software.directory.issuer
    assert stored.software_id == ssa["software_id"] == software.software_id
    assert stored.org_id == ssa["org_id"]
    status = ssa.get("org_status")
    assert status is None or (isinstance(status, str) and status.lower() == "active")
    now = time.time()
    assert isinstance(ssa.get("iat"), int | float) and ssa["iat"] <= now + SKEW + 5
    if "exp" in ssa:
        assert isinstance(ssa["exp"], int | float) and ssa["exp"] >= now - SKEW - 5
    registered = ssa.get("software_redirect_uris")
    assert isinstance(registered, list | str)
    registered = [registered] if isinstance(registered, str) else registered
    uris = metadata["redirect_uris"]
    assert isinstance(uris, list) and uris
    for uri in uris:
        parts = urllib.parse.urlsplit(uri)
        assert uri in registered
        assert parts.scheme == "https" and parts.hostname
        assert not loopback_like(parts.hostname), f"loopback redirect URI registered: {uri!r}"
        assert not parts.fragment and "#" not in uri
    roles = ssa.get("software_roles")
    roles = {roles} if isinstance(roles, str) else set(roles or [])
    allowed = {"openid"} | {scope for scope, role in ROLE_SCOPES.items() if role in roles}
    assert set(metadata["scope"].split()) <= allowed, (metadata["scope"], roles)
    assert metadata["token_endpoint_auth_method"] in AUTH_METHODS
    assert set(metadata["grant_types"]) <= GRANT_TYPES
    assert set(metadata["response_types"]) <= set(RESPONSE_TYPES)
    assert metadata.get("application_type", "web") in APPLICATION_TYPES
    for name in (
        "token_endpoint_auth_signing_alg",
        "id_token_signed_response_alg",
        "request_object_signing_alg",
    ):
        assert metadata.get(name, "PS256") in SIGNING_ALGS
    if metadata["token_endpoint_auth_method"] == "tls_client_auth":
        assert dn_matches(metadata["tls_client_auth_subject_dn"], certificate.subject)
    if metadata["token_endpoint_auth_method"] == "private_key_jwt":
        assert metadata["token_endpoint_auth_signing_alg"] in SIGNING_ALGS


def assert_request_deserved(claims: dict[str, Any], software: Software, issuer: str):
    now = time.time()
    assert claims.get("iss") == software.software_id
    assert claims.get("software_id", software.software_id) == software.software_id
    aud = claims.get("aud")
    assert issuer in (aud if isinstance(aud, list) else [aud])
    for name in ("exp", "iat"):
        assert isinstance(claims.get(name), int | float) and not isinstance(claims[name], bool)
    assert claims["exp"] >= now - SKEW - 5 and claims["iat"] <= now + SKEW + 5
    assert claims["exp"] - now <= 86400 + 5
    assert isinstance(claims.get("jti"), str) and claims["jti"].strip()


# -- 1. noise ------------------------------------------------------------------------------


def test_random_bytes_are_refused(bank, ob_software):
    target = bank()

    @profile()
    @given(
        body=st.one_of(
            st.binary(max_size=2048),
            st.integers(65530, 65545).map(lambda n: b"a" * n),
            st.sampled_from([b"", b".", b"..", b"a.b.c", b"\x00" * 10, b"\xef\xbb\xbf"]),
        ),
        content_type=content_types,
        with_certificate=st.booleans(),
    )
    def run(body, content_type, with_certificate):
        environ = ob_software.environ() if with_certificate else {}
        target.post(body, content_type=content_type, environ=environ, may_register=False)

    run()
    assert len(target.store) == 0
    assert target.outcomes["415 invalid_client_metadata"] > 0
    assert target.outcomes["413 invalid_client_metadata"] > 0
    assert target.outcomes["400 invalid_client_metadata"] > 0


def test_random_text_is_refused(bank, ob_software):
    target = bank()

    @profile()
    @given(
        text=st.one_of(
            st.text(st.characters(exclude_categories=()), max_size=500),
            st.lists(st.text(string.ascii_letters + string.digits + "-_", max_size=40)).map(
                ".".join
            ),
        ),
        content_type=st.sampled_from(sorted(MEDIA_TYPES)),
        as_json_string=st.booleans(),
    )
    def run(text, content_type, as_json_string):
        body = json.dumps(text) if as_json_string else text
        target.post(
            body, content_type=content_type, environ=ob_software.environ(), may_register=False
        )

    run()
    assert len(target.store) == 0


def test_any_content_type(bank, ob_directory, ob_software, issuer):
    target = bank()

    @profile()
    @given(content_type=content_types)
    def run(content_type):
        token = ob_directory.registration_request(ob_software, aud=issuer)
        media = (content_type or "").split(";", 1)[0].strip().lower()
        body = json.dumps(token) if media == "application/json" else token
        status, _, _ = target.post(
            body, content_type=content_type, environ=ob_software.environ(), may_register=True
        )
        if status == 201:
            assert media in MEDIA_TYPES, content_type
        strict = (content_type or "").split(";", 1)[0].strip(" \t").lower()
        if strict in MEDIA_TYPES:
            assert status == 201, content_type
        else:
            assert status in (201, 415), content_type

    run()
    assert target.outcomes["201"] > 0 and target.outcomes["415 invalid_client_metadata"] > 0


# -- 2. mutated and forged JWTs ------------------------------------------------------------

B64URL = string.ascii_letters + string.digits + "-_"
ODD_CHARS = B64URL + ".=+/ \n\t\x00é"


def _index(data: st.DataObject, length: int) -> int:
    """A position in ``range(length)``, drawn independently of ``length``: fresh tokens differ
    from run to run and hypothesis needs the same choices to mean the same thing. Hypothesis
    favours small and boundary integers, so the draw is scattered (a bijection of 0..2**16-1)
    before it is scaled; shrinking still leads to position 0."""
    scattered = data.draw(st.integers(0, 2**16 - 1)) * 40503 % 2**16
    return scattered * max(length, 1) // 2**16


def _other_char(data: st.DataObject, old: str) -> str:
    new = data.draw(st.sampled_from(ODD_CHARS))
    return new if new != old else ODD_CHARS[(ODD_CHARS.index(new) + 1) % len(ODD_CHARS)]


def mutate(data: st.DataObject, token: str) -> str:
    parts = token.split(".")
    how = data.draw(st.sampled_from(["edit", "swap", "truncate", "dots", "whitespace"]))
    if how == "swap":
        parts[0], parts[1] = parts[1], parts[0]
        return ".".join(parts)
    if how == "truncate":
        return token[: _index(data, len(token))]
    if how == "dots":
        return data.draw(
            st.sampled_from(
                [
                    token + ".",
                    "." + token,
                    token.replace(".", "..", 1),
                    ".".join(parts[:2]),
                    ".".join([*parts, parts[2]]),
                    parts[0] + ".." + parts[2],
                ]
            )
        )
    if how == "whitespace":
        # leading/trailing whitespace is trimmed by the bank, so this may still register
        pad = data.draw(st.sampled_from([" ", "\n", "\r\n", "\t", "\x0b", "\x00"]))
        return data.draw(st.sampled_from([token + pad, pad + token, token[:5] + pad + token[5:]]))
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, 2))
        part = parts[index]
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        position = _index(data, len(part))
        if op == "delete" and part:
            part = part[:position] + part[position + 1 :]
        elif op == "insert":
            part = part[:position] + data.draw(st.sampled_from(ODD_CHARS)) + part[position:]
        elif part:
            part = part[:position] + _other_char(data, part[position]) + part[position + 1 :]
        parts[index] = part
    return ".".join(parts)


def test_mutated_jwts(bank, ob_directory, ob_software, ob_ec_software, issuer):
    target = bank()

    @profile()
    @given(
        data=st.data(),
        software=any_software(ob_software, ob_ec_software),
        method=st.sampled_from(AUTH_METHODS),
    )
    def run(data, software, method):
        token = ob_directory.registration_request(
            software, aud=issuer, token_endpoint_auth_method=method
        )
        mutated = mutate(data, token)
        status, _, stored = target.post(mutated, environ=software.environ(), may_register=True)
        if status == 201:
            # only encoding trivia may change: the signed header and claims are the original's
            header, payload, _ = mutated.strip().split(".")
            original = token.split(".")
            assert b64url_json(header) == b64url_json(original[0])
            assert b64url_json(payload) == b64url_json(original[1])
            assert_deserved(stored, software=software, certificate=software.transport_certificate)

    run()
    assert target.outcomes["400 invalid_client_metadata"] > 0


ALGS = ("none", "None", "HS256", "HS512", "PS256", "ES256", "RS256", "EdDSA", "ps256", "", "dir")
HEADER_NAMES = (
    "alg",
    "kid",
    "typ",
    "cty",
    "crit",
    "b64",
    "jku",
    "x5u",
    "jwk",
    "x5c",
    "x5t",
    "x5t#S256",
    "zip",
    "enc",
)


def random_header(data: st.DataObject, kids: list[str]) -> Any:
    if data.draw(st.integers(0, 9)) == 0:
        return data.draw(json_values)  # not even an object, sometimes
    header = data.draw(st.dictionaries(st.sampled_from(HEADER_NAMES) | json_text, json_values))
    alg = data.draw(st.sampled_from(ALGS) | json_values | st.just(REMOVE))
    if alg is not REMOVE:
        header["alg"] = alg
    kid = data.draw(st.sampled_from(kids) | json_values | st.just(REMOVE))
    if kid is not REMOVE:
        header["kid"] = kid
    return header


def random_payload(data: st.DataObject, base_claims: dict[str, Any]) -> Any:
    shape = data.draw(st.sampled_from(["claims", "claims+noise", "noise", "not-object"]))
    if shape == "not-object":
        return data.draw(json_values)
    payload = dict(base_claims) if shape.startswith("claims") else {}
    if shape != "claims":
        payload.update(
            data.draw(st.dictionaries(json_text | st.sampled_from(REQUEST_CLAIMS), json_values))
        )
    return payload


def sign_raw(signing_input: bytes, key, alg: str) -> bytes:
    private = key.get_op_key("sign")
    if alg == "PS256":
        return private.sign(
            signing_input,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
    r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def test_forged_jws_never_registers(bank, ob_directory, ob_software, issuer):
    """Random headers and payloads, algs incl. none/HS*, signatures that no software key made."""
    target = bank()
    public_pem = ob_software.signing_key.export_to_pem()
    kids = [ob_software.signing_key["kid"], ob_directory.ssa_key["kid"], "", "unknown"]

    @profile()
    @given(data=st.data())
    def run(data):
        claims = ob_directory.registration_claims(ob_software, aud=issuer)
        header = random_header(data, kids)
        payload = random_payload(data, claims)
        signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(payload))}"
        how = data.draw(st.sampled_from(["empty", "random", "hmac"]))
        if how == "empty":
            signature = b""
        elif how == "random":
            signature = data.draw(st.binary(min_size=1, max_size=300))
        else:  # the classic confusion: HMAC keyed with the public key, or an empty/guessed key
            secret = data.draw(st.sampled_from([public_pem, b"", b"secret"]) | st.binary())
            digest = data.draw(st.sampled_from([hashlib.sha256, hashlib.sha512]))
            signature = hmac.new(secret, signing_input.encode(), digest).digest()
        token = f"{signing_input}.{b64url(signature)}"
        target.post(token, environ=ob_software.environ(), may_register=False)

    run()
    assert len(target.store) == 0


def test_validly_signed_random_headers_and_payloads(
    bank, ob_directory, ob_software, ob_ec_software, issuer
):
    """Signed by the software's real key over a random header and payload: may register,
    but only when the header and claims deserve it."""
    target = bank()

    @profile()
    @given(data=st.data(), software=any_software(ob_software, ob_ec_software))
    def run(data, software):
        claims = ob_directory.registration_claims(software, aud=issuer)
        header = random_header(data, [software.signing_key["kid"], "unknown"])
        if isinstance(header, dict) and data.draw(st.booleans()):
            header["alg"] = software.signing_alg
        payload = random_payload(data, claims)
        signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(payload))}"
        signature = sign_raw(signing_input.encode(), software.signing_key, software.signing_alg)
        token = f"{signing_input}.{b64url(signature)}"
        status, _, stored = target.post(token, environ=software.environ(), may_register=True)
        if status == 201:
            assert header["alg"] == software.signing_alg
            assert not {"jku", "x5u", "jwk", "x5c"} & header.keys()
            assert set(header.get("crit", [])) <= {"b64"}
            assert_request_deserved(payload, software, issuer)
            assert_deserved(stored, software=software, certificate=software.transport_certificate)

    run()
    assert target.outcomes["201"] > 0


# -- 3. validly signed requests with random claims -----------------------------------------


def draw_overrides(data, names, values_for, *, max_size=4) -> dict[str, Any]:
    chosen = data.draw(
        st.lists(
            st.sampled_from(names) | extra_claim_names, min_size=1, max_size=max_size, unique=True
        )
    )
    return {name: data.draw(values_for(name), label=name) for name in chosen}


def any_software(*software):
    """A strategy over the given TPP software (RSA and EC keys)."""
    return st.sampled_from(list(software))


def assert_registered_and_refused(target, *, refusal_kinds: int) -> None:
    """The run produced registrations and at least ``refusal_kinds`` kinds of refusal: the
    drawn inputs reached both sides of the rules."""
    assert target.outcomes["201"] > 0
    assert len([o for o in target.outcomes if o != "201"]) >= refusal_kinds


def test_request_claim_overrides(
    bank, ob_directory, ob_software, ob_ec_software, issuer, others, fetcher_with_others
):
    target = bank()

    @profile()
    @given(
        data=st.data(),
        software=any_software(ob_software, ob_ec_software),
        method=st.sampled_from(AUTH_METHODS),
    )
    def run(data, software, method):
        overrides = draw_overrides(
            data, REQUEST_CLAIMS, lambda n: request_claim_values(n, software, others, issuer)
        )
        aud = overrides.pop("aud", issuer)
        overrides.setdefault("token_endpoint_auth_method", method)
        token = ob_directory.registration_request(software, aud=aud, **overrides)
        status, _, stored = target.post(token, environ=software.environ(), may_register=True)
        if status == 201:
            assert_request_deserved(b64url_json(token.split(".")[1]), software, issuer)
            assert_deserved(stored, software=software, certificate=software.transport_certificate)

    run()
    assert_registered_and_refused(target, refusal_kinds=3)


def test_software_statement_claim_overrides(
    bank, ob_directory, ob_software, ob_ec_software, issuer, others, fetcher_with_others
):
    target = bank()

    @profile()
    @given(
        data=st.data(),
        software=any_software(ob_software, ob_ec_software),
        method=st.sampled_from(AUTH_METHODS),
        pair_redirect_uris=st.booleans(),
    )
    def run(data, software, method, pair_redirect_uris):
        overrides = draw_overrides(
            data, SSA_CLAIMS, lambda n: ssa_claim_values(n, software, others)
        )
        request_overrides: dict[str, Any] = {}
        if pair_redirect_uris:
            # the SSA lists them and the request asks for them: only the URI rules decide
            uris = data.draw(st.lists(st.sampled_from(REDIRECT_URIS), min_size=1, max_size=2))
            overrides["software_redirect_uris"] = uris
            request_overrides["redirect_uris"] = uris
        ssa = ob_directory.ssa(software, **overrides)
        token = ob_directory.registration_request(
            software,
            aud=issuer,
            ssa=ssa,
            token_endpoint_auth_method=method,
            **request_overrides,
        )
        status, _, stored = target.post(token, environ=software.environ(), may_register=True)
        if status == 201:
            assert_deserved(stored, software=software, certificate=software.transport_certificate)

    run()
    assert_registered_and_refused(target, refusal_kinds=3)


REDIRECT_URI_TABLE = [
    *[
        pytest.param(uri, 201, id=uri[8:30] or uri)
        for uri in (
            "https://tpp.example.com/cb",
            "HTTPS://tpp.example.com/cb",
            "https://TPP.example.com/cb",
            "https://tpp.example.com:443/cb",
            "https://tpp.example.com/cb?x=1",
        )
    ],
    *[
        pytest.param(uri, 400, id=uri or "empty")
        for uri in (
            "http://tpp.example.com/cb",
            "https://tpp.example.com/cb#fragment",
            "https://[invalid/cb",
            "https:///cb",
            "javascript:alert(1)",
            "",
            "https://localhost/cb",
            "https://LOCALHOST/cb",
            "https://app.localhost/cb",
            "https://localhost./cb",
            "https://127.0.0.1/cb",
            "https://127.1/cb",
            "https://2130706433/cb",
            "https://0x7f.0.0.1/cb",
            "https://0/cb",
            "https://0.0.0.0/cb",
            "https://[::1]/cb",
            "https://[0:0:0:0:0:0:0:1]/cb",
            "https://[::ffff:127.0.0.1]/cb",
        )
    ],
]


@pytest.mark.parametrize("uri,status", REDIRECT_URI_TABLE)
def test_redirect_uri_rules_when_the_ssa_lists_the_uri(
    uri, status, bank, ob_directory, ob_software, issuer
):
    """The examples behind the redirect URI oracle, pinned: the SSA lists the URI and the
    request asks for it, so only the https / loopback / fragment rules decide."""
    target = bank()
    ssa = ob_directory.ssa(ob_software, software_redirect_uris=[uri])
    token = ob_directory.registration_request(ob_software, aud=issuer, ssa=ssa, redirect_uris=[uri])
    got, data, _ = target.post(token, environ=ob_software.environ(), may_register=status == 201)
    assert (got, data.get("error")) == (
        (201, None) if status == 201 else (400, "invalid_redirect_uri")
    )


# -- 4. client certificates ----------------------------------------------------------------


def _pem_of_der(der: bytes, *, line: int = 64, newline: str = "\n") -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + line] for i in range(0, len(body), line)]
    return newline.join(["-----BEGIN CERTIFICATE-----", *lines, "-----END CERTIFICATE-----", ""])


def _issue_odd(directory: SandboxDirectory, software: Software, kind: str) -> x509.Certificate:
    """A certificate with the software's OB subject that must never be accepted."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    ca = directory.issuing_ca
    key: Any = ec.generate_private_key(ec.SECP256R1())
    signer, issuer_name, algorithm = ca.key, ca.name, hashes.SHA256()
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=30)
    basic = x509.BasicConstraints(ca=False, path_length=None)
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    extra: list[tuple[x509.ExtensionType, bool]] = []
    if kind == "rsa-1024":
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    elif kind == "ec-p192":
        key = ec.generate_private_key(ec.SECP192R1())
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ca-true":
        basic = x509.BasicConstraints(ca=True, path_length=None)
    elif kind == "key-cert-sign":
        usage = x509.KeyUsage(True, False, False, False, False, True, False, False, False)
    elif kind == "eku-server-only":
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    elif kind == "eku-any-only":
        eku = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
    elif kind == "unknown-critical-extension":
        extra.append(
            (
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"
                ),
                True,
            )
        )
    elif kind == "forged-issuer":  # same issuer name, signed by a key the bank does not trust
        signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "expired":
        not_before = now - datetime.timedelta(days=30)
        not_after = now - datetime.timedelta(seconds=1)
    else:  # pragma: no cover
        raise ValueError(kind)
    builder = (
        x509.CertificateBuilder()
        .subject_name(ob_subject(software.software_id, software.org_id))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(basic, critical=True)
        .add_extension(usage, critical=True)
        .add_extension(eku, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, algorithm)


ODD_CERTIFICATES = (
    "rsa-1024",
    "ec-p192",
    "ed25519",
    "ca-true",
    "key-cert-sign",
    "eku-server-only",
    "eku-any-only",
    "unknown-critical-extension",
    "forged-issuer",
    "expired",
)


@pytest.fixture(scope="module")
def odd_certificates(ob_directory, ob_software) -> dict[str, x509.Certificate]:
    return {kind: _issue_odd(ob_directory, ob_software, kind) for kind in ODD_CERTIFICATES}


@pytest.mark.parametrize("kind", ODD_CERTIFICATES)
def test_flawed_certificates_are_refused(
    kind, odd_certificates, bank, ob_directory, ob_software, issuer
):
    target = bank()
    for method in ("tls_client_auth", "private_key_jwt"):
        token = ob_directory.registration_request(
            ob_software, aud=issuer, token_endpoint_auth_method=method
        )
        pem = odd_certificates[kind].public_bytes(serialization.Encoding.PEM).decode()
        status, data, _ = target.post(token, environ={"SSL_CLIENT_CERT": pem}, may_register=False)
        assert (status, data["error"]) == (401, "invalid_client")


def der_structure(der: bytes) -> list[tuple[int, int]]:
    """(tag offset, length offset) of every TLV of a DER document, nested ones included.

    Edits to tags and lengths reach the parsers: cryptography checks the outer structure and
    the version when it loads a certificate, and decodes names, the key and the extensions
    only when they are first used."""
    found: list[tuple[int, int]] = []

    def walk(start: int, end: int) -> None:
        at = start
        while at + 2 <= end:
            tag, length_at = der[at], at + 1
            length, content = der[length_at], length_at + 1
            if length & 0x80:
                count = length & 0x7F
                length = int.from_bytes(der[content : content + count], "big")
                content += count
            found.append((at, length_at))
            inner = min(content + length, end)
            if tag & 0x20:  # constructed: look inside
                walk(content, inner)
            elif tag == 0x04 and der[content : content + 1] == b"\x30":  # an extension value
                walk(content, inner)
            elif tag == 0x03 and der[content + 1 : content + 2] == b"\x30":  # a public key
                walk(content + 1, inner)
            at = content + length

    walk(0, len(der))
    return found


BYTE_VALUES = st.sampled_from(
    [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x1E, 0x30, 0x31, 0x7F]
    + [0x80, 0x81, 0x82, 0xA0, 0xA3, 0xFF]
) | st.integers(0, 255)


MALFORMED = (
    "version-2",
    "subject-value-tag-zero",
    "subject-value-bit-string",
    "key-algorithm-oid",
    "key-sequence-tag-zero",
)


def malformed(certificate: x509.Certificate, kind: str) -> bytes:
    """The DER of ``certificate`` with one byte changed where cryptography's lazy decoding
    (or its version check) trips: found by the properties below, pinned here. RSA keys only."""
    der = bytearray(certificate.public_bytes(serialization.Encoding.DER))
    subject = certificate.subject.public_bytes()
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    common_name = der.rindex(subject) + subject.index(bytes.fromhex("0603550403")) + 5
    key_bits = der.index(spki) + spki.index(b"\x03\x82")
    edits = {
        "version-2": (der.index(bytes.fromhex("a003020102")) + 4, 0x01),
        "subject-value-tag-zero": (common_name, 0x00),  # the CN's string tag
        "subject-value-bit-string": (common_name, 0x03),
        "key-algorithm-oid": (der.index(bytes.fromhex("2a864886f70d010101")), 0x00),
        "key-sequence-tag-zero": (key_bits + 5, 0x00),  # the RSAPublicKey SEQUENCE
    }
    position, value = edits[kind]
    der[position] = value
    return bytes(der)


@pytest.mark.parametrize("source", ["SSL_CLIENT_CERT", "X-SSL-Client-Cert", "Client-Cert"])
@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_certificate_is_invalid_client(
    kind, source, bank, ob_directory, ob_software, issuer
):
    der = malformed(ob_software.transport_certificate, kind)
    if source == "SSL_CLIENT_CERT":
        target, environ = bank(), {"SSL_CLIENT_CERT": _pem_of_der(der)}
    else:
        target = bank(OBDCR_CLIENT_CERT_HEADER=source, OBDCR_TRUSTED_PROXIES=["127.0.0.1"])
        key = "HTTP_" + source.upper().replace("-", "_")
        value = (
            urllib.parse.quote(_pem_of_der(der), safe="")
            if source == "X-SSL-Client-Cert"
            else f":{base64.b64encode(der).decode()}:"
        )
        environ = {key: value, "REMOTE_ADDR": "127.0.0.1"}
    for method in ("tls_client_auth", "private_key_jwt"):
        token = ob_directory.registration_request(
            ob_software, aud=issuer, token_endpoint_auth_method=method
        )
        status, data, _ = target.post(token, environ=environ, may_register=False)
        assert (status, data["error"]) == (401, "invalid_client")


def certificate_texts(
    data: st.DataObject, genuine: x509.Certificate, pool
) -> tuple[str, bytes | None]:
    """(a PEM-ish text, the DER it was made from if any): noise, mutations, odd certificates."""
    how = data.draw(
        st.sampled_from(
            # DER edits reach the certificate parser and checks, so they get more weight
            ["text", "latin1", "genuine-reformatted", "pem-edit", "der-truncate", "odd"]
            + ["der-edit"] * 3
        )
    )
    der = genuine.public_bytes(serialization.Encoding.DER)
    if how == "text":
        return data.draw(st.text(st.characters(exclude_categories=()), max_size=300)), None
    if how == "latin1":
        return data.draw(latin1_text), None
    if how == "odd":
        der = pool[data.draw(st.sampled_from(sorted(pool)))].public_bytes(
            serialization.Encoding.DER
        )
        return _pem_of_der(der), der
    if how == "genuine-reformatted":
        line = data.draw(st.sampled_from([64, 76, 10_000]))
        newline = data.draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
        text = _pem_of_der(der, line=line, newline=newline)
        prefix = data.draw(st.sampled_from(["", " ", "\n", "subject=CN=x\n", "\t"]))
        suffix = data.draw(st.sampled_from(["", "\n", "  ", "junk", _pem_of_der(der)]))
        return prefix + text + suffix, der
    if how == "der-truncate":
        cut = der[: _index(data, len(der))]
        return _pem_of_der(cut), cut
    if how == "der-edit":
        structure = der_structure(der)
        edited = bytearray(der)
        for _ in range(data.draw(st.integers(1, 3))):
            where = data.draw(st.sampled_from(["tag", "length", "anywhere"]))
            if where == "anywhere":
                position = _index(data, len(edited))
            else:
                tag_at, length_at = structure[_index(data, len(structure))]
                position = tag_at if where == "tag" else length_at
            value = data.draw(BYTE_VALUES)
            edited[position] = value if value != edited[position] else value ^ 0xFF
        return _pem_of_der(bytes(edited)), bytes(edited)
    text = _pem_of_der(der)
    for _ in range(data.draw(st.integers(1, 3))):
        position = _index(data, len(text))
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "truncate":
            text = text[:position]
        elif op == "delete":
            text = text[:position] + text[position + 1 :]
        else:
            char = data.draw(st.sampled_from(string.ascii_letters + "+/=-\n \x00é"))
            text = text[:position] + char + text[position + (op == "flip") :]
    return text, None


def _assert_genuine(environ: dict[str, str], config: dict[str, Any], software: Software) -> None:
    presented = client_certificate_from_environ(
        environ,
        header=config.get("OBDCR_CLIENT_CERT_HEADER"),
        trusted_proxies=config.get("OBDCR_TRUSTED_PROXIES", ()),
    )
    assert presented is not None
    assert presented.public_bytes(serialization.Encoding.DER) == (
        software.transport_certificate.public_bytes(serialization.Encoding.DER)
    )


def test_random_ssl_client_cert(bank, ob_directory, ob_software, issuer, odd_certificates):
    target = bank()

    @profile()
    @given(data=st.data(), method=st.sampled_from(["tls_client_auth", "private_key_jwt"]))
    def run(data, method):
        token = ob_directory.registration_request(
            ob_software, aud=issuer, token_endpoint_auth_method=method
        )
        text, _ = certificate_texts(data, ob_software.transport_certificate, odd_certificates)
        environ = {"SSL_CLIENT_CERT": text}
        status, _, stored = target.post(token, environ=environ, may_register=True)
        if status == 201:
            _assert_genuine(environ, {}, ob_software)
            assert_deserved(
                stored, software=ob_software, certificate=ob_software.transport_certificate
            )

    run()
    assert target.outcomes["401 invalid_client"] > 0


@pytest.mark.parametrize("header", ["X-SSL-Client-Cert", "Client-Cert"])
def test_random_proxy_certificate_headers(
    header, bank, ob_directory, ob_software, issuer, odd_certificates
):
    config = {"OBDCR_CLIENT_CERT_HEADER": header, "OBDCR_TRUSTED_PROXIES": ["127.0.0.1", "::1"]}
    target = bank(**config)
    key = "HTTP_" + header.upper().replace("-", "_")

    @profile()
    @given(
        data=st.data(),
        method=st.sampled_from(["tls_client_auth", "private_key_jwt"]),
        peer=st.sampled_from(["127.0.0.1", "10.0.0.1", "::1", "::ffff:127.0.0.1", "", "unix"])
        | latin1_text.map(lambda t: t[:40]),
        also_environ=st.sampled_from([None, "genuine", "garbage"]),
    )
    def run(data, method, peer, also_environ):
        token = ob_directory.registration_request(
            ob_software, aud=issuer, token_endpoint_auth_method=method
        )
        text, der = certificate_texts(data, ob_software.transport_certificate, odd_certificates)
        shape = data.draw(st.sampled_from(["encoded", "raw", "noise"]))
        if shape == "noise":
            value = data.draw(latin1_text)
        elif header == "Client-Cert":
            payload = base64.b64encode(der).decode() if der is not None else text
            if shape == "encoded":
                pad = data.draw(st.sampled_from(["", " ", "\t"]))
                strip = data.draw(st.booleans())
                value = f"{pad}:{payload.rstrip('=') if strip else payload}:{pad}"
            else:
                value = payload
        else:
            value = urllib.parse.quote(text, safe="") if shape == "encoded" else text
        # environ strings are latin-1 "native strings" (PEP 3333)
        value = value.encode("utf-8", "surrogatepass").decode("latin-1")
        environ = {key: value, "REMOTE_ADDR": peer}
        if also_environ == "genuine":
            environ["SSL_CLIENT_CERT"] = ob_software.transport_pem()
        elif also_environ == "garbage":
            environ["SSL_CLIENT_CERT"] = "garbage"
        status, _, stored = target.post(token, environ=environ, may_register=True)
        if status == 201:
            _assert_genuine(environ, config, ob_software)
            assert_deserved(
                stored, software=ob_software, certificate=ob_software.transport_certificate
            )

    run()
    assert target.outcomes["401 invalid_client"] > 0
