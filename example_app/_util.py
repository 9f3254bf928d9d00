"""Small helpers shared by the example's modules (files, JSON, JWT display, and refusals
that say what to do next)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import click


def write_file(path: str | os.PathLike[str], data: str | bytes, *, secret: bool = False) -> Path:
    """Write atomically (a reader never sees half a file); ``secret`` files are owner-only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o600 if secret else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike[str], value: Any, *, secret: bool = False) -> Path:
    return write_file(path, json.dumps(value, indent=2) + "\n", secret=secret)


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def b64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, *without* checking the signature (for display)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS (three dot-separated parts)")
    return b64url_json(parts[0]), b64url_json(parts[1])


def abbreviate(text: str, keep: int = 24) -> str:
    return text if len(text) <= 2 * keep + 3 else f"{text[:keep]}...{text[-keep:]}"


# -- refusals that say what to do next --------------------------------------------------------


class Refusal(click.ClickException):
    """A command that could not do its work: exit status 1, and besides click's ``Error:``
    line one line of cause, one of remedy (what to run next) and the folder it looked in.

    :meth:`format_message` is the first line alone (what ``make demo`` prints for a refusal
    it expects); :meth:`details` are the lines after it."""

    def __init__(
        self,
        message: str,
        *,
        cause: str,
        remedy: str,
        folder: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.remedy = remedy
        self.folder = None if folder is None else Path(folder)

    def details(self) -> list[str]:
        lines = [f"  cause: {self.cause}", f"  next:  {self.remedy}"]
        if self.folder is not None:
            lines.append(f"  working folder: {self.folder}")
        return lines

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None)
        for line in self.details():
            click.echo(line, file=file, err=file is None)


def program_name(script: str, module: str) -> str:
    """The name a command line was started by: its console script (``obdcr-tpp``) when
    ``sys.argv[0]`` is that, else ``python -m <module>``."""
    started = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script if started == script else module


def placeholder(value: str) -> bool:
    """A value copied from a banner or a README as it stands (``<org_id>``, ``ORG_ID``...)."""
    stripped = value.strip()
    return (
        not stripped
        or "<" in stripped
        or ">" in stripped
        or stripped.upper() in {"ORG_ID", "SOFTWARE_ID", "KID", "CLIENT_ID"}
    )


def refuse_placeholder(value: str, name: str, remedy: str) -> str:
    """``value``, or a :class:`click.BadParameter` (exit status 2) saying it is a
    placeholder and what to pass instead."""
    if placeholder(value):
        shown = value.strip() or "an empty value"
        raise click.BadParameter(f"`{shown}` is a placeholder: {remedy}")
    return value


#: TLS failures in a ``requests`` error, by the OpenSSL reason it names: name -> (markers,
#: cause, remedy, whether it is about the client certificate); ``{server}`` (the Directory, the
#: bank), ``{cert}``, ``{ca}``, ``{prog}`` and ``{ca_option}`` are filled in
TLS_FAILURES: dict[str, tuple[tuple[str, ...], str, str, bool]] = {
    "KEY_VALUES_MISMATCH": (
        ("KEY_VALUES_MISMATCH",),
        "{cert} is not the certificate of its key (the key was replaced after the certificate"
        " was issued)",
        "have the new keys certified: run `{prog} upload-csr`, then `{prog} download`",
        True,
    ),
    "CERTIFICATE_EXPIRED": (
        ("CERTIFICATE_EXPIRED",),
        "{server} refused the TLS handshake: {cert} has expired (TLS alert certificate_expired)",
        "get new certificates: `{prog} keys --force`, `{prog} upload-csr`, `{prog} download`",
        True,
    ),
    "CERTIFICATE_REVOKED": (
        ("CERTIFICATE_REVOKED",),
        "{server} refused the TLS handshake: {cert} has been revoked (TLS alert"
        " certificate_revoked)",
        "get new certificates: `{prog} keys --force`, `{prog} upload-csr`, `{prog} download`",
        True,
    ),
    "UNKNOWN_CA": (
        ("UNKNOWN_CA",),
        "{server} refused the TLS handshake: it does not trust the CA that issued {cert} (TLS"
        " alert unknown_ca)",
        "use a certificate the sandbox Directory issued (`{prog} upload-csr`, `{prog}"
        " download`), from the Directory {server} trusts",
        True,
    ),
    "EOF": (
        ("EOF occurred in violation of protocol", "UNEXPECTED_EOF"),
        "{server} closed the connection during the TLS handshake: it refused {cert}",
        "look at it (`{prog} decode {cert}`): it must be unexpired and issued by the Directory"
        " {server} trusts; new ones: `{prog} keys --force`, `{prog} upload-csr`, `{prog}"
        " download`",
        True,
    ),
    "CERTIFICATE_VERIFY_FAILED": (
        ("CERTIFICATE_VERIFY_FAILED",),
        "{server}'s HTTPS certificate is not signed by a CA of {ca}",
        "pass the CA bundle of the running sandbox (`make serve` prints it: usually"
        " instance/directory/ca-bundle.pem) with {ca_option}",
        False,
    ),
}


def connection_refusal(
    exc: BaseException,
    url: str,
    *,
    server: str,
    prog: str,
    ca: str,
    ca_option: str = "--ca",
    cert: str | None = None,
    eof_means: str | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> Refusal:
    """A :class:`Refusal` for a ``requests`` error reaching ``url`` (``server``: "the bank",
    "the Directory"; ``cert``: the client certificate presented, if any): refused connections,
    time-outs and TLS alerts, translated into a cause and what to do next.

    A server that refuses a client certificate under TLS 1.3 may close the connection before
    its alert is read: ``eof_means`` (a key of :data:`TLS_FAILURES`, from what the caller
    sees wrong with the certificate) says what to make of such an end."""
    base = _origin(url)
    text = str(exc)
    if "Connection refused" in text or "Errno 111" in text:
        return Refusal(
            f"cannot reach {server} at {base}",
            cause=f"nothing answers at {base} (connection refused)",
            remedy=f"is `make serve` running? ({server} expected at {base})",
            folder=folder,
        )
    if "timed out" in text.lower() or "Timeout" in type(exc).__name__:
        return Refusal(
            f"{server} at {base} did not answer in time",
            cause=f"{base} accepted the connection but sent no answer",
            remedy=f"is `make serve` running, and not stopped in a debugger? ({server} expected"
            f" at {base})",
            folder=folder,
        )
    values = {
        "server": server,
        "cert": cert or "",
        "ca": ca,
        "prog": prog,
        "ca_option": ca_option,
    }
    for name, (markers, cause, remedy, about_cert) in TLS_FAILURES.items():
        if (cert is None and about_cert) or not any(m in text for m in markers):
            continue
        if name == "EOF" and eof_means in TLS_FAILURES:
            _markers, cause, remedy, _about = TLS_FAILURES[eof_means]
        return Refusal(
            f"TLS with {base} failed",
            cause=cause.format(**values) + f"; OpenSSL: {_reason(text)}",
            remedy=remedy.format(**values),
            folder=folder,
        )
    return Refusal(
        f"cannot reach {server} at {base}",
        cause=_reason(text),
        remedy=f"is `make serve` running? ({server} expected at {base})",
        folder=folder,
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


def _reason(text: str) -> str:
    """The innermost reason of a urllib3/requests error message ("[SSL: ...] ...")."""
    found = re.findall(
        r"\[(?:SSL|X509)[^\]]*\][^'\"]*|\[Errno \d+\][^'\"]*|EOF occurred in violation of protocol",
        text,
    )
    if not found:
        return text[-300:]
    return re.sub(r"\s*\(_ssl\.c:\d+\)\)*$", "", found[-1].strip())


def stop_process_group(process: subprocess.Popen, *, timeout: float = 10) -> None:
    """Stop a server started in a session of its own (``start_new_session``): SIGTERM to it (a
    master stops its workers), then SIGKILL to its whole group (any worker left behind)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=timeout)
