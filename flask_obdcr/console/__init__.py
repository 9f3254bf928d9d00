"""The operator console: server-rendered pages over the registered clients.

::

    bp = dcr.console_blueprint(authorize=can_see_console)   # called before every page -> bool
    app.register_blueprint(bp, url_prefix="/console")

Glue, like :mod:`flask_obdcr.views`: it reads the per-app state from
``app.extensions["obdcr"]``. The actions (suspend, reinstate, delete) are POST forms carrying a
CSRF token kept in :data:`flask.session`, so they need the host app's ``SECRET_KEY``; without
one, the pages still show and every action answers 400 saying so.
"""

from __future__ import annotations

from .views import console_blueprint

__all__ = ["console_blueprint"]
