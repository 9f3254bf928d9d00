"""Blinker signals, sent with the Flask app as sender (Flask's own convention).

>>> from flask_obdcr.signals import client_registered
>>> @client_registered.connect
... def audit(app, client, **extra): ...
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: a client was stored: ``client`` (StoredClient), ``context`` (RegistrationContext)
client_registered = _signals.signal("obdcr.client-registered")
#: a registration or update was refused: ``error`` (RegistrationError), ``code`` (wire error
#: code), ``policy`` (name of the policy that refused it, or None)
registration_rejected = _signals.signal("obdcr.registration-rejected")
#: PUT /register/<id> succeeded: ``client``, ``previous``, ``context``
client_updated = _signals.signal("obdcr.client-updated")
#: DELETE /register/<id> succeeded: ``client``
client_deleted = _signals.signal("obdcr.client-deleted")
#: re-validation suspended a client: ``client`` (as stored now), ``reason``
client_suspended = _signals.signal("obdcr.client-suspended")
#: re-validation found a suspended client sound again: ``client``
client_reinstated = _signals.signal("obdcr.client-reinstated")
