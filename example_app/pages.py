"""What the example's server-rendered pages share: a CSRF token kept in Flask's session and its
check, and the security headers of a page.

The bank's customer pages, its operator sign-in, the Directory's portal and the TPP's page each
keep their token under their own session key (several of them share one cookie, and signing in
to one renews only its own token) and each sends its own Content-Security-Policy (what a page
may load differs: the portal and the TPP's page run a script with a nonce, the bank's pages
none).
"""

from __future__ import annotations

import hmac
import secrets
from functools import partial
from typing import Any, TypeVar

from flask import Flask, Request, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from werkzeug.wrappers import Response

__all__ = [
    "CSRF_FIELD",
    "CookieOnDemandSessions",
    "csrf_context",
    "csrf_ok",
    "csrf_token",
    "secure_page_headers",
]

#: the form field every page's forms carry their CSRF token in
CSRF_FIELD = "csrf_token"

#: Flask's Response or Werkzeug's: the caller gets back the type it passed
AnyResponse = TypeVar("AnyResponse", bound=Response)


class CookieOnDemandSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a request carrying no cookie at all gets
    its new, empty session at once: Flask opens a session for every request, and builds the
    signing serializer and parses the (absent) cookies only to find nothing to verify. Every
    API call (``/token``, ``/register``, ``/accounts``) is such a request; one with cookies is
    opened, verified and saved exactly as Flask does it."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # no Cookie header at all: not even parsed (Werkzeug would build an empty MultiDict)
        if app.secret_key and not request.environ.get("HTTP_COOKIE"):
            return self.session_class()
        return super().open_session(app, request)


def csrf_token(session_key: str) -> str:
    """The session's CSRF token under ``session_key``, made on first use."""
    token = session.get(session_key)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[session_key] = token
    return token


def csrf_ok(session_key: str, field: str = CSRF_FIELD) -> bool:
    """Whether the form's ``field`` is the session's token under ``session_key``: never when
    either is missing or empty (an empty form field would otherwise match a session that has
    none), compared in constant time."""
    expected = session.get(session_key)
    sent = request.form.get(field, "")
    if not isinstance(expected, str) or not expected or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())


def csrf_context(session_key: str) -> dict[str, Any]:
    """What a page's templates need for their forms' CSRF field: ``csrf_token()`` (made only
    when a form asks for it) and ``csrf_field``."""
    return {"csrf_token": partial(csrf_token, session_key), "csrf_field": CSRF_FIELD}


def secure_page_headers(
    response: AnyResponse, csp: str | None, *, referrer_policy: str = "no-referrer"
) -> AnyResponse:
    """``response`` never cached, never framed, never sniffed as another type, with
    ``referrer_policy`` and the page's ``csp`` (None: none). Cache-Control is always replaced
    (``send_file`` sets its own on static files, and these pages are about someone's account
    or keys); a header a view set itself is otherwise kept."""
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", referrer_policy)
    if csp is not None:
        response.headers.setdefault("Content-Security-Policy", csp)
    return response
