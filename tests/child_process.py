"""The environment of a process a test starts from the checkout (``python -m example_app...``,
``make``, granian): this process's, less the variables that would change what the child does,
with the repository importable and its output unbuffered (a test reads it as it comes)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def checkout_environment(excluded: Collection[str] = (), **extra: str) -> dict[str, str]:
    """``os.environ`` without ``excluded``, ``PYTHONPATH`` starting with the checkout,
    ``PYTHONUNBUFFERED=1``, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in excluded}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
