"""A gunicorn entry point for test_concurrency.py: AnyBank whose stores are used before fork.

``gunicorn --preload 'concurrency_bank:warm_bank(instance_path=...)'`` builds the app in the
master, which then reads the client store and the token store (as an app factory that checks
its database at start-up would), so every worker is forked holding the master's open SQLite
connection or pooled PostgreSQL connections. The stores must not use those in the workers.
"""

from __future__ import annotations

import os

from flask import Flask

from example_app.wsgi import gunicorn_tls


def warm_bank(*, instance_path: str | os.PathLike[str]):
    app = gunicorn_tls(instance_path=instance_path)
    bank = app.app  # the middleware is typed to wrap any WSGI app; this one wraps AnyBank's
    assert isinstance(bank, Flask)
    state = bank.extensions["obdcr"]
    with bank.app_context():
        len(state.store)  # opens (and keeps) a connection in the master
        list(state.store.list())
        state.tokens.find("no-such-token")
    return app
