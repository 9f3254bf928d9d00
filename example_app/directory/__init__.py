"""The sandbox Open Banking Directory as a service: ``python -m example_app.directory``.

What the real Directory's front end and APIs let a TPP's technical contact (and the
Directory's operator) do, on loopback:

* onboard an organisation and a piece of software (the "Add new statement" form: name, roles,
  redirect URIs), over the HTTP API or with ``python -m example_app.directory onboard``;
* upload the CSRs of a transport and a signing key; the Directory's issuing CA signs them with
  the OB subject ``CN=<software_id>, OU=<org_id>, O=OpenBanking, C=GB``, a CRL distribution
  point and an OCSP responder (authorityInfoAccess), and publishes the keys (with ``x5c``,
  ``use`` ``tls``/``sig``) at ``/<org_id>/<software_id>.jwks``;
* download the issued certificates as PEM;
* revoke a certificate (``python -m example_app.directory revoke``, or the TPP's ``tpp
  revoke``): its key moves to ``/<org_id>/revoked/<software_id>.jwks``, the issuing CA's CRL
  lists its serial and its OCSP responder answers "revoked";
* set an organisation's status (``python -m example_app.directory org-status ORG_ID
  Revoked``), which banks read when they re-validate their clients;
* generate software statements (SSAs): JWTs signed PS256 by the Directory, ``iss``
  ``"OpenBanking Ltd"``, verifiable with ``/openbanking.jwks``.

All of it but the operator's organisation status is also in the portal, the server-rendered
pages a browser gets at ``GET /`` (:mod:`~example_app.directory.portal`)::

    GET  /portal/                                        organisations, their software, the
                                                         status of its certificates; POST
                                                         /portal/organisations creates one
    GET  /portal/organisations/<org_id>/software/new     "Add new statement": name, roles,
                                                         redirect URIs (POST .../software)
    GET  /portal/software/<software_id>                  details; CSR upload (pasted or a file);
                                                         the certificates with PEM links and what
                                                         the CRL and OCSP responder say; the key
                                                         sets; the TPP's next obdcr-tpp commands
    GET  /portal/software/<software_id>/certificates/<kid>/revoke   confirm, then POST: revoke
    GET  /portal/software/<software_id>/ssa              a new SSA, with its header and claims

Its forms are POSTs with a per-session CSRF token (the session key: ``portal-secret.key`` in
the state folder); like the API it has no authentication: a sandbox, bound to loopback.

HTTP API (JSON unless noted; no authentication: it is a sandbox, bound to loopback)::

    GET    /                                          what this service is, its URLs (a
                                                      browser preferring HTML: 303 to /portal/)
    GET    /ca.pem                                    the sandbox CA bundle (issuing + root)
    GET    /openbanking.jwks                          the Directory's SSA signing keys
    GET    /pki/issuing.crl                           the issuing CA's CRL (DER, made afresh)
    POST   /pki/ocsp                                  its OCSP responder: application/ocsp-request
    GET    /pki/ocsp/<base64 request>                   -> application/ocsp-response (RFC 6960)
    POST   /api/organisations                         {"org_name": ...} -> 201 organisation
    GET    /api/organisations/<org_id>                the organisation, its org_status
    PATCH  /api/organisations/<org_id>                {"org_status": "Active" | "Revoked" |
                                                       "Withdrawn"} -> 200 organisation
    POST   /api/organisations/<org_id>/software       {"client_name", "roles", "redirect_uris",
                                                       ...} -> 201 software
    GET    /api/software/<software_id>                the software, its certificates
    POST   /api/software/<software_id>/certificates/<transport|signing>
                                                      body: a PEM (or DER) CSR -> 201 certificate
    GET    /api/software/<software_id>/certificates/<kid>.pem   the certificate (PEM)
    DELETE /api/software/<software_id>/certificates/<kid>[?reason=keyCompromise]
                                                      revoke -> 200 certificate
    POST   /api/software/<software_id>/ssa            -> 201 the SSA (application/jwt)
    GET    /<org_id>/<software_id>.jwks               the software's published keys
    GET    /<org_id>/revoked/<software_id>.jwks       its revoked keys
    GET    /<org_id>/<org_id>.jwks, /<org_id>/revoked/<org_id>.jwks   (empty key sets)

State (PKI, SSA key, registry with the revoked certificates, TLS certificate) lives in one
folder, ``--state``; the same folder serves again after a restart. The modules:
:mod:`~example_app.directory.state` (:class:`DirectoryState`),
:mod:`~example_app.directory.api` (:func:`create_directory_app`),
:mod:`~example_app.directory.portal` (its pages) and :mod:`~example_app.directory.cli` (the
command line, :data:`cli`).
"""

from __future__ import annotations

from .api import create_directory_app
from .cli import cli
from .state import (
    CRL_PATH,
    OCSP_PATH,
    ORG_STATUSES,
    REVOCATION_REASONS,
    DirectoryError,
    DirectoryState,
)

__all__ = [
    "CRL_PATH",
    "OCSP_PATH",
    "ORG_STATUSES",
    "REVOCATION_REASONS",
    "DirectoryError",
    "DirectoryState",
    "cli",
    "create_directory_app",
]
