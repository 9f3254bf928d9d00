"""Signatures on OCSP responses, CRLs and delegated responder certificates: verified only with
an allow-listed algorithm and a key above the floor.

Allowed: RSA PKCS#1 v1.5 and RSA-PSS with SHA-256, SHA-384 or SHA-512; ECDSA with the same
hashes. RSA keys of at least 2048 bits, EC keys on P-256, P-384 or P-521 (the set
``certificates/verify.py`` accepts for certificates). SHA-1 (and MD5) signatures are refused:
the Open Banking and eIDAS QWAC CAs sign CRLs and OCSP responses with SHA-256, SHA-1 is
broken for collision resistance (chosen-prefix collisions are practical), and accepting it
would let the weakest algorithm any responder still supports decide the verdict. A refused
signature is treated as no answer from that source (the next source is tried; with none left
the status is unknown), never as "good".
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ObjectIdentifier, SignatureAlgorithmOID

__all__ = ["ALLOWED_ALGORITHMS", "SignatureRefused", "verify_signature"]

#: signature algorithm -> key type; PSS takes its hash from the signature's parameters
ALLOWED_ALGORITHMS: dict[ObjectIdentifier, str] = {
    SignatureAlgorithmOID.RSA_WITH_SHA256: "rsa",
    SignatureAlgorithmOID.RSA_WITH_SHA384: "rsa",
    SignatureAlgorithmOID.RSA_WITH_SHA512: "rsa",
    SignatureAlgorithmOID.RSASSA_PSS: "pss",
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: "ec",
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: "ec",
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: "ec",
}

_ALLOWED_HASHES = ("sha256", "sha384", "sha512")
_MIN_RSA_BITS = 2048
_ALLOWED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


class SignatureRefused(Exception):
    """The signature is not made with an allowed algorithm and key, or does not verify."""


def verify_signature(
    public_key: object,
    signature: bytes,
    data: bytes,
    *,
    algorithm: ObjectIdentifier,
    hash_algorithm: hashes.HashAlgorithm | None,
) -> None:
    """Verify ``signature`` over ``data``; :class:`SignatureRefused` unless it is good."""
    kind = ALLOWED_ALGORITHMS.get(algorithm)
    if kind is None:
        raise SignatureRefused(f"signature algorithm {algorithm.dotted_string} is not accepted")
    if hash_algorithm is None or hash_algorithm.name not in _ALLOWED_HASHES:
        name = hash_algorithm.name if hash_algorithm is not None else "none"
        raise SignatureRefused(f"signature hash {name} is not accepted")
    try:
        if kind in ("rsa", "pss"):
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise SignatureRefused("an RSA signature, but the signer's key is not RSA")
            if public_key.key_size < _MIN_RSA_BITS:
                raise SignatureRefused(f"the signer's RSA key has {public_key.key_size} bits")
            if kind == "rsa":
                public_key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
            else:
                # MGF1 with the message hash (what every PSS signer uses; RFC 4055 recommends
                # it); a signature made otherwise fails to verify, which refuses it.
                pss = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.AUTO)
                public_key.verify(signature, data, pss, hash_algorithm)
        else:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise SignatureRefused("an ECDSA signature, but the signer's key is not EC")
            if public_key.curve.name not in _ALLOWED_CURVES:
                raise SignatureRefused(f"the signer's EC curve {public_key.curve.name} is refused")
            public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
    except InvalidSignature:
        raise SignatureRefused("the signature does not verify") from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as error:
        raise SignatureRefused(f"the signature cannot be verified: {error}") from None
