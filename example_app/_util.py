"""Small helpers shared by the example's modules (files, JSON, JWT display)."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Any


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
