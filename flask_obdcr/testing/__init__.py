"""A sandbox Open Banking Directory for tests and demos.

``SandboxDirectory`` makes the PKI, the software statements, the JWKS and the signed
registration requests; ``JWKSServer`` serves its JWKS over real HTTPS on loopback; the
pytest fixtures in :mod:`flask_obdcr.testing.fixtures` are opt-in::

    pytest_plugins = ["flask_obdcr.testing.fixtures"]
"""

from .clock import FrozenClock
from .directory import REMOVE, SandboxDirectory, Software, base62_id, sign_jwt
from .pki import CertificateAuthority, generate_key, ob_subject
from .server import JWKSServer, RecordingHTTPServer

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
