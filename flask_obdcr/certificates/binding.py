"""Which rule, if any, binds a transport certificate to a software statement (docs/architecture.md,
"Contract: registration rules": x5c in the software JWKS, the legacy OB subject, the eIDAS
organizationIdentifier)."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .dn import same_rdns, subject_rdns

__all__ = ["certificate_belongs_to_software", "psd_identifier", "thumbprint_sha256"]

_CACHE_SIZE = 256


@functools.lru_cache(maxsize=_CACHE_SIZE)
def thumbprint_sha256(certificate: x509.Certificate) -> str:
    """The RFC 8705 ``x5t#S256`` value: unpadded base64url of the SHA-256 of the DER."""
    digest = certificate.fingerprint(hashes.SHA256())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# ISO 3166 alpha-3 -> alpha-2 for the EEA and the UK (the countries whose competent authorities
# issue PSD2 authorisations), plus Gibraltar, which passported under PSD2.
_ALPHA3_TO_ALPHA2 = {
    "AUT": "AT", "BEL": "BE", "BGR": "BG", "HRV": "HR", "CYP": "CY", "CZE": "CZ", "DNK": "DK",
    "EST": "EE", "FIN": "FI", "FRA": "FR", "DEU": "DE", "GRC": "GR", "HUN": "HU", "ISL": "IS",
    "IRL": "IE", "ITA": "IT", "LVA": "LV", "LIE": "LI", "LTU": "LT", "LUX": "LU", "MLT": "MT",
    "NLD": "NL", "NOR": "NO", "POL": "PL", "PRT": "PT", "ROU": "RO", "SVK": "SK", "SVN": "SI",
    "ESP": "ES", "SWE": "SE", "GBR": "GB", "GIB": "GI",
}  # fmt: skip
# authority_id is <authority><alpha-3 country>: "OBGBR", "FCAGBR". ETSI TS 119 495 allows an
# authority code of 2 to 8 upper-case letters.
_AUTHORITY_ID_RE = re.compile(r"([A-Z]{2,8})([A-Z]{3})")
_REGISTRATION_ID_RE = re.compile(r"[^\s\x00-\x1f\x7f]+")


def psd_identifier(ssa_claims: Mapping[str, Any]) -> str | None:
    """The ETSI TS 119 495 PSD2 identifier the SSA's competent-authority claims imply.

    ``{"authority_id": "OBGBR", "registration_id": "Unknown0015800001041REAAY"}`` gives
    ``"PSDGB-OB-Unknown0015800001041REAAY"``: ``PSD`` + country alpha-2 + ``-`` + authority +
    ``-`` + registration_id. ``organisation_competent_authority_claims`` may be one object or a
    list of them; the first well-formed one is used. ``None`` if there is none.
    """
    claims = ssa_claims.get("organisation_competent_authority_claims") if ssa_claims else None
    candidates = claims if isinstance(claims, list) else [claims]
    for claim in candidates:
        if not isinstance(claim, Mapping):
            continue
        authority_id = claim.get("authority_id")
        registration_id = claim.get("registration_id")
        if not isinstance(authority_id, str) or not isinstance(registration_id, str):
            continue
        match = _AUTHORITY_ID_RE.fullmatch(authority_id)
        if match is None or not _REGISTRATION_ID_RE.fullmatch(registration_id):
            continue
        country = _ALPHA3_TO_ALPHA2.get(match.group(2))
        if country is None:
            continue
        return f"PSD{country}-{match.group(1)}-{registration_id}"
    return None


def certificate_belongs_to_software(
    certificate: x509.Certificate,
    *,
    ssa_claims: Mapping[str, Any],
    software_jwks: Mapping[str, Any] | None,
) -> str | None:
    """Name of the first rule that binds ``certificate`` to the SSA's software/org, or ``None``.

    * ``"jwks_x5c"``: the certificate is the first ``x5c`` entry (standard base64 DER) of a key
      in the software JWKS. Compared by DER, so RSA and EC certificates alike; malformed keys are
      skipped.
    * ``"ob_subject"``: the subject is exactly ``CN=<software_id>, OU=<org_id>, O=OpenBanking,
      C=GB`` (the legacy OB transport profile), compared as :func:`dn_matches` compares.
    * ``"organization_identifier"``: the subject has exactly one organizationIdentifier
      (2.5.4.97) and it equals :func:`psd_identifier` of the SSA (the eIDAS/OBWAC profile).
    """
    if software_jwks is not None and _in_jwks_x5c(certificate, software_jwks):
        return "jwks_x5c"

    software_id = ssa_claims.get("software_id")
    org_id = ssa_claims.get("org_id")
    if isinstance(software_id, str) and software_id and isinstance(org_id, str) and org_id:
        expected = [
            frozenset({(NameOID.COMMON_NAME.dotted_string, software_id)}),
            frozenset({(NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string, org_id)}),
            frozenset({(NameOID.ORGANIZATION_NAME.dotted_string, "OpenBanking")}),
            frozenset({(NameOID.COUNTRY_NAME.dotted_string, "GB")}),
        ]
        if same_rdns(expected, subject_rdns(certificate)):
            return "ob_subject"

    expected_psd = psd_identifier(ssa_claims)
    if expected_psd is not None:
        values = [
            attr.value
            for attr in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
        ]
        # Exactly one: a subject naming two organisations binds to neither.
        if values == [expected_psd]:
            return "organization_identifier"
    return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _der_and_base64(certificate: x509.Certificate) -> tuple[bytes, str]:
    # Keyed by the (immutable) certificate, whose hash and equality are its DER's; with
    # load_certificate's cache the same object comes back on every request of a TPP.
    der = certificate.public_bytes(Encoding.DER)
    return der, base64.b64encode(der).decode("ascii")


def _in_jwks_x5c(certificate: x509.Certificate, jwks: Mapping[str, Any]) -> bool:
    """``certificate``'s DER is the first ``x5c`` entry (strictly decoded base64, whitespace
    ignored) of a key of ``jwks``; malformed keys and entries are skipped. Found without
    decoding every entry: a canonical entry is compared as text."""
    der, der_b64 = _der_and_base64(certificate)
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        return False
    for key in keys:
        x5c = key.get("x5c") if isinstance(key, Mapping) else None
        if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
            continue
        # RFC 7517 4.7: x5c entries are standard base64 (not base64url) DER, first = the key's cert.
        text = "".join(x5c[0].split())
        if text == der_b64:
            return True  # the canonical base64 of these very bytes
        # Another spelling could still decode to them (non-zero pad bits); it can only if
        # its decoded length, 3/4 of its data characters, is the DER's length.
        if len(text.rstrip("=")) * 3 // 4 != len(der):
            continue
        try:
            if base64.b64decode(text, validate=True) == der:
                return True
        except (ValueError, binascii.Error):
            continue
    return False
