"""A private OpenLDAP server for the tests: Debian's slapd, not its packaged service.

:class:`Slapd` builds a ``cn=config`` directory in a temporary directory (core, cosine,
inetorgperson and the obdcr schema; one mdb database), loads the suffix entry offline with
``slapadd``, and runs ``slapd`` in the foreground on a free loopback port until :meth:`stop`.
It takes well under a second. ``python tests/ldap_server.py`` runs one until Ctrl-C.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from flask_obdcr.storage.ldap import openldap_schema_ldif

SUFFIX = "dc=obdcr,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "obdcr-test-root-password"
#: an ordinary account, as a bank would give the store: write access to the suffix only,
#: bound by the default size limit like any DN but the rootdn
SERVICE_DN = f"cn=obdcr-service,{SUFFIX}"
SERVICE_PASSWORD = "obdcr-test-service-password"
SIZE_LIMIT = 500
#: where slapd is looked for: $OBDCR_TEST_SLAPD, then sbin (which a non-root PATH often
#: lacks), then PATH
SEARCH_PATH = os.pathsep.join(
    ["/usr/sbin", "/usr/local/sbin", "/usr/local/libexec", os.environ.get("PATH", "")]
)
#: Debian's layout first, then Red Hat's and Homebrew's
SCHEMA_DIRS = ["/etc/ldap/schema", "/etc/openldap/schema", "/usr/local/etc/openldap/schema",
               "/opt/homebrew/etc/openldap/schema"]  # fmt: skip
MODULE_DIRS = ["/usr/lib/ldap", "/usr/lib64/openldap", "/usr/lib/openldap"]
#: the largest request an authenticated client may send (slapd's default, made explicit)
MAX_INCOMING_AUTH = 4 * 1024 * 1024 - 1


class SlapdNotFound(RuntimeError):
    """slapd is not installed."""


def find_slapd() -> str:
    slapd = os.environ.get("OBDCR_TEST_SLAPD") or shutil.which("slapd", path=SEARCH_PATH)
    if not slapd or not os.access(slapd, os.X_OK):
        raise SlapdNotFound(
            f"slapd not found ({slapd or 'looked in /usr/sbin and PATH'}; OBDCR_TEST_SLAPD "
            "names another); on Debian: apt-get install slapd ldap-utils"
        )
    return slapd


def schema_dir() -> Path:
    for candidate in SCHEMA_DIRS:
        if (Path(candidate) / "core.ldif").is_file():
            return Path(candidate)
    raise SlapdNotFound(f"OpenLDAP's core.ldif not found in {', '.join(SCHEMA_DIRS)}")


def module_dir() -> Path | None:
    """Where back_mdb is, or None if this slapd has it built in."""
    for candidate in MODULE_DIRS:
        if list(Path(candidate).glob("back_mdb*")):
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def config_ldif(workdir: Path, schemas: Path, modules: Path | None) -> str:
    includes = "".join(
        f"include: file://{schemas / name}.ldif\n" for name in ("core", "cosine", "inetorgperson")
    )
    load = (
        f"""dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {modules}
olcModuleLoad: back_mdb

"""
        if modules
        else ""
    )
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {workdir / "slapd.pid"}
olcArgsFile: {workdir / "slapd.args"}
olcSockbufMaxIncomingAuth: {MAX_INCOMING_AUTH}

{load}dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}include: file://{workdir / "obdcr.ldif"}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {workdir / "data"}
olcSuffix: {SUFFIX}
olcRootDN: {ROOT_DN}
olcRootPW: {ROOT_PASSWORD}
olcDbMaxSize: 1073741824
olcDbNoSync: TRUE
olcDbIndex: objectClass eq
olcDbIndex: obdcrClientId eq
olcDbIndex: obdcrSoftwareId eq
olcDbIndex: obdcrOrgId eq
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{SERVICE_DN}" write by * none
olcSizeLimit: {SIZE_LIMIT}
olcLimits: dn.exact="{SERVICE_DN}" size.prtotal=unlimited
"""


SUFFIX_LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: obdcr
o: flask-obdcr tests

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: obdcr-service
userPassword: {SERVICE_PASSWORD}
"""


class Slapd:
    """One private slapd; ``url``, ``suffix``, ``root_dn`` and ``root_password`` to use it."""

    suffix = SUFFIX
    root_dn = ROOT_DN
    root_password = ROOT_PASSWORD
    service_dn = SERVICE_DN
    service_password = SERVICE_PASSWORD

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self.slapd = find_slapd()
        self.schema_dir = schema_dir()
        self.module_dir = module_dir()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="obdcr-slapd-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = self.workdir / "slapd.log"

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def _build(self) -> None:
        config_dir = self.workdir / "slapd.d"
        config_dir.mkdir()
        (self.workdir / "data").mkdir()
        (self.workdir / "obdcr.ldif").write_text(openldap_schema_ldif())
        (self.workdir / "config.ldif").write_text(
            config_ldif(self.workdir, self.schema_dir, self.module_dir)
        )
        (self.workdir / "suffix.ldif").write_text(SUFFIX_LDIF)
        for args in (
            ["-n0", "-F", str(config_dir), "-l", str(self.workdir / "config.ldif")],
            ["-n1", "-F", str(config_dir), "-l", str(self.workdir / "suffix.ldif")],
        ):
            done = subprocess.run(  # noqa: S603 - fixed arguments
                [self.slapd, "-T", "add", "-q", *args],  # slapd -T add: slapadd
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode != 0:
                raise RuntimeError(f"slapadd {' '.join(args)} failed:\n{done.stderr}")

    def start(self, timeout: float = 15.0) -> Slapd:
        atexit.register(self.stop)  # should the caller never get to stop it
        try:
            self._build()
            for _ in range(5):  # another process may take the free port before slapd binds it
                if self._launch(free_port(), timeout):
                    return self
            raise RuntimeError(f"slapd found no free port:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def restart(self, timeout: float = 15.0) -> None:
        """Stop slapd (its clients lose their connections) and start it on the same port."""
        self._terminate()
        if not self._launch(self.port, timeout):
            raise RuntimeError(f"slapd could not listen on port {self.port} again:\n{self.log()}")

    def _launch(self, port: int, timeout: float) -> bool:
        """Run slapd on ``port``; False if the port was taken."""
        self.port = port
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
                [
                    self.slapd,
                    "-d", "0",  # in the foreground, quiet (a dying slapd still says why)
                    "-h", f"ldap://127.0.0.1:{port}/",
                    "-F", str(self.workdir / "slapd.d"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if not port_is_free(port):  # slapd -d 0 does not say why it left
                    return False
                raise RuntimeError(f"slapd exited with {self.process.returncode}:\n{self.log()}")
            # slapd writes its pid file once its listener is bound and its databases are open
            if self._pid_file_names(self.process.pid):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        return True
                except OSError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"slapd did not listen on port {port} within {timeout}s:\n{self.log()}")

    def _pid_file_names(self, pid: int) -> bool:
        try:
            return (self.workdir / "slapd.pid").read_text().strip() == str(pid)
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop slapd and remove its directory (when this object made it)."""
        atexit.unregister(self.stop)
        self._terminate()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Slapd:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    with Slapd() as server:
        print(
            f"{server.url}  suffix {server.suffix}  bind {server.root_dn} / {server.root_password}"
        )
        assert server.process is not None, "start() launched slapd"
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
