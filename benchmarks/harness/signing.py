"""Requests signed before the timed runs (signing is the TPP's cost, not the server's), one per
line of a file that ``benchmarks/wrk/post_lines.lua`` reads: registration requests and client
assertions, each with its own ``jti`` (the servers refuse a replay)."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from .common import ISSUER, REDIRECT_URIS, SCOPE

if TYPE_CHECKING:
    from .onboarding import Onboarded

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: flask-obdcr's MAX_ASSERTION_LIFETIME: it refuses longer-lived client assertions
ASSERTION_LIFETIME = 600


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# the signing key of this process (each worker of the signing pool loads it once)
_SIGNER: dict[str, Any] = {}


def init_signer(key_pem: str, kid: str) -> None:
    _SIGNER["key"] = serialization.load_pem_private_key(key_pem.encode(), password=None)
    _SIGNER["header"] = b64url(_compact({"alg": "PS256", "typ": "JWT", "kid": kid}))


def sign_ps256(claims: dict[str, Any]) -> str:
    """A compact JWS, PS256 (RSASSA-PSS, SHA-256, salt = hash length), as jwcrypto makes it.
    Signed with ``cryptography`` directly: the TPP's side needs no JOSE library's overhead."""
    signing_input = f"{_SIGNER['header']}.{b64url(_compact(claims))}"
    signature = _SIGNER["key"].sign(
        signing_input.encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )
    return f"{signing_input}.{b64url(signature)}"


def registration_claims(tpp: Onboarded, *, aud: str, now: int, lifetime: int) -> dict[str, Any]:
    """The registration request the sandbox TPP sends (``SandboxDirectory.registration_claims``)."""
    return {
        "iss": tpp.software_id,
        "iat": now,
        "exp": now + lifetime,
        "aud": aud,
        "jti": str(uuid.uuid4()),
        "redirect_uris": REDIRECT_URIS,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "PS256",
        "grant_types": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types": ["code id_token"],
        "software_id": tpp.software_id,
        "scope": SCOPE,
        "software_statement": tpp.ssa,
        "application_type": "web",
        "id_token_signed_response_alg": "PS256",
        "request_object_signing_alg": "PS256",
    }


def parallel_sign(
    job: Callable[[Any], list[str]], tpp: Onboarded, chunks: list[Any]
) -> Iterator[list[str]]:
    """Run ``job`` over ``chunks`` on every core (signing is CPU-bound)."""
    with multiprocessing.get_context("fork").Pool(
        os.cpu_count() or 1,
        initializer=init_signer,
        initargs=(tpp.signing_key_pem, tpp.signing_kid),
    ) as pool:
        yield from pool.imap(job, chunks)


def _sign_registration_chunk(args: tuple[Onboarded, str, int, int, int]) -> list[str]:
    tpp, aud, count, now, lifetime = args
    return [
        sign_ps256(registration_claims(tpp, aud=aud, now=now, lifetime=lifetime))
        for _ in range(count)
    ]


def write_registration_requests(tpp: Onboarded, path: Path, count: int, lifetime: int) -> None:
    """``count`` distinct signed registration requests, one compact JWS per line."""
    now = int(time.time())
    chunk = 500
    chunks = [
        (tpp, ISSUER, min(chunk, count - start), now, lifetime) for start in range(0, count, chunk)
    ]
    with open(path, "w") as handle:
        for lines in parallel_sign(_sign_registration_chunk, tpp, chunks):
            handle.write("\n".join(lines) + "\n")


def node_registration_metadata(tpp: Onboarded, n: int) -> dict[str, Any]:
    """What node-oidc-provider is sent: the same client metadata, keys inline, no SSA."""
    return {
        "client_name": f"Bench TPP App {n}",
        "redirect_uris": REDIRECT_URIS,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "PS256",
        "grant_types": ["authorization_code", "client_credentials", "refresh_token", "implicit"],
        "response_types": ["code id_token"],
        "scope": SCOPE,
        "application_type": "web",
        "id_token_signed_response_alg": "PS256",
        "request_object_signing_alg": "PS256",
        "jwks": {"keys": [tpp.signing_jwk_public]},
    }


def write_node_requests(tpp: Onboarded, path: Path, count: int) -> None:
    with open(path, "w") as handle:
        for n in range(count):
            handle.write(json.dumps(node_registration_metadata(tpp, n), separators=(",", ":")))
            handle.write("\n")


def authlib_registration_metadata(tpp: Onboarded, n: int) -> dict[str, Any]:
    """What the Authlib peer is sent: node's JSON metadata plus the Directory's software
    statement (RFC 7591 section 2.3), which the peer verifies with the Directory's key."""
    return {**node_registration_metadata(tpp, n), "software_statement": tpp.ssa}


def write_authlib_requests(tpp: Onboarded, path: Path, count: int) -> None:
    with open(path, "w") as handle:
        for n in range(count):
            metadata = authlib_registration_metadata(tpp, n)
            handle.write(json.dumps(metadata, separators=(",", ":")) + "\n")


def _sign_assertion_chunk(args: tuple[str, str, int, int]) -> list[str]:
    client_id, aud, count, now = args
    lines = []
    for _ in range(count):
        assertion = sign_ps256(
            {
                "iss": client_id,
                "sub": client_id,
                "aud": aud,
                "jti": str(uuid.uuid4()),
                "iat": now,
                "exp": now + ASSERTION_LIFETIME - 10,
            }
        )
        lines.append(
            urlencode(
                {
                    "grant_type": "client_credentials",
                    "scope": "accounts",
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion,
                }
            )
        )
    return lines


def write_assertions(tpp: Onboarded, path: Path, client_id: str, aud: str, count: int) -> None:
    """``count`` token requests (client_credentials, private_key_jwt), one form per line."""
    now = int(time.time())
    chunk = 1000
    chunks = [(client_id, aud, min(chunk, count - s), now) for s in range(0, count, chunk)]
    with open(path, "w") as handle:
        for lines in parallel_sign(_sign_assertion_chunk, tpp, chunks):
            handle.write("\n".join(lines) + "\n")
