"""AnyBank's own secrets, made once and kept in the instance folder (owner-only files).

* ``anybank-secret.key``: the Flask ``SECRET_KEY`` that signs the customer's session cookie
  (unless the configuration gives ``SECRET_KEY``);
* ``anybank-id-token-ps256.pem`` and ``anybank-id-token-es256.pem``: one id_token signing key
  per algorithm FAPI allows, published (public part, ``kid`` = RFC 7638 thumbprint) at
  ``/jwks``.

Each file is written whole under a temporary name and then linked into place, so when two
processes start at once (gunicorn's workers) one key wins and both use it.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from typing import Any

from joserfc.jwk import ECKey, RSAKey

__all__ = ["ID_TOKEN_ALGS", "SECRET_KEY_FILE", "IdTokenKeys", "secret_key"]

SECRET_KEY_FILE = "anybank-secret.key"
#: the id_token algorithms of the FAPI 1 Advanced profile, and the key each needs
ID_TOKEN_ALGS: Mapping[str, str] = {"PS256": "RSA", "ES256": "EC"}


def _create_once(path: str, data: bytes) -> bytes:
    """``data`` written to ``path`` (0600) unless the file exists; the file's content."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs stands
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    with open(path, "rb") as handle:
        return handle.read()


def _read_or_create(path: str, make: Any) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return _create_once(path, make())


def secret_key(instance_path: str) -> bytes:
    """The session signing key of ``<instance>/anybank-secret.key``, made on first use."""
    path = os.path.join(instance_path, SECRET_KEY_FILE)
    return _read_or_create(path, lambda: secrets.token_hex(32).encode()).strip()


class IdTokenKeys:
    """The bank's id_token signing keys, one per algorithm of :data:`ID_TOKEN_ALGS`."""

    def __init__(self, instance_path: str) -> None:
        self._keys: dict[str, RSAKey | ECKey] = {}
        for alg, kty in ID_TOKEN_ALGS.items():
            path = os.path.join(instance_path, f"anybank-id-token-{alg.lower()}.pem")
            key_class = RSAKey if kty == "RSA" else ECKey

            def make(key_class: Any = key_class, kty: str = kty) -> bytes:
                size = 2048 if kty == "RSA" else "P-256"
                return bytes(key_class.generate_key(size).as_pem(private=True))

            pem = _read_or_create(path, make)
            loaded = key_class.import_key(pem)
            self._keys[alg] = key_class.import_key(
                pem, {"kid": loaded.thumbprint(), "use": "sig", "alg": alg}
            )

    def key(self, alg: str) -> RSAKey | ECKey:
        """The private key for ``alg``; KeyError for an algorithm the bank does not sign with."""
        return self._keys[alg]

    def jwks(self) -> dict[str, Any]:
        """The public keys, as ``/jwks`` publishes them."""
        return {"keys": [key.as_dict(private=False) for key in self._keys.values()]}
