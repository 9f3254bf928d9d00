"""AnyBank in production: WSGI entry points for gunicorn, alone or behind nginx.

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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from .bank import create_app
from .serving import GunicornClientCertMiddleware, behind_proxy

__all__ = ["behind_nginx", "gunicorn_tls"]


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
