"""nginx in front of AnyBank, from the documented configuration beside this file:
``anybank.conf`` (a server block whose ``{{...}}`` placeholders are listed at its top) and
``client_cert.js`` (the njs function that makes the RFC 9440 ``Client-Cert`` value).

What ``make serve SERVER=granian`` (:class:`example_app.sandbox.Sandbox`) and the tests
(tests/nginx_helpers.py, for tests/test_nginx.py and tests/test_granian.py) share:

* :func:`find_nginx`: the nginx binary and its njs module, or :class:`NginxNotFound` saying
  what to install (Debian: ``apt-get install nginx libnginx-mod-http-js``);
* :func:`render`: the template with every placeholder filled and nothing else changed
  (:func:`template_values` names them);
* :class:`Nginx`: nginx running the rendered file, included in a minimal nginx.conf of its
  own (:func:`nginx_conf`) that keeps the pid file, the logs and nginx's temporary files in
  one folder; in the foreground, in a session of its own, stopped with :meth:`Nginx.stop`.

Where nginx is looked for: the folders of ``$ANYBANK_NGINX_PATH`` (``os.pathsep``-separated)
if set, else ``/usr/sbin``, ``/usr/local/sbin`` and ``PATH``; its njs module
(``ngx_http_js_module.so``) in the folders of ``$ANYBANK_NGINX_MODULES`` if set, else
Debian's, Red Hat's and nginx.org's module folders.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import requests

from .._util import stop_process_group

__all__ = [
    "CLIENT_CERT_JS",
    "INSTALL",
    "TEMPLATE",
    "Nginx",
    "NginxError",
    "NginxNotFound",
    "find_nginx",
    "nginx_conf",
    "render",
    "template_values",
]

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "anybank.conf"
CLIENT_CERT_JS = HERE / "client_cert.js"
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
#: folders to look for nginx in (instead of the system's and PATH), os.pathsep-separated
SEARCH_PATH_ENV = "ANYBANK_NGINX_PATH"
#: folders to look for its njs module in (instead of the usual module folders)
MODULES_ENV = "ANYBANK_NGINX_MODULES"
SYSTEM_FOLDERS = ("/usr/sbin", "/usr/local/sbin")
#: Debian's, Red Hat's, nginx.org's
MODULE_FOLDERS = (
    "/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/etc/nginx/modules",
    "/usr/local/lib/nginx/modules", "/usr/local/nginx/modules",
)  # fmt: skip
JS_MODULE = "ngx_http_js_module.so"
#: the Debian packages: nginx, and njs for the RFC 9440 header
INSTALL = "apt-get install nginx libnginx-mod-http-js"
START_TIMEOUT = 20.0


class NginxError(RuntimeError):
    """nginx did not start, or did not serve (its log is in the message)."""


class NginxNotFound(NginxError):
    """No nginx binary, or no njs module for it; the message says what to install."""


def search_folders(environ: Mapping[str, str] | None = None) -> list[str]:
    """Where :func:`find_nginx` looks for the nginx binary, in order."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(SEARCH_PATH_ENV)
    if chosen is not None:
        return [folder for folder in chosen.split(os.pathsep) if folder]
    path = [folder for folder in environ.get("PATH", "").split(os.pathsep) if folder]
    return list(dict.fromkeys([*SYSTEM_FOLDERS, *path]))


def module_folders(environ: Mapping[str, str] | None = None) -> list[str]:
    """Where :func:`find_nginx` looks for the njs module, in order."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(MODULES_ENV)
    if chosen is not None:
        return [folder for folder in chosen.split(os.pathsep) if folder]
    return list(MODULE_FOLDERS)


def find_nginx(
    *, binary: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, Path]:
    """The nginx binary (``binary``, else found in :func:`search_folders`) and its njs module
    (found in :func:`module_folders`); :class:`NginxNotFound` naming where it looked and
    what to install."""
    folders = search_folders(environ)
    nginx = binary or shutil.which("nginx", path=os.pathsep.join(folders))
    if not nginx or not os.access(nginx, os.X_OK):
        where = binary or ", ".join(folders) or f"nowhere (${SEARCH_PATH_ENV} is empty)"
        raise NginxNotFound(f"nginx not found (looked in {where}): install it, {INSTALL}")
    modules = module_folders(environ)
    for folder in modules:
        module = Path(folder) / JS_MODULE
        if module.is_file():
            return nginx, module
    raise NginxNotFound(
        f"nginx's njs module ({JS_MODULE}) not found (looked in {', '.join(modules) or 'no'}"
        f" folder): install it, {INSTALL}"
    )


def render(template: Path, values: Mapping[str, str]) -> str:
    """``template`` with each ``{{NAME}}`` replaced by ``values[NAME]``: every placeholder
    filled, every value used (ValueError otherwise); nothing else changes."""
    text = template.read_text()
    found = set(PLACEHOLDER.findall(text))
    if found != set(values):
        raise ValueError(f"{template.name} has {sorted(found)}, given {sorted(values)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def template_values(
    *,
    listen: str,
    server_name: str,
    tls_cert: str | os.PathLike[str],
    tls_key: str | os.PathLike[str],
    client_ca: str | os.PathLike[str],
    upstream: str,
) -> dict[str, str]:
    """anybank.conf's placeholders: nginx listening on ``listen`` (``host:port``) as
    ``server_name``, with the bank's HTTPS certificate and key, verifying client certificates
    against ``client_ca``, in front of the WSGI server at ``upstream`` (``host:port``)."""
    return {
        "LISTEN": listen,
        "SERVER_NAME": server_name,
        "TLS_CERT": os.fspath(tls_cert),
        "TLS_KEY": os.fspath(tls_key),
        "CLIENT_CA": os.fspath(client_ca),
        "CLIENT_CERT_JS": str(CLIENT_CERT_JS),
        "UPSTREAM": upstream,
    }


def nginx_conf(folder: Path, *, js_module: Path, server_conf: Path) -> str:
    """A main nginx.conf around the rendered template: in the foreground, one worker, the pid
    file, logs and temporary files in ``folder`` (a system's would be in /run and /var)."""
    # As root, nginx's workers would switch to nobody, who may not enter ``folder`` (a 0700
    # temporary directory, say); as anyone else nginx cannot switch user and the line is
    # refused.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {name}_temp_path {folder / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}"
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} info;\n"
        f"load_module {js_module};\n"
        "events { worker_connections 128; }\n"
        "http {\n"
        f"    access_log {folder / 'access.log'};\n"
        f"{temp}"
        f"    include {server_conf};\n"
        "}\n"
    )


class Nginx:
    """nginx running the rendered template with its files in ``folder``, in a session of its
    own (:meth:`stop` signals the master, then SIGKILLs whatever of the group is left).
    ``preexec_fn`` runs in the child before nginx starts (the sandbox's: stop with the
    parent)."""

    def __init__(
        self,
        binary: str,
        js_module: Path,
        folder: Path,
        *,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.binary = binary
        self.js_module = js_module
        self.folder = folder
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen | None = None

    @property
    def error_log(self) -> Path:
        return self.folder / "error.log"

    def log_tail(self, size: int = 4000) -> str:
        text = ""
        for name in ("nginx.out", "error.log"):
            path = self.folder / name
            if path.exists():
                text += f"--- {name}\n" + path.read_text(errors="replace")[-size:]
        return text

    def start(
        self,
        values: Mapping[str, str],
        *,
        url: str,
        ca_bundle: str | os.PathLike[str],
        timeout: float = START_TIMEOUT,
    ) -> str:
        """Render the template with ``values``, start nginx and wait until the bank's
        discovery answers 200 at ``url`` (nginx's, verified with ``ca_bundle``): so the
        upstream answers too. Returns ``url``; :class:`NginxError` (nginx stopped) if it
        does not serve in ``timeout`` seconds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        server_conf = self.folder / "anybank.conf"
        server_conf.write_text(render(TEMPLATE, values))
        main = self.folder / "nginx.conf"
        main.write_text(nginx_conf(self.folder, js_module=self.js_module, server_conf=server_conf))
        args = [self.binary, "-p", f"{self.folder}/", "-c", str(main), "-e", str(self.error_log)]
        with open(self.folder / "nginx.out", "wb") as out:
            self.process = subprocess.Popen(  # noqa: S603 - the system's nginx, our config
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.folder, start_new_session=True, preexec_fn=self.preexec_fn,
            )  # fmt: skip
        try:
            self._wait_until_serving(url, os.fspath(ca_bundle), timeout)
        except BaseException:
            self.stop()
            raise
        return url

    def _wait_until_serving(self, url: str, ca_bundle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        assert self.process is not None, "start() runs nginx first"
        with requests.Session() as session:
            session.trust_env = False  # loopback: no proxy, no REQUESTS_CA_BUNDLE
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise NginxError(
                        f"nginx exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    response = session.get(
                        f"{url}/.well-known/openid-configuration", verify=ca_bundle, timeout=(2, 10)
                    )
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:300]}"
                except requests.RequestException as exc:
                    last = str(exc)
                time.sleep(0.05)
        raise NginxError(f"nginx did not serve in {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop nginx (idempotent)."""
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process)  # SIGTERM: nginx's fast shutdown
