"""App-level jobs the extension runs outside a request: re-validation (``dcr.revalidate()``,
``flask obdcr revalidate``). Flask glue: the core pass is :class:`~.revalidation.Revalidator`;
this adds the per-store lock, the signals and the log lines."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from .locks import lock_beside
from .log import get_logger
from .revalidation import DirectoryStatus, Finding, RevalidationReport
from .state import EXTENSION_KEY, DCRState
from .storage import StoredClient

log = get_logger()

__all__ = ["revalidate_app"]


def revalidate_app(
    app: Flask,
    *,
    directory_status: DirectoryStatus | None = None,
    max_workers: int = 8,
    on_finding: Callable[[Finding, StoredClient], None] | None = None,
) -> RevalidationReport | None:
    """:meth:`OpenBankingDCR.revalidate` for ``app`` (what ``flask obdcr revalidate`` runs):
    None, having done nothing, when another pass holds the store's lock."""
    from .revalidation import REINSTATED, SUSPENDED_NOW, Revalidator
    from .signals import client_reinstated, client_suspended

    state: DCRState = app.extensions[EXTENSION_KEY]
    lock = lock_beside(
        state.store, "revalidate", redis=state.redis, prefix=state.settings.redis_prefix
    )
    if not lock.acquire():
        return None
    try:
        revalidator = Revalidator(
            store=state.store,
            tokens=state.tokens,
            jwks=state.jwks,
            rules=state.settings.rules,
            certificates=state.certificates,
            revoked_keys=state.revoked_keys,
            directory_status=directory_status or state.directory_status,
            clock=state.clock,
            max_workers=max_workers,
        )

        def signal(finding: Finding, client: StoredClient) -> None:
            if finding.outcome == SUSPENDED_NOW:
                log.warning(
                    "suspended client %s (software %s): %s",
                    finding.client_id,
                    finding.software_id,
                    finding.reason,
                )
                client_suspended.send(app, client=client, reason=finding.reason)
            elif finding.outcome == REINSTATED:
                log.info("reinstated client %s", finding.client_id)
                client_reinstated.send(app, client=client)
            if on_finding is not None:
                on_finding(finding, client)

        return revalidator.run(on_finding=signal)
    finally:
        lock.release()
