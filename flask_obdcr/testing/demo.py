"""The registration walkthrough in one process: ``python -m flask_obdcr.testing.demo``.

A sandbox Open Banking Directory onboards a TPP's software, issues its certificates and a
software statement; the TPP signs a registration request; a bank running OpenBankingDCR
validates it and stores the client. Each step prints what a TPP developer would see.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from pathlib import Path

from flask import Flask

from .. import OpenBankingDCR
from ..storage import SQLiteStore
from .directory import SandboxDirectory

BANK_ISSUER = "https://as.anybank.test"


def decode(jwt: str) -> tuple[dict, dict]:
    header, payload, _ = jwt.split(".")

    def part(segment: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))

    return part(header), part(payload)


def step(number: int, title: str) -> None:
    print(f"\n=== {number}. {title} " + "=" * max(0, 70 - len(title)))


def show(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="obdcr-demo-"))

    step(1, "The Open Banking Directory onboards the TPP's software")
    directory = SandboxDirectory()
    software = directory.register_software(
        org_name="Sandbox TPP Ltd",
        client_name="Sandbox TPP - AISP",
        roles=["AISP"],
        redirect_uris=["https://tpp.example.com/callback"],
    )
    print(f"org_id      {software.org_id}")
    print(f"software_id {software.software_id}")
    print(f"transport certificate subject: {software.subject_dn}")
    print(f"signing key kid: {software.signing_key['kid']}  (published at {software.jwks_url})")

    step(2, "The Directory issues a software statement (SSA), signed PS256")
    ssa = directory.ssa(software)
    header, claims = decode(ssa)
    show(header)
    show(
        {
            k: claims[k]
            for k in (
                "iss",
                "software_id",
                "org_id",
                "software_roles",
                "software_redirect_uris",
                "software_jwks_endpoint",
            )
        }
    )

    step(3, "The TPP signs a registration request carrying the SSA")
    request_jwt = directory.registration_request(
        software, aud=BANK_ISSUER, ssa=ssa, token_endpoint_auth_method="tls_client_auth"
    )
    header, claims = decode(request_jwt)
    show(header)
    show({k: (v if k != "software_statement" else v[:40] + "...") for k, v in claims.items()})

    step(4, "The bank validates it (over mutual TLS) and registers the client")
    app = Flask("anybank", instance_path=str(workdir / "instance"))
    app.config.update(directory.app_config(workdir / "ob-ca.pem", issuer=BANK_ISSUER))
    dcr = OpenBankingDCR(
        app, store=SQLiteStore(workdir / "obdcr.db"), jwks_fetcher=directory.fetcher
    )
    print("validation pipeline:", " -> ".join(dcr.pipeline.names))
    response = app.test_client().post(
        "/register",
        data=request_jwt,
        content_type="application/jwt",
        environ_base=software.environ(),
    )
    print(f"HTTP {response.status_code}")
    body = response.get_json()
    show(
        {
            k: body[k]
            for k in (
                "client_id",
                "client_id_issued_at",
                "token_endpoint_auth_method",
                "tls_client_auth_subject_dn",
                "redirect_uris",
                "scope",
            )
        }
    )
    if response.status_code != 201:
        return 1

    step(5, "The stored client keeps the SSA's metadata")
    with app.app_context():
        stored = dcr.store.get(body["client_id"])
    assert stored is not None, "a 201 response means the client is stored"
    show(
        {
            "client_id": stored.client_id,
            "software_id": stored.software_id,
            "org_id": stored.org_id,
            "org_name": stored.ssa_claims["org_name"],
            "software_client_name": stored.ssa_claims["software_client_name"],
        }
    )

    step(6, "The same request replayed is refused")
    replay = app.test_client().post(
        "/register",
        data=request_jwt,
        content_type="application/jwt",
        environ_base=software.environ(),
    )
    print(f"HTTP {replay.status_code}")
    show(replay.get_json())
    return 0 if replay.status_code == 400 else 1


if __name__ == "__main__":
    sys.exit(main())
