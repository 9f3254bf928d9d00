"""The registration pipeline: an ordered list of named policies over one context.

A policy is any callable taking the :class:`RegistrationContext` that raises a
:class:`~flask_obdcr.errors.RegistrationError` to refuse the request. Policies run in
order; each may read what the earlier ones established (the verified SSA, the verified
request claims) and add to ``context.metadata``, the client metadata being built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import RegistrationError

if TYPE_CHECKING:
    from cryptography import x509

    from ..certificates import ClientCertificates
    from ..config import RuleSettings
    from ..jose import CompactJWS
    from ..jwks import JWKSClient
    from ..revoked_keys import RevokedKeys
    from ..storage import ReplayCache, StoredClient


class Policy(Protocol):
    """A named check of a registration: raise a RegistrationError to refuse it.

    A policy may also carry a ``clause``: the text of the rule it enforces (OB DCR section,
    RFC section, docs/architecture.md rule), which ``dcr.explain`` reports beside its verdict;
    one without is reported with ``None``."""

    name: str

    def __call__(self, context: RegistrationContext) -> None: ...


_UNSET: Any = object()


@dataclass
class RegistrationContext:
    """Everything one registration (POST) or update (PUT) request is judged on."""

    #: the rules the core judges by (issuer, audiences, algorithms, lifetimes...)
    rules: RuleSettings
    now: float
    jwks: JWKSClient
    replay_cache: ReplayCache
    #: reads, verifies and binds client certificates (the app's one certificate service)
    certificates: ClientCertificates
    body: bytes
    content_type: str | None
    certificate_loader: Callable[[], x509.Certificate | None]
    #: the stored client a PUT replaces; None for a POST
    existing: StoredClient | None = None
    #: the revoked key sets the SSA names; None: not consulted
    revoked_keys: RevokedKeys | None = None

    # established by the policies, in order
    request_jwt: str = ""
    request_header: dict[str, Any] = field(default_factory=dict)
    request_claims: dict[str, Any] = field(default_factory=dict)
    #: ``request_jwt`` as the request_jwt policy decoded it, so that the signature check
    #: does not decode it again (used only while it is of the current ``request_jwt``)
    request_jws: CompactJWS | None = None
    software_statement: str = ""
    ssa_header: dict[str, Any] = field(default_factory=dict)
    ssa_claims: dict[str, Any] = field(default_factory=dict)
    software_jwks_endpoint: str = ""
    #: the key of the software JWKS that verified the request JWT
    request_key: Any = None
    #: the validated client metadata that will be stored and returned
    metadata: dict[str, Any] = field(default_factory=dict)
    #: which rule tied the transport certificate to the software (for the audit log)
    certificate_binding: str | None = None
    #: free space for user policies
    extra: dict[str, Any] = field(default_factory=dict)
    _certificate: Any = _UNSET

    @property
    def certificate(self) -> x509.Certificate | None:
        """The presented client certificate, parsed once on first use."""
        if self._certificate is _UNSET:
            self._certificate = self.certificate_loader()
        return self._certificate

    @property
    def settings(self) -> RuleSettings:
        """The same as :attr:`rules` (the name policies written for 0.1 use)."""
        return self.rules

    @property
    def jti_key(self) -> str:
        return f"{self.request_claims.get('iss')}:{self.request_claims.get('jti')}"


def policy(name: str) -> Callable[[Callable[[RegistrationContext], None]], Policy]:
    """Name a plain function so it can take a place in a :class:`Pipeline`."""

    def decorate(func: Callable[[RegistrationContext], None]) -> Policy:
        func.name = name  # type: ignore[attr-defined]
        return func  # type: ignore[return-value]

    return decorate


class Pipeline:
    """An ordered, named sequence of policies that users can extend or replace in code.

    There is deliberately no ``remove``: a check is taken out only by replacing it with
    something the reader of the code can see.
    """

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        self._policies: list[Policy] = []
        for item in policies:
            self.append(item)

    @property
    def names(self) -> list[str]:
        """The policies' names, in the order they run."""
        return [item.name for item in self._policies]

    def __iter__(self) -> Iterator[Policy]:
        return iter(list(self._policies))

    def __len__(self) -> int:
        return len(self._policies)

    def __getitem__(self, name: str) -> Policy:
        """The policy called ``name``; ``KeyError`` naming the others if there is none."""
        return self._policies[self._index(name)]

    def append(self, item: Policy) -> Pipeline:
        """Run ``item`` after every policy already in the pipeline. Returns the pipeline."""
        self._check_new(item)
        self._policies.append(item)
        return self

    def insert_before(self, name: str, item: Policy) -> Pipeline:
        """Run ``item`` just before the policy called ``name``. ``ValueError`` if a policy
        of ``item``'s name is already there, ``TypeError`` if it has no name."""
        self._check_new(item)
        self._policies.insert(self._index(name), item)
        return self

    def insert_after(self, name: str, item: Policy) -> Pipeline:
        """Run ``item`` just after the policy called ``name`` (same checks as
        :meth:`insert_before`)."""
        self._check_new(item)
        self._policies.insert(self._index(name) + 1, item)
        return self

    def replace(self, name: str, item: Policy) -> Pipeline:
        """Put ``item`` in the place of the policy called ``name``: the way to change a
        default check, visibly in code. ``item`` may keep the name or bring its own."""
        index = self._index(name)
        if getattr(item, "name", None) != name:
            self._check_new(item)
        self._policies[index] = item
        return self

    def copy(self) -> Pipeline:
        """A new pipeline with the same policies (the policies themselves are shared)."""
        return Pipeline(self._policies)

    def run(self, context: RegistrationContext) -> None:
        """Call each policy in order; the first to raise ends the run, and its error carries
        the policy's name in ``error.policy`` (for the log and the ``registration_rejected``
        signal)."""
        for item in self._policies:
            try:
                item(context)
            except RegistrationError as exc:
                exc.policy = exc.policy or item.name
                raise

    def _index(self, name: str) -> int:
        for index, item in enumerate(self._policies):
            if item.name == name:
                return index
        raise KeyError(f"no policy named {name!r}; the pipeline has {self.names}")

    def _check_new(self, item: Policy) -> None:
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{item!r} has no name; decorate it with @policy('...')")
        if not callable(item):
            raise TypeError(f"{item!r} is not callable")
        if name in self.names:
            raise ValueError(f"a policy named {name!r} is already in the pipeline")


#: the last second of the year 9999: a JWT NumericDate beyond it (or before 1970) is no time
#: a TPP meant, and huge integers would overflow float arithmetic with the clock
MAX_NUMERIC_DATE = 253402300799


def numeric_date(value: Any) -> int | None:
    """A JWT NumericDate (RFC 7519 section 2) as whole seconds; None unless it is a number
    between 1970 and the end of 9999."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= MAX_NUMERIC_DATE:
        return None
    return int(value)


def claim_strings(value: Any) -> list[str] | None:
    """A claim that must be a list of strings (a lone string is accepted as one item)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
