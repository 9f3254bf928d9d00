"""Transport (mTLS) certificates: where they come from, whether we trust them, whom they name.

Protocol core: no Flask imports. One module per concern:

* :mod:`.load`: PEM/DER loading, fully decoded;
* :mod:`.source`: the certificate of a request, from the WSGI environ or a trusted proxy's
  header, in a format looked up by header name (:data:`HEADER_FORMATS`);
* :mod:`.verify`: the chain to the configured anchors (cryptography's ``x509.verification``),
  validity, key floors and the clientAuth usage;
* :mod:`.dn`: RFC 4514 distinguished names, compared structurally;
* :mod:`.binding`: which rule binds a certificate to a software statement;
* :mod:`.service`: :class:`ClientCertificates`, the one service the rest of the extension uses.
"""

from .binding import certificate_belongs_to_software, psd_identifier, thumbprint_sha256
from .dn import certificate_matches_dn, dn_matches, parse_dn
from .load import load_certificate, pem_text
from .service import ClientCertificates, VerifiedCertificate
from .source import HEADER_FORMATS, client_certificate_from_environ, header_format
from .verify import TransportCertificateVerifier

__all__ = [
    "HEADER_FORMATS",
    "ClientCertificates",
    "TransportCertificateVerifier",
    "VerifiedCertificate",
    "certificate_belongs_to_software",
    "certificate_matches_dn",
    "client_certificate_from_environ",
    "dn_matches",
    "header_format",
    "load_certificate",
    "parse_dn",
    "pem_text",
    "psd_identifier",
    "thumbprint_sha256",
]
