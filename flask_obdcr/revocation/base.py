"""What the OCSP and CRL clients return, and how they fail."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from cryptography import x509

from ..fetch import FetchForbidden, FetchResponse, check_fetch_url

__all__ = ["MAX_URLS", "Answer", "Fetch", "NoAnswer", "Status", "fetchable"]

Status = Literal["good", "revoked", "unknown"]

#: at most this many OCSP responders and this many CRL distribution points are tried per
#: certificate, so the fetches one check can make (each bounded by the fetch timeout) are few
MAX_URLS = 2


class Fetch(Protocol):
    """What fetches CRLs and OCSP responses: :class:`~flask_obdcr.fetch.BoundedFetch`, or a
    stand-in with the same call. Raises :class:`~flask_obdcr.fetch.FetchError` on failure."""

    def __call__(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> FetchResponse: ...


class NoAnswer(Exception):
    """This source gave no answer we may rely on (unreachable, malformed, badly signed,
    stale, about another certificate...). The message is for the operator's log."""


@dataclass(frozen=True)
class Answer:
    """A verified answer about one certificate. Times are POSIX seconds."""

    status: Status
    this_update: float
    #: ``None`` when the source gave none (an OCSP responder saying "always fresh")
    next_update: float | None
    revoked_at: float | None = None
    #: the CRLReason name (``key_compromise``, ``certificate_hold``, ...) of a revocation
    reason: str | None = None


def current_window(
    what: str,
    this_update: datetime.datetime,
    next_update: datetime.datetime | None,
    *,
    now: float,
    skew: float,
    max_age: float,
) -> tuple[float, float | None]:
    """The validity window (POSIX seconds) of a CRL or OCSP answer that is current at ``now``;
    :class:`NoAnswer` naming ``what`` when it is not: thisUpdate in the future (beyond
    ``skew``), nextUpdate passed, or no nextUpdate and thisUpdate older than ``max_age``. One
    rule for both sources, so they can never judge freshness differently."""
    start = this_update.timestamp()
    end = next_update.timestamp() if next_update is not None else None
    if start > now + skew:
        raise NoAnswer(f"{what}'s thisUpdate {this_update} is in the future")
    if end is not None and now >= end:
        raise NoAnswer(f"{what} is past its nextUpdate {next_update}")
    if end is None and now - start > max_age + skew:
        raise NoAnswer(
            f"{what} has no nextUpdate and its thisUpdate {this_update} is more than"
            f" {max_age:g} s old"
        )
    return start, end


def fetchable(urls: Iterable[str]) -> tuple[str, ...]:
    """The first :data:`MAX_URLS` distinct URLs that may be fetched (http or https)."""
    kept: list[str] = []
    for url in urls:
        try:
            check_fetch_url(url)
        except FetchForbidden:
            continue  # ldap:, ftp:, malformed: not something we fetch
        if url not in kept:
            kept.append(url)
        if len(kept) == MAX_URLS:
            break
    return tuple(kept)


def uris(names: Iterable[x509.GeneralName] | None) -> list[str]:
    return [name.value for name in names or () if isinstance(name, x509.UniformResourceIdentifier)]
