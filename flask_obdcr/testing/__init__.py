"""A sandbox Open Banking Directory for tests and demos.

``SandboxDirectory`` (the Directory's side: :mod:`.directory`) makes the PKI, the software
statements, the JWKS and the signed registration requests; a ``Software`` (the TPP's side:
:mod:`.software`) holds a TPP's keys and certificates and signs its client assertions, with the
JOSE helpers of :mod:`.jose`; ``JWKSServer`` serves its JWKS over real HTTPS on loopback; the
pytest fixtures in :mod:`flask_obdcr.testing.fixtures` are opt-in::

    pytest_plugins = ["flask_obdcr.testing.fixtures"]
"""

from .clock import FrozenClock
from .directory import SandboxDirectory
from .jose import REMOVE, sign_jwt
from .pki import CertificateAuthority, generate_key, ob_subject
from .server import JWKSServer, RecordingHTTPServer
from .software import Software, base62_id

__all__ = [
    "REMOVE",
    "CertificateAuthority",
    "FrozenClock",
    "JWKSServer",
    "RecordingHTTPServer",
    "SandboxDirectory",
    "Software",
    "base62_id",
    "generate_key",
    "ob_subject",
    "sign_jwt",
]
