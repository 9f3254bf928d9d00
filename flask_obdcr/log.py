"""The extension's loggers, which never let a request forge a log line.

Everything a request carries (path, headers, JWT headers and claims, SSA claims, the client
certificate's subject) may hold CR, LF or other control characters; written raw, ``GET
/register/x%0a<fake line>`` would add a line of the attacker's choosing to the log. A filter on
every logger of the extension escapes the arguments of each record (the format string is ours),
so no call site has to remember to.
"""

from __future__ import annotations

import logging
import re

__all__ = ["escape", "get_logger", "redact_authlib_tokens"]

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(value: object) -> str:
    """``value`` as text with every control character written as a visible escape."""
    return _CONTROLS.sub(
        lambda match: (
            f"\\x{ord(match.group()):02x}"
            if ord(match.group()) < 0x100
            else f"\\u{ord(match.group()):04x}"
        ),
        str(value),
    )


class EscapeControls(logging.Filter):
    """Escape control characters in a record's arguments (numbers are left as they are)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_safe(arg) for arg in args)
        elif isinstance(args, dict):
            record.args = {key: _safe(arg) for key, arg in args.items()}
        return True


def _safe(arg: object) -> object:
    if arg is None or isinstance(arg, bool | int | float):
        return arg
    return escape(arg)


_FILTER = EscapeControls()


def get_logger(name: str = "flask_obdcr") -> logging.Logger:
    """The logger ``name`` with the escaping filter attached (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


#: what a token response or client record holds that must never reach a log
SECRET_FIELDS = frozenset(
    {"access_token", "refresh_token", "id_token", "client_secret", "registration_access_token"}
)


class RedactTokens(logging.Filter):
    """Authlib's grants log every issued token at DEBUG (``Issue token %r to %r``): the token
    is a bearer credential, so its secret fields are replaced before the record is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        return True


def _redacted(arg: object) -> object:
    if isinstance(arg, dict) and SECRET_FIELDS & arg.keys():
        return {k: "[redacted]" if k in SECRET_FIELDS else v for k, v in arg.items()}
    return arg


_REDACT = RedactTokens()


def redact_authlib_tokens() -> None:
    """Attach :class:`RedactTokens` to every Authlib logger created so far (the grants'
    modules are imported with the authorization server)."""
    for name in list(logging.root.manager.loggerDict):
        if name == "authlib" or name.startswith("authlib."):
            logger = logging.getLogger(name)
            if _REDACT not in logger.filters:
                logger.addFilter(_REDACT)
