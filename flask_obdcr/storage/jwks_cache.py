"""The JWKSCache contract: where fetched key sets live between requests, and the record kept.

A cache stores and returns :class:`CacheEntry` records by URL; it judges neither freshness nor
validity: the JWKS client (:mod:`flask_obdcr.jwks`) does both, from the entry's timestamps and
by parsing ``raw``. Parsing a JWKS is the client's business too: it installs the parser
(:attr:`CacheEntry.parser`), so a cache backend never imports the fetching code.
``tests/test_jwks_cache.py`` runs one contract test class against every backend
(:mod:`.memory`, :mod:`.redis`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from jwcrypto.jwk import JWKSet

__all__ = ["CacheEntry", "JWKSCache"]


@dataclass
class CacheEntry:
    """One cached key set.

    ``raw`` is the fetched JWKS re-serialised with private members and unusable keys removed
    (never the private material a server may have published by mistake). ``raw`` and the three
    timestamps are all a shared cache needs to store (:meth:`to_dict` / :meth:`from_dict`);
    the parsed key set is built from ``raw`` at most once per entry object and is not part of
    equality or serialisation.
    """

    raw: str
    fetched_at: float
    fresh_until: float
    stale_until: float
    _parsed: Any = field(default=None, init=False, repr=False, compare=False)

    #: ``raw`` -> its parsed key set; raises for a ``raw`` that is no usable JWKS. Installed
    #: by :mod:`flask_obdcr.jwks`, which owns JWKS parsing.
    parser: ClassVar[Callable[[str], Any] | None] = None

    def parsed(self) -> Any:
        """The parsed key set (``flask_obdcr.jwks``'s), built on first use."""
        # Races are harmless: two threads may both build it; either result is the same.
        parsed = self._parsed
        if parsed is None:
            parser = CacheEntry.parser
            if parser is None:
                raise RuntimeError("import flask_obdcr.jwks to parse cached key sets")
            parsed = self._parsed = parser(self.raw)
        return parsed

    @property
    def key_set(self) -> JWKSet:
        """The parsed keys that may verify signatures (shared: treat as read-only)."""
        return self.parsed().key_set

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for a shared cache."""
        return {
            "raw": self.raw,
            "fetched_at": self.fetched_at,
            "fresh_until": self.fresh_until,
            "stale_until": self.stale_until,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheEntry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            raw=str(data["raw"]),
            fetched_at=float(data["fetched_at"]),
            fresh_until=float(data["fresh_until"]),
            stale_until=float(data["stale_until"]),
        )


class JWKSCache(Protocol):
    """Where key sets live between requests (in this process, or shared through Redis).

    Implementations must be thread-safe. ``get`` returns ``None`` for an unknown URL, else an
    entry equal to the last one ``set`` for it (not necessarily the same object); it judges
    neither freshness nor validity (the client does, from the entry's timestamps and ``raw``).
    """

    def get(self, url: str) -> CacheEntry | None: ...

    def set(self, url: str, entry: CacheEntry) -> None: ...
