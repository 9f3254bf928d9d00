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
                      sandbox.json (its pid and URLs), the servers' *.url files

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

One sandbox at a time per folder: ``start()`` takes ``run/sandbox.lock`` (an ``flock``, so it
is released when its process ends, however it ends) and raises :class:`SandboxRunning`, with
the running one's pid and URLs, if another process holds it; it then touches nothing in the
folder. :func:`running` says whether (and where) a sandbox runs in a folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from ._util import write_json
from .directory import DirectoryState

__all__ = ["Sandbox", "SandboxError", "SandboxRunning", "running"]

LOOPBACK = "127.0.0.1"


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
    ) -> None:
        if mode not in ("process", "thread"):
            raise ValueError("mode is 'process' or 'thread'")
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
        self.directory_url: str | None = None
        self.bank_url: str | None = None
        #: the TPP's web page (its redirect URI: ``tpp_url + "/callback"``), None without one
        self.tpp_url: str | None = None
        self.directory_state: DirectoryState | None = None
        self.bank_app: Any = None
        self._processes: list[tuple[str, subprocess.Popen, IO | None]] = []
        self._servers: list[Any] = []
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

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start both servers; :class:`SandboxRunning` (and nothing touched) if another
        process runs a sandbox in this folder."""
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
                self._start_processes()
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

    def _start_processes(self) -> None:
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

    def _spawn(self, name: str, args: list[str], url_file: Path) -> str:
        env = dict(os.environ)
        # the example is importable from the checkout even before `pip install -e .` knew it
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        log: IO | None = None
        if self.log_files:
            self.logs_folder.mkdir(exist_ok=True)
            log = open(self.logs_folder / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            env=env,
            # where make serve runs: the folder in which the commands the servers print (the
            # portal's next commands) are typed; every path they are given is absolute
            cwd=os.getcwd(),
        )
        self._processes.append((name, process, log))
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if url_file.exists():
                url = url_file.read_text().strip()
                if url:
                    return url
            if process.poll() is not None:
                raise SandboxError(
                    f"{name} exited with status {process.returncode}{self._log(name)}"
                )
            time.sleep(0.05)
        raise SandboxError(f"{name} did not start in {self.startup_timeout:.0f} s{self._log(name)}")

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
        while self._processes:
            _name, process, log = self._processes.pop()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
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
