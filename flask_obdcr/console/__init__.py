"""The operator console: server-rendered pages over the registered clients.

::

    bp = dcr.console_blueprint(authorize=can_see_console)   # called before every page -> bool
    app.register_blueprint(bp, url_prefix="/console")

Glue, like :mod:`flask_obdcr.views`: it reads the per-app state from
``app.extensions["obdcr"]``. The actions (suspend, reinstate, delete) are POST forms carrying a
CSRF token kept in :data:`flask.session`, so they need the host app's ``SECRET_KEY``; without
one, the pages still show and every action answers 400 saying so.

Pages: ``/`` (the clients, with search), ``/clients/<client_id>`` (one client, its actions),
``/refused`` (the last registrations refused, each with its explain report; kept in this
process's memory from the blueprint's registration on, ``keep_refused`` of them, 50 by
default) and ``/settings`` (the validator's configuration, read-only, nothing secret).

A host app that signs its operators in can put a sign-out button in the console's header: a
context processor giving ``console_sign_out = {"url": ..., "user": ...}``; the button posts
to ``url`` with the console's CSRF token (``csrf_token`` in :data:`flask.session`).
"""

from __future__ import annotations

from .views import console_blueprint

__all__ = ["console_blueprint"]
