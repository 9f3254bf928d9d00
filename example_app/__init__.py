"""AnyBank: the flask-obdcr example.

* :mod:`example_app.bank`: ``create_app()``, the bank (authorization server, DCR, accounts API)
* :mod:`example_app.directory`: the sandbox Open Banking Directory service
* :mod:`example_app.tpp`: the TPP's command line (keys, CSRs, SSA, registration, token, API)
* :mod:`example_app.sandbox`: starts the Directory and the bank on loopback
* :mod:`example_app.demo`: ``make demo``; :mod:`example_app.serve`: ``make serve``
* :mod:`example_app.serving`, :mod:`example_app.wsgi`: HTTPS with Werkzeug, gunicorn, nginx
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app"]


def create_app(
    config: Mapping[str, Any] | None = None, *, instance_path: str | os.PathLike[str] | None = None
) -> Flask:
    """The AnyBank app: :func:`example_app.bank.create_app` (imported on first use, so that
    ``python -m example_app.bank`` does not import its own module twice)."""
    from .bank import create_app as _create_app

    return _create_app(config, instance_path=instance_path)
