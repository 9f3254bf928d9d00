"""AnyBank in production: WSGI entry points for gunicorn (alone or behind nginx) and granian
(behind nginx).

Both read the bank's configuration as :func:`example_app.bank.create_app` does (defaults, then
``<instance>/anybank.json``, then ``config``); set at least ``OBDCR_ISSUER`` (the public
``https://`` URL), the trusted Directory and ``OBDCR_TRANSPORT_CA_FILE`` there.

**gunicorn terminating TLS** (no proxy): :func:`gunicorn_tls` wraps the app in
:class:`~example_app.serving.GunicornClientCertMiddleware`, which turns the client certificate
of gunicorn's TLS socket into ``SSL_CLIENT_CERT``::

    gunicorn 'example_app.wsgi:gunicorn_tls()' --bind 0.0.0.0:443 --workers 4 \\
        --certfile /etc/anybank/tls/bank.pem --keyfile /etc/anybank/tls/bank.key \\
        --ca-certs /etc/anybank/ob-transport-cas.pem --cert-reqs 1

``--cert-reqs 1`` is ``ssl.CERT_OPTIONAL``: gunicorn asks for a client certificate and
verifies any it gets against ``--ca-certs``, but lets clients without one in (discovery); the
app refuses the other calls without a certificate. Any worker class works (the middleware
reads ``environ["gunicorn.socket"]``, which every gunicorn worker sets).

**nginx terminating TLS**, gunicorn behind it on loopback: :func:`behind_nginx` trusts the
``Client-Cert`` header (RFC 9440) from ``trusted_proxies`` only, and the proxy's
``X-Forwarded-Proto``/``-Host``/``-Port`` for the URLs it builds::

    gunicorn 'example_app.wsgi:behind_nginx()' --bind 127.0.0.1:8000 --workers 4

The nginx configuration is the file ``example_app/nginx/anybank.conf``: a server block for
nginx's ``http {}`` context (Debian: ``/etc/nginx/conf.d/anybank.conf``) whose ``{{...}}``
placeholders, listed at its top, are the listen address, the server name, the bank's HTTPS
certificate and key, the transport CA bundle, where ``client_cert.js`` is and gunicorn's
address. With it comes ``example_app/nginx/client_cert.js``, the njs function that makes the
RFC 9440 value (Debian: ``apt-get install nginx libnginx-mod-http-js``). nginx asks every
client for a certificate and verifies the one it gets (``ssl_verify_client optional``, so
discovery works without one), and sets both ``Client-Cert`` (RFC 9440) and
``X-SSL-Client-Cert`` (nginx's URL-escaped PEM) on every request, empty (so absent) without a
verified certificate: neither can come from the client, whichever the bank reads
(``behind_nginx()``: ``Client-Cert``; ``behind_nginx(header="X-SSL-Client-Cert")``).
``tests/test_nginx.py`` renders exactly this file, nothing changed but the placeholders, and
runs it in front of :func:`behind_nginx` under gunicorn.

``REMOTE_ADDR`` must be the proxy's address (gunicorn bound to TCP loopback; not a unix
socket, and no ``X-Forwarded-For`` rewriting), or the header is ignored as if absent.

**granian behind nginx**: the same nginx configuration (``{{UPSTREAM}}`` is granian's address),
the same app as ``behind_nginx()`` (``Client-Cert``, RFC 9440, from 127.0.0.1 and ::1 only),
made by :func:`granian_behind_nginx`. granian's ``--factory`` calls it without arguments, so
the instance folder (``anybank.json``, the database) comes from ``ANYBANK_INSTANCE`` (unset:
Flask's instance folder, as ``behind_nginx()``)::

    ANYBANK_INSTANCE=/etc/anybank granian --interface wsgi --factory \\
        --host 127.0.0.1 --port 8000 --http 1 --workers 4 --blocking-threads 1 \\
        --respawn-failed-workers example_app.wsgi:granian_behind_nginx

``--blocking-threads 1`` runs one request at a time in each worker's Python, as gunicorn's
sync workers do; ``--http 1`` is what nginx speaks to its upstream; ``--respawn-failed-workers``
replaces a worker that dies, as gunicorn does. ``tests/test_granian.py`` runs this command
line (two workers, a free port) behind the rendered ``anybank.conf``; ``make serve
SERVER=granian`` runs it too (:class:`example_app.sandbox.Sandbox`), nginx rendered by
:mod:`example_app.nginx`.

granian (2.x) copies its whole process environment into every request's WSGI environ (the
request's own keys on top), so a variable named like request data would be every request's:
``SSL_CLIENT_CERT`` a client certificate for every client that presents none (the bank reads
it when no trusted header comes), ``HTTP_CLIENT_CERT`` a ``Client-Cert`` header from nginx on
every request without one. :func:`granian_behind_nginx` therefore refuses to start
(:class:`UnsafeEnvironment`, naming the variables, never their values) while the environment,
``--env-files`` included, holds any name :func:`request_variables` lists: the ``HTTP_`` and
``SSL_CLIENT_`` prefixes, RFC 3875's request variables, and any name with a dot (``wsgi.*``).
An outbound proxy for the Directory's URLs goes in lowercase ``https_proxy``, which requests
reads too. Every other variable (``PATH``, ``ANYBANK_INSTANCE``) is in every environ as well;
the bank reads none of them from there, and its configuration and keys live in the instance
folder, not in the server's environment: keep secrets out of that environment.

**granian terminating TLS itself** is not usable for the bank: it verifies client certificates
(``--ssl-ca``, ``--ssl-client-verify``) but passes none to a WSGI app (its environ has no
certificate key), so the bank could neither authenticate ``tls_client_auth`` clients, nor
match the certificate to the software statement, nor bind a token; and its verification is
all or nothing (a connection without a certificate is refused at the handshake, discovery
included), where the bank needs "optional". Put nginx in front, or run gunicorn with its own
TLS.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from .bank import create_app
from .serving import GunicornClientCertMiddleware, behind_proxy

__all__ = [
    "INSTANCE_ENV",
    "UnsafeEnvironment",
    "behind_nginx",
    "granian_behind_nginx",
    "gunicorn_tls",
    "request_variables",
]

#: the instance folder of :func:`granian_behind_nginx` (granian's ``--factory`` passes nothing)
INSTANCE_ENV = "ANYBANK_INSTANCE"
#: RFC 3875's request meta-variables, and those servers commonly add beside them
REQUEST_META_VARIABLES = frozenset(
    {
        "AUTH_TYPE", "CONTENT_LENGTH", "CONTENT_TYPE", "GATEWAY_INTERFACE", "HTTPS",
        "PATH_INFO", "PATH_TRANSLATED", "QUERY_STRING", "RAW_URI", "REMOTE_ADDR",
        "REMOTE_HOST", "REMOTE_IDENT", "REMOTE_PORT", "REMOTE_USER", "REQUEST_METHOD",
        "REQUEST_URI", "SCRIPT_NAME", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
    }
)  # fmt: skip
#: request headers (``HTTP_CLIENT_CERT``) and mod_ssl's client certificate (``SSL_CLIENT_CERT``)
REQUEST_PREFIXES = ("HTTP_", "SSL_CLIENT_")


def gunicorn_tls(
    config: Mapping[str, Any] | None = None, *, instance_path: str | os.PathLike[str] | None = None
) -> GunicornClientCertMiddleware:
    """AnyBank for gunicorn's own TLS: ``gunicorn 'example_app.wsgi:gunicorn_tls()' ...``."""
    return GunicornClientCertMiddleware(create_app(config, instance_path=instance_path))


def behind_nginx(
    config: Mapping[str, Any] | None = None,
    *,
    header: str = "Client-Cert",
    trusted_proxies: Iterable[str] = ("127.0.0.1", "::1"),
    instance_path: str | os.PathLike[str] | None = None,
) -> Any:
    """AnyBank behind a TLS-terminating proxy: ``gunicorn 'example_app.wsgi:behind_nginx()'``.

    The client certificate comes from ``header`` (``Client-Cert``: RFC 9440;
    ``X-SSL-Client-Cert``: nginx's ``$ssl_client_escaped_cert``), honoured only from
    ``trusted_proxies`` (addresses or networks, as ``REMOTE_ADDR`` shows them)."""
    settings = {
        "OBDCR_CLIENT_CERT_HEADER": header,
        "OBDCR_TRUSTED_PROXIES": list(trusted_proxies),
        **(config or {}),
    }
    return behind_proxy(create_app(settings, instance_path=instance_path))


class UnsafeEnvironment(SystemExit):
    """The server's environment holds variables granian would hand the app as request data.

    A :class:`SystemExit`, so that granian's worker prints the message alone and granian
    stops, instead of serving without the refused worker."""


def request_variables(environment: Mapping[str, str]) -> list[str]:
    """The names in ``environment`` (a process environment) that a WSGI app would read as
    request data if they were in its environ, sorted: headers (``HTTP_...``), mod_ssl's client
    certificate (``SSL_CLIENT_...``), RFC 3875's request variables (``REMOTE_ADDR``,
    ``CONTENT_TYPE``...) and server keys (any name with a dot: ``wsgi.url_scheme``)."""
    return sorted(
        name
        for name in environment
        if name in REQUEST_META_VARIABLES or name.startswith(REQUEST_PREFIXES) or "." in name
    )


def granian_behind_nginx() -> Any:
    """AnyBank behind nginx, for granian: ``granian --interface wsgi --factory ...
    example_app.wsgi:granian_behind_nginx`` (the module docstring has the whole command).

    :func:`behind_nginx` with its defaults, the instance folder from ``ANYBANK_INSTANCE``.
    Raises :class:`UnsafeEnvironment` if the process environment holds a variable that
    granian would copy into every request's environ as request data. granian calls this in
    each worker after loading ``--env-files`` and takes its copy of the environment right
    after it returns: the check runs before the app is built (a refused start touches no
    file) and again after, so what is checked last is what granian copies.
    """
    _refuse_request_variables()
    app = behind_nginx(instance_path=os.environ.get(INSTANCE_ENV) or None)
    _refuse_request_variables()
    return app


def _refuse_request_variables() -> None:
    refused = request_variables(os.environ)
    if refused:
        raise UnsafeEnvironment(
            "example_app.wsgi:granian_behind_nginx refuses to start: granian copies its"
            " environment into every request's WSGI environ, where these variables would read"
            " as request data (a client certificate, headers) for every request:"
            f" {', '.join(refused)}. Unset them for the server (an outbound proxy: lowercase"
            " https_proxy) and start it again."
        )
