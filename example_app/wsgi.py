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

nginx (``load_module modules/ngx_http_js_module.so;`` at the top level)::

    js_import client_cert from /etc/nginx/client_cert.js;
    js_set $client_cert_rfc9440 client_cert.rfc9440;

    server {
        listen 443 ssl;
        server_name as.anybank.example;
        ssl_certificate         /etc/anybank/tls/bank.pem;
        ssl_certificate_key     /etc/anybank/tls/bank.key;
        ssl_client_certificate  /etc/anybank/ob-transport-cas.pem;  # issuing + root CAs
        ssl_verify_client       optional;  # ask; verify if sent; discovery works without
        ssl_verify_depth        3;

        location / {
            # always set by nginx, never passed through from the client (an empty value
            # removes the header: no certificate, no header)
            proxy_set_header Client-Cert       $client_cert_rfc9440;
            proxy_set_header Host              $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host  $host;
            proxy_set_header X-Forwarded-Port  $server_port;
            proxy_pass http://127.0.0.1:8000;
        }
    }

``/etc/nginx/client_cert.js`` (RFC 9440: the DER certificate, base64, between colons)::

    function rfc9440(r) {
        var pem = r.variables.ssl_client_raw_cert;
        if (!pem) { return ""; }
        return ":" + pem.replace(/-----[A-Z ]+-----/g, "").replace(/\\s+/g, "") + ":";
    }
    export default { rfc9440 };

Without njs, nginx's own ``$ssl_client_escaped_cert`` (URL-escaped PEM) does the same job:
``proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;`` with
``behind_nginx(header="X-SSL-Client-Cert")``.

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
