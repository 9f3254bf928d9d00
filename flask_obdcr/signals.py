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
#: sent with ``registration_rejected``, for receivers that want what the refused request
#: carried (the console's refusal list): ``error``, and, untrusted, ``body`` (the bytes read,
#: at most OBDCR_MAX_REQUEST_BYTES + 1; None when it was refused before its body was read),
#: ``content_type`` (str or None) and ``certificate`` (the client certificate presented, an
#: unverified ``x509.Certificate``; None when there was none or it could not be read). A
#: signal of its own so that ``registration_rejected``'s receivers keep the keywords they
#: were written for. Receivers take ``**extra`` so that later keywords do not break them.
registration_request_refused = _signals.signal("obdcr.registration-request-refused")
#: PUT /register/<id> succeeded: ``client``, ``previous``, ``context``
client_updated = _signals.signal("obdcr.client-updated")
#: DELETE /register/<id> (or the console's delete) succeeded: ``client``
client_deleted = _signals.signal("obdcr.client-deleted")
#: re-validation or an operator (the console) suspended a client: ``client`` (as stored
#: now), ``reason``
client_suspended = _signals.signal("obdcr.client-suspended")
#: re-validation found a suspended client sound again, or an operator reinstated it:
#: ``client``
client_reinstated = _signals.signal("obdcr.client-reinstated")
