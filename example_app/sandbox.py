"""The sandbox Directory and AnyBank running together on loopback, in one working folder.

Layout of the working folder (it is also the bank's Flask instance folder)::

    anybank.json      the bank's effective OBDCR_* settings (written when it starts)
    obdcr.db          the bank's registered clients and access tokens (SQLite)
    tls/              the bank's and the TPP page's HTTPS certificates and keys (sandbox PKI)
    directory/        the Directory's state: pki/, registry.json, ca-bundle.pem, tls/
    tpp/              the TPP's files (python -m example_app.tpp --workdir <folder>/tpp), which
                      the TPP's web page reads too (``obdcr-tpp web``, :mod:`example_app.tpp_web`)
    logs/             the servers' output, when they run as processes with log files
    run/              while a sandbox runs: sandbox.lock (held by the process that started it),
                      sandbox.json (its pid and URLs), the servers' *.url files; nginx/
                      (nginx's files, when granian runs the bank)

The Directory serves its issuing CA's CRL and OCSP responder too (``/pki/issuing.crl``,
``/pki/ocsp``), and every certificate it issues to a TPP names them, so the bank checks each
transport certificate's revocation status there; ``revocation_cache_seconds`` sets how long the
bank trusts an answer (``OBDCR_REVOCATION_CACHE_SECONDS``, 300 s by default).

``Sandbox(folder).start()`` prepares the PKI and the HTTPS certificates, then starts the
Directory, the bank and the TPP's web page (its redirect URI is ``tpp_url + "/callback"``;
``tpp_port=None``: no page), as child processes (``mode="process"``: ``python -m
example_app.directory serve``, ``python -m example_app.bank serve`` and ``python -m
example_app.tpp --workdir <folder>/tpp web``, each stopping if its parent dies) or as threads
of this process (``mode="thread"``). ``stop()`` always stops them all; use it as a context
manager.

``server="granian"`` (``make serve SERVER=granian``; processes only) runs the bank under
granian instead, with example_app/wsgi.py's production command line (``granian --interface
wsgi --factory ... example_app.wsgi:granian_behind_nginx``, two workers, ``ANYBANK_INSTANCE``
the working folder) on a free loopback port, behind nginx on ``bank_port``: granian hands a
WSGI app no client certificate, so nginx terminates TLS with the bank's certificate, verifies
the client's against the sandbox CA and passes it in ``Client-Cert``
(example_app/nginx/anybank.conf rendered by :mod:`example_app.nginx`, nothing changed but its
placeholders; its configuration, pid file, logs and temporary files in ``run/nginx/``). Both
stop with the rest, and with this process however it ends (Linux). :func:`missing_for` says
what the machine lacks for it (nginx and its njs module, granian), and ``start()`` refuses,
touching nothing, while anything is missing.

One sandbox at a time per folder: ``start()`` takes ``run/sandbox.lock`` (an ``flock``, so it
is released when its process ends, however it ends) and raises :class:`SandboxRunning`, with
the running one's pid and URLs, if another process holds it; it then touches nothing in the
folder. :func:`running` says whether (and where) a sandbox runs in a folder.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import requests

from ._util import read_json, write_file, write_json
from .directory import DirectoryState
from .directory.cli import installed_command
from .nginx import Nginx, NginxError, NginxNotFound, find_nginx, template_values

__all__ = ["SERVERS", "Sandbox", "SandboxError", "SandboxRunning", "missing_for", "running"]

LOOPBACK = "127.0.0.1"
#: what runs the bank: Werkzeug's server (its own TLS), or granian behind nginx
SERVERS = ("werkzeug", "granian")
#: granian's worker processes for the bank (``server="granian"``)
GRANIAN_WORKERS = 2
#: Linux's prctl(2) option: a signal for the child when its parent ends
PR_SET_PDEATHSIG = 1


class SandboxError(RuntimeError):
    """A server did not start (its log is in the message)."""


class SandboxRunning(SandboxError):
    """Another process runs a sandbox in this folder: ``pid``, ``directory_url``, ``bank_url``
    (each None while it is still starting)."""

    def __init__(self, folder: Path, info: dict[str, Any]) -> None:
        self.folder = folder
        self.pid: int | None = info.get("pid")
        self.directory_url: str | None = info.get("directory_url")
        self.bank_url: str | None = info.get("bank_url")
        super().__init__(
            f"a sandbox already runs in {folder} (pid {self.pid or 'unknown'}): Directory"
            f" {self.directory_url or '(starting)'}, AnyBank {self.bank_url or '(starting)'}"
        )


def _run_folder(folder: Path) -> Path:
    return folder / "run"


def running(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What runs in ``folder``: None if no sandbox does, else ``{"pid", "directory_url",
    "bank_url", ...}`` as the running sandbox wrote them (values None while it starts)."""
    folder = Path(folder).resolve()
    lock = _run_folder(folder) / "sandbox.lock"
    if not lock.exists():
        return None
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _running_info(folder)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _running_info(folder: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"pid": None, "directory_url": None, "bank_url": None}
    try:
        info.update(json.loads((_run_folder(folder) / "sandbox.json").read_text()))
    except (OSError, ValueError):
        pass  # still starting: it writes sandbox.json once both servers answer
    return info


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def missing_for(server: str) -> list[str]:
    """What this machine lacks to run the bank under ``server``, each as what to install
    (empty: nothing). granian gives a WSGI app no client certificate, so under granian the
    bank runs behind nginx, which terminates TLS and passes the certificate on."""
    if server != "granian":
        return []
    missing = []
    try:
        find_nginx()
    except NginxNotFound as exc:
        missing.append(str(exc))
    if importlib.util.find_spec("granian") is None:
        pip = installed_command("pip")
        missing.append(
            f"granian is not installed in this Python ({sys.executable}): install it,"
            f" {pip} install granian (or the test or the bench extra: {pip} install -e '.[test]')"
        )
    return missing


def _free_port(host: str) -> int:
    """A port free on ``host`` now. nginx cannot say which port it got for 0, so it is given
    one this way; another program could take it in between, and then nginx says so."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _stop_with_parent() -> Callable[[], None] | None:
    """For Popen's ``preexec_fn`` (Linux): the child gets SIGTERM when this process ends,
    however it ends, as the servers started with ``--exit-with-parent`` stop by themselves;
    nginx and granian have no such option. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: not after the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Sandbox:
    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        host: str = LOOPBACK,
        directory_port: int = 0,
        bank_port: int = 0,
        tpp_port: int | None = 0,
        mode: str = "process",
        log_files: bool = True,
        startup_timeout: float = 30.0,
        revocation_cache_seconds: int | None = None,
        server: str = "werkzeug",
    ) -> None:
        if mode not in ("process", "thread"):
            raise ValueError("mode is 'process' or 'thread'")
        if server not in SERVERS:
            raise ValueError(f"server is one of {', '.join(SERVERS)}")
        if server == "granian" and mode != "process":
            raise ValueError("the bank runs under granian as processes only (mode='process')")
        self.folder = Path(folder).resolve()
        self.host = host
        self.directory_port = directory_port
        self.bank_port = bank_port
        #: the TPP's web page's port (0: a free one; None: no page)
        self.tpp_port = tpp_port
        self.mode = mode
        self.log_files = log_files
        self.startup_timeout = startup_timeout
        #: the bank's OBDCR_REVOCATION_CACHE_SECONDS (None: the extension's default, 300): how
        #: long it trusts an OCSP or CRL answer about a certificate before asking again
        self.revocation_cache_seconds = revocation_cache_seconds
        #: what runs the bank: "werkzeug" (its own TLS), or "granian" (behind nginx)
        self.server = server
        self.granian_workers = GRANIAN_WORKERS
        #: granian's ``host:port`` behind nginx (``server="granian"``, once it runs)
        self.bank_upstream: str | None = None
        self.directory_url: str | None = None
        self.bank_url: str | None = None
        #: the TPP's web page (its redirect URI: ``tpp_url + "/callback"``), None without one
        self.tpp_url: str | None = None
        self.directory_state: DirectoryState | None = None
        self.bank_app: Any = None
        self._processes: list[tuple[str, subprocess.Popen, IO | None]] = []
        self._servers: list[Any] = []
        self._nginx: Nginx | None = None
        #: the processes started in a session of their own: their group is killed at stop
        self._groups: set[int] = set()
        self._lock: IO | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def directory_folder(self) -> Path:
        return self.folder / "directory"

    @property
    def ca_bundle(self) -> Path:
        return self.directory_folder / "ca-bundle.pem"

    @property
    def tpp_folder(self) -> Path:
        return self.folder / "tpp"

    @property
    def logs_folder(self) -> Path:
        return self.folder / "logs"

    @property
    def run_folder(self) -> Path:
        return _run_folder(self.folder)

    @property
    def nginx_folder(self) -> Path:
        """nginx's configuration, pid file, logs and temporary files (``server="granian"``)."""
        return self.run_folder / "nginx"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start both servers; :class:`SandboxRunning` (and nothing touched) if another
        process runs a sandbox in this folder; :class:`SandboxError` (and nothing touched)
        if the machine lacks what ``server`` needs (:func:`missing_for`)."""
        missing = missing_for(self.server)
        if missing:
            raise SandboxError(f"the bank cannot run under {self.server}: {'; '.join(missing)}")
        self._acquire()
        try:
            state = DirectoryState.open(self.directory_folder)
            self.directory_state = state
            hosts = list(dict.fromkeys([self.host, "127.0.0.1", "localhost"]))
            directory_tls = state.issue_server_certificate(state.folder / "tls", hosts=hosts)
            bank_tls = state.issue_server_certificate(self.folder / "tls", name="bank", hosts=hosts)
            tpp_tls = state.issue_server_certificate(self.folder / "tls", name="tpp", hosts=hosts)
            if self.mode == "thread":
                self._start_threads(state, directory_tls, bank_tls)
            else:
                self._start_processes(bank_tls)
            if self.tpp_port is not None:
                self._start_tpp_web(tpp_tls)
            write_json(
                self.run_folder / "sandbox.json",
                {
                    "pid": os.getpid(),
                    "directory_url": self.directory_url,
                    "bank_url": self.bank_url,
                    "tpp_url": self.tpp_url,
                    "ca_bundle": str(self.ca_bundle),
                    "mode": self.mode,
                    "server": self.server,
                },
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _acquire(self) -> None:
        """Take the folder's lock, or raise :class:`SandboxRunning`."""
        if self._lock is not None:
            return
        self.run_folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.run_folder / "sandbox.lock", "a+")  # noqa: SIM115 - closed in stop()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SandboxRunning(self.folder, _running_info(self.folder)) from None
        self._lock = handle

    def _release(self) -> None:
        if self._lock is None:
            return
        (self.run_folder / "sandbox.json").unlink(missing_ok=True)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None

    def _start_threads(self, state: DirectoryState, directory_tls, bank_tls) -> None:
        from flask_obdcr.testing.loopback import LoopbackServer

        from .bank import create_app, sandbox_config
        from .directory import create_directory_app
        from .serving import tls_context

        directory = LoopbackServer(
            None,
            host=self.host,
            port=self.directory_port,
            ssl_context=tls_context(*directory_tls),
            name="directory",
        )
        self._servers.append(directory)
        directory.app = create_directory_app(state, base_url=directory.url)
        directory.start()
        self.directory_url = directory.url

        bank = LoopbackServer(
            None,
            host=self.host,
            port=self.bank_port,
            ssl_context=tls_context(*bank_tls, client_ca_file=self.ca_bundle),
            name="anybank",
        )
        self._servers.append(bank)
        config = sandbox_config(
            issuer=bank.url, directory_url=directory.url, ca_file=str(self.ca_bundle)
        )
        if self.revocation_cache_seconds is not None:
            config["OBDCR_REVOCATION_CACHE_SECONDS"] = self.revocation_cache_seconds
        write_json(self.folder / "anybank.json", config)
        self.bank_app = create_app(config, instance_path=self.folder)
        bank.app = self.bank_app
        bank.start()
        self.bank_url = bank.url

    def _start_tpp_web(self, tls: tuple[Path, Path]) -> None:
        """The TPP's web page, reading the TPP's working folder (``tpp/``)."""
        self.tpp_folder.mkdir(parents=True, exist_ok=True)
        if self.mode == "thread":
            from flask_obdcr.testing.loopback import LoopbackServer

            from .serving import tls_context
            from .tpp_web import create_tpp_web_app

            server = LoopbackServer(
                None,
                host=self.host,
                port=self.tpp_port or 0,
                ssl_context=tls_context(*tls),
                name="tpp-web",
            )
            self._servers.append(server)
            server.app = create_tpp_web_app(self.tpp_folder, redirect_uri=f"{server.url}/callback")
            server.start()
            self.tpp_url = server.url
            return
        url_file = self.run_folder / "tpp.url"
        url_file.unlink(missing_ok=True)
        self.tpp_url = self._spawn(
            "tpp",
            [
                "-m",
                "example_app.tpp",
                "--workdir",
                str(self.tpp_folder),
                "web",
                "--host",
                self.host,
                "--port",
                str(self.tpp_port or 0),
                "--cert",
                str(tls[0]),
                "--key",
                str(tls[1]),
                "--url-file",
                str(url_file),
                "--exit-with-parent",
            ],
            url_file,
        )

    def _start_processes(self, bank_tls: tuple[Path, Path]) -> None:
        run = self.run_folder
        run.mkdir(exist_ok=True)
        directory_url_file = run / "directory.url"
        bank_url_file = run / "bank.url"
        for stale in (directory_url_file, bank_url_file):
            stale.unlink(missing_ok=True)
        self.directory_url = self._spawn(
            "directory",
            [
                "-m",
                "example_app.directory",
                "serve",
                "--state",
                str(self.directory_folder),
                "--host",
                self.host,
                "--port",
                str(self.directory_port),
                "--url-file",
                str(directory_url_file),
                "--exit-with-parent",
            ],
            directory_url_file,
        )
        if self.server == "granian":
            self._start_bank_behind_nginx(bank_tls)
            write_file(bank_url_file, f"{self.bank_url}\n")  # as the Werkzeug bank does
            return
        bank_options = []
        if self.revocation_cache_seconds is not None:
            bank_options = ["--revocation-cache-seconds", str(self.revocation_cache_seconds)]
        self.bank_url = self._spawn(
            "bank",
            [
                "-m",
                "example_app.bank",
                "serve",
                *bank_options,
                "--instance",
                str(self.folder),
                "--host",
                self.host,
                "--port",
                str(self.bank_port),
                "--directory-url",
                self.directory_url,
                "--ca",
                str(self.ca_bundle),
                "--url-file",
                str(bank_url_file),
                "--exit-with-parent",
            ],
            bank_url_file,
        )

    def _start_bank_behind_nginx(self, bank_tls: tuple[Path, Path]) -> None:
        """The bank under granian on a free loopback port, plain HTTP, behind nginx on
        ``bank_port``: nginx terminates TLS with the bank's certificate, asks every client
        for its transport certificate, verifies it against the sandbox CA and passes it on
        in ``Client-Cert`` (example_app/nginx/anybank.conf, nothing changed but its
        placeholders). The command line is example_app/wsgi.py's, with two workers."""
        from .bank import CONFIG_FILE, KEPT, sandbox_config
        from .wsgi import INSTANCE_ENV, request_variables

        assert self.directory_url is not None, "the Directory runs first"
        binary, js_module = find_nginx()
        port = self.bank_port or _free_port(self.host)
        url = _url("https", self.host, port)
        # what `python -m example_app.bank serve` writes: the bank's settings for this URL,
        # with what an operator chose at an earlier start (audiences, auth methods) kept
        config_file = self.folder / CONFIG_FILE
        earlier = read_json(config_file, None) or {}
        config = sandbox_config(
            issuer=url, directory_url=self.directory_url, ca_file=str(self.ca_bundle)
        )
        config.update({key: value for key, value in earlier.items() if key in KEPT})
        if self.revocation_cache_seconds is not None:
            config["OBDCR_REVOCATION_CACHE_SECONDS"] = self.revocation_cache_seconds
        write_json(config_file, config)

        upstream = f"{LOOPBACK}:{_free_port(LOOPBACK)}"
        # granian copies its environment into every request's WSGI environ: nothing that
        # reads as request data (example_app/wsgi.py refuses to start with it)
        env = self._child_env()
        for name in request_variables(env):
            del env[name]
        env[INSTANCE_ENV] = str(self.folder)
        host, granian_port = upstream.rsplit(":", 1)
        process = self._launch(
            "bank",
            [
                "-m", "granian", "--interface", "wsgi", "--factory",
                "--host", host, "--port", granian_port, "--http", "1",
                "--workers", str(self.granian_workers), "--blocking-threads", "1",
                "--respawn-failed-workers", "--access-log",
                "example_app.wsgi:granian_behind_nginx",
            ],
            env=env,
            own_session=True,
        )  # fmt: skip
        self._wait("bank", process, lambda: self._answers(f"http://{upstream}/"))
        self.bank_upstream = upstream

        self._nginx = Nginx(binary, js_module, self.nginx_folder, preexec_fn=_stop_with_parent())
        values = template_values(
            listen=f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}",
            server_name=self.host,
            tls_cert=bank_tls[0],
            tls_key=bank_tls[1],
            client_ca=self.ca_bundle,
            upstream=upstream,
        )
        try:
            self.bank_url = self._nginx.start(
                values, url=url, ca_bundle=self.ca_bundle, timeout=self.startup_timeout
            )
        except NginxError as exc:
            raise SandboxError(f"nginx, in front of the bank, did not start: {exc}") from None

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with requests.Session() as session:
                session.trust_env = False  # loopback: no proxy
                return session.get(url, timeout=(1, 5)).status_code == 200
        except requests.RequestException:
            return False

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # the example is importable from the checkout even before `pip install -e .` knew it
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _launch(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        own_session: bool = False,
    ) -> subprocess.Popen:
        """``python ARGS`` (this interpreter), its output in logs/NAME.log or this terminal.
        ``own_session``: in a session of its own, stopped with this process (a server
        without ``--exit-with-parent``), its whole group killed at :meth:`stop`."""
        log: IO | None = None
        if self.log_files:
            self.logs_folder.mkdir(exist_ok=True)
            log = open(self.logs_folder / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            env=self._child_env() if env is None else env,
            # where make serve runs: the folder in which the commands the servers print (the
            # portal's next commands) are typed; every path they are given is absolute
            cwd=os.getcwd(),
            start_new_session=own_session,
            preexec_fn=_stop_with_parent() if own_session else None,
        )
        self._processes.append((name, process, log))
        if own_session:
            self._groups.add(process.pid)
        return process

    def _wait(self, name: str, process: subprocess.Popen, ready: Callable[[], Any]) -> Any:
        """Until ``ready()`` gives something (returned), or :class:`SandboxError` if the
        process exits or ``startup_timeout`` passes."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            found = ready()
            if found:
                return found
            if process.poll() is not None:
                raise SandboxError(
                    f"{name} exited with status {process.returncode}{self._log(name)}"
                )
            time.sleep(0.05)
        raise SandboxError(f"{name} did not start in {self.startup_timeout:.0f} s{self._log(name)}")

    def _spawn(self, name: str, args: list[str], url_file: Path) -> str:
        process = self._launch(name, args)

        def url() -> str | None:
            return url_file.read_text().strip() if url_file.exists() else None

        return self._wait(name, process, url)

    def _log(self, name: str) -> str:
        path = self.logs_folder / f"{name}.log"
        if not self.log_files or not path.exists():
            return ""
        return f"; its log ({path}):\n" + path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Stop whatever runs (the TPP's page, the bank, then the Directory), then free the
        folder.
        Idempotent."""
        stopped_processes = bool(self._processes)
        while self._servers:
            self._servers.pop().stop()
        if self._nginx is not None:  # before the bank behind it
            self._nginx.stop()
            self._nginx = None
        while self._processes:
            _name, process, log = self._processes.pop()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            if process.pid in self._groups:
                self._groups.discard(process.pid)
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # a worker left behind
                except ProcessLookupError:
                    pass
            if log is not None:
                log.close()
        if stopped_processes:  # their URLs are stale now
            for name in ("directory.url", "bank.url", "tpp.url"):
                (self.run_folder / name).unlink(missing_ok=True)
        self._release()

    @property
    def pids(self) -> list[int]:
        return [process.pid for _name, process, _log in self._processes]

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
