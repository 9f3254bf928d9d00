"""The one certificate service: read the client certificate of a request, verify it, bind it.

Built once per app by ``init_app`` and used by every place that looks at a client certificate:
registration, the token endpoint, ``/register/<id>``, ``require_token`` and the host app
(``dcr.client_certificate()``). It holds the source (environ or trusted proxy header), the
trust anchors and the clock, so no caller rebuilds that plumbing or picks its own "now".
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from ..errors import InvalidClient, RegistrationError
from .binding import certificate_belongs_to_software, thumbprint_sha256
from .dn import certificate_matches_dn
from .source import client_certificate_from_environ
from .verify import TransportCertificateVerifier

__all__ = ["ClientCertificates", "RevocationCheck", "VerifiedCertificate"]


class RevocationCheck(Protocol):
    """What checks a verified chain's revocation status
    (:class:`~flask_obdcr.revocation.RevocationChecker`)."""

    def check(
        self, chain: Sequence[x509.Certificate], *, revoked_error: type[RegistrationError]
    ) -> Any: ...


#: the binding rule reported when a certificate matches a client's registered subject DN
SUBJECT_DN_RULE = "tls_client_auth_subject_dn"
#: certificates whose verification ClientCertificates remembers (the TPPs in use)
_VERIFIED_CACHE_SIZE = 1024


@dataclass(frozen=True)
class VerifiedCertificate:
    """A client certificate that chains to a trust anchor, is valid now and may do mTLS."""

    certificate: x509.Certificate
    #: leaf first, trust anchor last
    chain: tuple[x509.Certificate, ...]
    #: RFC 8705 ``x5t#S256``: what a bound token's ``cnf`` carries
    thumbprint: str

    @property
    def subject(self) -> x509.Name:
        return self.certificate.subject


class ClientCertificates:
    """Where a request's client certificate comes from and whether it is trusted.

    ``header`` and ``trusted_proxies`` say where to read it (see
    :func:`~flask_obdcr.certificates.source.client_certificate_from_environ`); ``verifier``
    holds the trust anchors; ``clock`` is the app's clock, so every check stands at the same
    "now" as registration does.
    """

    def __init__(
        self,
        verifier: TransportCertificateVerifier,
        *,
        header: str | None = None,
        trusted_proxies: Collection[str] = (),
        clock: Callable[[], float] = time.time,
        revocation: RevocationCheck | None = None,
    ) -> None:
        self.verifier = verifier
        #: checks the chain's revocation status (OCSP/CRL); None: not checked
        self.revocation = revocation
        self.header = header
        self.trusted_proxies = tuple(trusted_proxies)
        # frozen once: the source looks the set up by value on every request
        self._trusted = frozenset(self.trusted_proxies)
        self.clock = clock
        # certificate -> (not before, not after: POSIX seconds, the verified chain's window,
        # and the result): what verify() found for a certificate it verified before. For a
        # fixed set of trust anchors only time changes the chain's verdict, as in
        # TransportCertificateVerifier's own cache; the revocation status is asked every time.
        self._verified: dict[x509.Certificate, tuple[float, float, VerifiedCertificate]] = {}

    def from_environ(self, environ: Mapping[str, Any]) -> x509.Certificate | None:
        """The certificate the request presents, not yet verified; None if it presents none.
        ``InvalidClient`` if it presents something that is not a certificate."""
        return client_certificate_from_environ(
            environ, header=self.header, trusted_proxies=self._trusted
        )

    def loader(self, environ: Mapping[str, Any]) -> Callable[[], x509.Certificate | None]:
        """A deferred :meth:`from_environ`, for the registration pipeline."""
        return functools.partial(self.from_environ, environ)

    def verify(
        self,
        certificate: x509.Certificate,
        *,
        now: float | None = None,
        revoked_error: type[RegistrationError] = InvalidClient,
    ) -> VerifiedCertificate:
        """``certificate`` verified at ``now`` (default: the clock): ``InvalidClient`` if it
        is not trusted, not valid now, has a weak key or lacks the clientAuth usage;
        ``revoked_error`` (401) if its chain's OCSP responder or CRL says it is revoked;
        ``TemporarilyUnavailable`` (503) if that status is unknown under "require"."""
        seconds = self.clock() if now is None else now
        known = self._verified.get(certificate)
        if known is not None and known[0] <= seconds <= known[1]:
            verified = known[2]  # the same verification, with the same answer
        else:
            at = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
            chain = self.verifier.verify(certificate, now=at)
            verified = VerifiedCertificate(certificate, chain, thumbprint_sha256(certificate))
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()  # bounded; refilled by the certificates in use
            self._verified[certificate] = (
                max(c.not_valid_before_utc for c in chain).timestamp(),
                min(c.not_valid_after_utc for c in chain).timestamp(),
                verified,
            )
        if self.revocation is not None:
            self.revocation.check(verified.chain, revoked_error=revoked_error)
        return verified

    def verified(
        self, environ: Mapping[str, Any], *, now: float | None = None
    ) -> VerifiedCertificate:
        """The request's certificate, verified; ``InvalidClient`` if there is none or it fails."""
        certificate = self.from_environ(environ)
        if certificate is None:
            raise InvalidClient("A client certificate is required (mutual TLS).")
        return self.verify(certificate, now=now)

    @staticmethod
    def binding(
        certificate: x509.Certificate,
        *,
        ssa_claims: Mapping[str, Any],
        software_jwks: Mapping[str, Any] | None,
        subject_dn: str | None = None,
    ) -> str | None:
        """The rule that ties ``certificate`` to the software of ``ssa_claims`` (x5c in the
        software JWKS, the OB subject, the organizationIdentifier) or, when ``subject_dn`` is
        given, to a client's registered ``tls_client_auth_subject_dn``; None if none does."""
        rule = certificate_belongs_to_software(
            certificate, ssa_claims=ssa_claims, software_jwks=software_jwks
        )
        if rule is None and subject_dn and certificate_matches_dn(subject_dn, certificate):
            rule = SUBJECT_DN_RULE
        return rule
