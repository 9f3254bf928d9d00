"""The sandbox Directory's portal: the pages a TPP's technical contact uses at the Open Banking
Directory, served by the Directory itself under ``/portal/`` (server-rendered, no JavaScript
needed)::

    GET  /portal/                                        organisations, their software and the
                                                         status of its certificates
    POST /portal/organisations                           create an organisation
    GET  /portal/organisations/<org_id>/software/new     the "Add new statement" form
    POST /portal/organisations/<org_id>/software         create the software statement
    GET  /portal/software/<software_id>                  its details, certificates (with what the
                                                         CRL and OCSP responder say), CSR upload,
                                                         key sets, and the TPP's next commands
    POST /portal/software/<software_id>/certificates     a transport or signing CSR (pasted or
                                                         a file): the certificate is issued
    GET  /portal/software/<software_id>/certificates/<kid>/revoke   confirm, with a reason
    POST /portal/software/<software_id>/certificates/<kid>/revoke   revoke it
    GET  /portal/software/<software_id>/ssa              a freshly signed SSA and its claims

Every page does what the JSON API does through the same :class:`DirectoryState` methods, so a
rule (the redirect URIs' validation, a CSR's subject, a revocation reason) is enforced in one
place. Every form is a POST carrying the session's CSRF token; a good one is answered with a
303 to a page, a refused one re-renders its form with the reason (400) and stores nothing.

Generating an SSA is a GET: it signs a new statement and stores nothing (the API's POST is
the real Directory's "Generate" button); a page another site makes the browser load cannot be
read by that site.

Like the API, the portal has no authentication: it is a sandbox bound to loopback.
"""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException, NotFound

from .._util import decode_jwt, pretty
from ..pages import CSRF_FIELD, csrf_context, csrf_ok, secure_page_headers
from .cli import shown_path
from .state import CERTIFICATE_TYPES, REVOCATION_REASONS, DirectoryError, DirectoryState

__all__ = ["CSRF_FIELD", "FORM_ROLES", "portal_blueprint"]

#: the session key of the portal's CSRF token (the form field is pages.CSRF_FIELD)
CSRF_SESSION_KEY = "portal_csrf"
BAD_CSRF = "This form's CSRF token is missing or wrong: reload the page and send the form again."
#: the roles the "Add new statement" form offers (a TPP's; ASPSP is a bank's)
FORM_ROLES = ("AISP", "PISP", "CBPII")
#: the folder the TPP keeps its files in when the Directory runs in a sandbox folder
#: (``make serve``): ``<sandbox>/tpp`` beside ``<sandbox>/directory``
SANDBOX_TPP_FOLDER = "tpp"


def _state() -> DirectoryState:
    return current_app.extensions["sandbox_directory"]


# -- what the pages show ----------------------------------------------------------------------


def certificate_summary(software: dict[str, Any]) -> str:
    """``transport active, signing revoked, ...`` (oldest first), or that there is none."""
    records = software["certificates"]
    if not records:
        return "no certificates yet"
    return ", ".join(f"{r['type']} {r['status']}" for r in records)


def _sandbox_url(state: DirectoryState, name: str) -> str | None:
    """The URL of the sandbox's ``bank_url`` or ``tpp_url``, when this Directory runs in a
    sandbox folder (``make serve`` writes them in ``<sandbox>/run/sandbox.json``)."""
    if state.folder.name != "directory":
        return None
    from ..sandbox import running  # the sandbox module imports this package

    info = running(state.folder.parent) or {}
    url = info.get(name)
    return url.rstrip("/") if isinstance(url, str) and url else None


def _bank_url(state: DirectoryState) -> str | None:
    return _sandbox_url(state, "bank_url")


def _redirect_uri(state: DirectoryState) -> str:
    """The redirect URI a new software statement is offered: the callback of the TPP's page
    this sandbox runs (another TPP_PORT included), else make serve's default."""
    from ..tpp import DEFAULT_REDIRECT_URI

    tpp_url = _sandbox_url(state, "tpp_url")
    return f"{tpp_url}/callback" if tpp_url else DEFAULT_REDIRECT_URI


def tpp_folder(state: DirectoryState, software: dict[str, Any]) -> tuple[Path, str | None]:
    """Where the TPP's files for this software go, and why not the usual folder (or None).

    In a sandbox folder (``make serve``) it is ``<sandbox>/tpp``, where ``obdcr-tpp`` looks
    by default; else ``obdcr-tpp``'s default, ``instance/tpp``. A folder already holding
    other software (its keys and certificates) is left alone: ``tpp-<software_id>`` beside it.
    """
    from ..tpp import DEFAULT_WORKDIR, TPP

    if state.folder.name == "directory":
        folder = state.folder.parent / SANDBOX_TPP_FOLDER
    else:
        folder = Path(DEFAULT_WORKDIR).resolve()
    held = TPP(folder).config.get("software_id")
    if held and held != software["software_id"]:
        other = folder.parent / f"tpp-{software['software_id']}"
        return other, f"{shown_path(folder)} already holds software {held}"
    return folder, None


def tpp_commands(state: DirectoryState, software: dict[str, Any]) -> dict[str, Any]:
    """The TPP's next command lines for this software, as they run from a fresh shell in this
    process's current folder (``cwd``): made by :func:`example_app.tpp.tpp_command`, as the
    command line's own hints and ``make serve``'s banner are when run from there."""
    from ..tpp import DEFAULT_BANK_URL, DEFAULT_DIRECTORY_URL, TPP, tpp_command

    folder, moved = tpp_folder(state, software)
    tpp = TPP(folder)
    init = f"init --org-id {shlex.quote(software['org_id'])}"
    init += f" --software-id {shlex.quote(software['software_id'])}"
    directory_url = (state.base_url or DEFAULT_DIRECTORY_URL).rstrip("/")
    if directory_url != DEFAULT_DIRECTORY_URL:
        init += f" --directory {shlex.quote(directory_url)}"
    bank_url = _bank_url(state)
    if bank_url and bank_url.rstrip("/") != DEFAULT_BANK_URL:
        init += f" --bank {shlex.quote(bank_url.rstrip('/'))}"
    # obdcr-tpp looks for the CA bundle beside its folder (<folder>/../directory)
    if tpp.workdir.parent / "directory" / "ca-bundle.pem" != state.ca_bundle:
        init += f" --ca {shown_path(state.ca_bundle)}"
    return {
        # the helpers show paths relative to this process's folder: where to type them
        "cwd": os.getcwd(),
        "folder": shown_path(tpp.workdir),
        "moved": moved,
        "bank_known": bank_url is not None,
        "default_bank": DEFAULT_BANK_URL,
        "init": tpp_command(tpp, init),
        "keys": tpp_command(tpp, "keys"),
        "show_csrs": [f"cat {shown_path(tpp.path(f'{t}.csr'))}" for t in CERTIFICATE_TYPES],
        "upload": tpp_command(tpp, "upload-csr"),
        "download": tpp_command(tpp, "download"),
        "ssa": tpp_command(tpp, "ssa"),
        "ssa_file": shown_path(tpp.path("ssa.jwt")),
        "request": tpp_command(tpp, "request"),
        "register": tpp_command(tpp, "register --brief"),
        "status": tpp_command(tpp, "status"),
    }


# -- the blueprint --------------------------------------------------------------------------------


def portal_blueprint() -> Blueprint:
    """The portal's pages (see the module docstring), to register on the Directory's app."""
    bp = Blueprint(
        "portal",
        __name__,
        url_prefix="/portal",
        template_folder="templates",
        static_folder="static",
    )

    def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
        return render_template(f"portal/{template}", **context), status

    @bp.before_request
    def check_csrf() -> Any:
        g.csp_nonce = secrets.token_urlsafe(16)
        if request.method == "POST" and not csrf_ok(CSRF_SESSION_KEY):
            return page("error.html", 400, title="Form refused", message=BAD_CSRF)
        return None

    @bp.after_request
    def headers(response: Response) -> Response:
        nonce = g.get("csp_nonce", "")
        return secure_page_headers(
            response,
            f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self';"
            " img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            referrer_policy="same-origin",
        )

    @bp.context_processor
    def common() -> dict[str, Any]:
        return {**csrf_context(CSRF_SESSION_KEY), "csp_nonce": g.get("csp_nonce", "")}

    @bp.errorhandler(DirectoryError)
    def directory_error(error: DirectoryError) -> tuple[str, int]:
        return page("error.html", error.status, title="Not done", message=error.description)

    @bp.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[str, int]:
        return page(
            "error.html", error.code or 500, title=error.name, message=error.description or ""
        )

    # -- organisations ---------------------------------------------------------------------

    def organisations_page(status: int = 200, **context: Any) -> tuple[str, int]:
        state = _state()
        rows = [
            {"organisation": o, "software": state.software_of(o["org_id"])}
            for o in state.organisations()
        ]
        context.setdefault("org_name", "")
        return page(
            "organisations.html",
            status,
            rows=rows,
            summary=certificate_summary,
            **context,
        )

    @bp.get("/")
    def index() -> tuple[str, int]:
        return organisations_page()

    @bp.post("/organisations")
    def add_organisation() -> Any:
        org_name = request.form.get("org_name", "")
        try:
            organisation = _state().add_organisation(org_name)
        except DirectoryError as error:
            return organisations_page(400, error=error.description, org_name=org_name)
        flash(f"Organisation {organisation['org_name']} created: {organisation['org_id']}.")
        return redirect(url_for(".new_software", org_id=organisation["org_id"]), 303)

    # -- software statements -----------------------------------------------------------------

    def software_form(
        org_id: str, status: int = 200, *, error: str | None = None, form: Any = None
    ) -> tuple[str, int]:
        organisation = _state().organisation(org_id)
        values = {
            "client_name": "",
            "description": "",
            "roles": ["AISP"],
            # the TPP's own page under make serve, where the customer comes back to
            "redirect_uris": _redirect_uri(_state()),
        }
        if form is not None:
            values = {
                "client_name": form.get("client_name", ""),
                "description": form.get("description", ""),
                "roles": form.getlist("roles"),
                "redirect_uris": form.get("redirect_uris", ""),
            }
        return page(
            "new_software.html",
            status,
            organisation=organisation,
            roles=FORM_ROLES,
            values=values,
            error=error,
        )

    @bp.get("/organisations/<org_id>/software/new")
    def new_software(org_id: str) -> tuple[str, int]:
        return software_form(org_id)

    @bp.post("/organisations/<org_id>/software")
    def add_software(org_id: str) -> Any:
        state = _state()
        state.organisation(org_id)  # an unknown organisation: 404, not a form error
        form = request.form
        lines = [line.strip() for line in form.get("redirect_uris", "").splitlines()]
        extra = {}
        if form.get("description", "").strip():
            extra["description"] = form["description"].strip()
        try:
            software = state.add_software(
                org_id,
                client_name=form.get("client_name", ""),
                roles=form.getlist("roles"),
                redirect_uris=[line for line in lines if line],
                **extra,
            )
        except DirectoryError as error:
            return software_form(org_id, 400, error=error.description, form=form)
        flash(f"Software statement {software['client_name']} created: {software['software_id']}.")
        return redirect(url_for(".software_page", software_id=software["software_id"]), 303)

    def software_view(
        software_id: str, status: int = 200, *, errors: Any = None, pasted: Any = None
    ) -> tuple[str, int]:
        state = _state()
        software = state.software(software_id)
        return page(
            "software.html",
            status,
            software=software,
            organisation=state.organisation(software["org_id"]),
            revocation=state.revocation_status(software_id),
            commands=tpp_commands(state, software),
            cert_types=list(CERTIFICATE_TYPES),
            errors=errors or {},
            pasted=pasted or {},
        )

    @bp.get("/software/<software_id>")
    def software_page(software_id: str) -> tuple[str, int]:
        return software_view(software_id)

    @bp.post("/software/<software_id>/certificates")
    def upload_csr(software_id: str) -> Any:
        state = _state()
        state.software(software_id)
        cert_type = request.form.get("cert_type", "")
        pasted = request.form.get("csr", "")
        upload = request.files.get("csr_file")
        chosen = upload.read() if upload is not None and upload.filename else b""
        where = cert_type if cert_type in CERTIFICATE_TYPES else "transport"

        def refuse(message: str) -> tuple[str, int]:
            return software_view(software_id, 400, errors={where: message}, pasted={where: pasted})

        if pasted.strip() and chosen:
            return refuse("Paste the CSR or choose a file, not both.")
        data = chosen or pasted.encode()
        if not data.strip():
            return refuse("Paste a CSR (PEM) or choose a CSR file.")
        profile = "eidas" if request.form.get("eidas") and cert_type == "transport" else "ob"
        try:
            record = state.sign_csr(software_id, cert_type, data, profile=profile)
        except DirectoryError as error:
            return refuse(error.description)
        flash(f"{record['type'].capitalize()} certificate issued: kid {record['kid']}.")
        return redirect(url_for(".software_page", software_id=software_id) + "#certificates", 303)

    # -- revocation ----------------------------------------------------------------------------

    def revoke_form(
        software_id: str, kid: str, status: int = 200, *, error: str | None = None
    ) -> tuple[str, int]:
        state = _state()
        software = state.software(software_id)
        return page(
            "revoke.html",
            status,
            software=software,
            record=state.certificate(software_id, kid),
            reasons=list(REVOCATION_REASONS),
            chosen=request.form.get("reason", "unspecified"),
            error=error,
        )

    @bp.get("/software/<software_id>/certificates/<kid>/revoke")
    def confirm_revoke(software_id: str, kid: str) -> tuple[str, int]:
        return revoke_form(software_id, kid)

    @bp.post("/software/<software_id>/certificates/<kid>/revoke")
    def revoke(software_id: str, kid: str) -> Any:
        state = _state()
        state.certificate(software_id, kid)  # unknown: 404
        try:
            record = state.revoke(software_id, kid, reason=request.form.get("reason", ""))
        except DirectoryError as error:
            return revoke_form(software_id, kid, 400, error=error.description)
        flash(f"Certificate {record['kid']} revoked ({record['revocation_reason']}).")
        return redirect(url_for(".software_page", software_id=software_id) + "#certificates", 303)

    # -- software statements (SSA) ---------------------------------------------------------------

    @bp.get("/software/<software_id>/ssa")
    def ssa(software_id: str) -> tuple[str, int]:
        state = _state()
        software = state.software(software_id)
        token = state.ssa(software_id)
        header, claims = decode_jwt(token)
        return page(
            "ssa.html",
            software=software,
            token=token,
            header=pretty(header),
            claims=pretty(claims),
            commands=tpp_commands(state, software),
        )

    @bp.route("/<path:anything>", methods=["GET", "POST"])
    def not_found(anything: str) -> Any:
        raise NotFound("There is no such page in the portal.")

    return bp
