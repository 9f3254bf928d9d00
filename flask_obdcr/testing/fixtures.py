"""Opt-in pytest fixtures: ``pytest_plugins = ["flask_obdcr.testing.fixtures"]``.

Key generation is the slow part of a sandbox, so the Directory and two pieces of software
(one RSA/PS256, one EC/ES256) are made once per session; apps, clocks and fetchers are new
for every test so no state leaks between tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from ..extension import OpenBankingDCR
from ..jwks import StaticFetcher
from ..storage import ClientStore, MemoryStore
from .clock import FrozenClock
from .directory import SandboxDirectory
from .software import Software

ISSUER = "https://as.sandbox-bank.test"
#: ``app.extensions[DCR_KEY]`` is the OpenBankingDCR of an ``ob_app_factory`` app
DCR_KEY = "obdcr.testing.extension"


@pytest.fixture(scope="session")
def ob_issuer() -> str:
    """The bank's issuer: what registration requests must carry as ``aud``."""
    return ISSUER


@pytest.fixture(scope="session")
def ob_directory() -> SandboxDirectory:
    return SandboxDirectory()


@pytest.fixture(scope="session")
def ob_software(ob_directory: SandboxDirectory) -> Software:
    return ob_directory.register_software(
        roles=["AISP", "PISP"],
        redirect_uris=["https://tpp.example.com/cb", "https://tpp.example.com/cb2"],
    )


@pytest.fixture(scope="session")
def ob_ec_software(ob_directory: SandboxDirectory) -> Software:
    return ob_directory.register_software(roles=["AISP"], key_type="EC")


@pytest.fixture
def ob_clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def ob_fetcher(ob_directory: SandboxDirectory) -> StaticFetcher:
    """A fresh in-process JWKS fetcher; ``.calls`` lists every URL the bank asked for."""
    return StaticFetcher(ob_directory.documents(), allowed_hosts=[ob_directory.host])


@pytest.fixture
def ob_app_factory(
    tmp_path, ob_directory: SandboxDirectory, ob_clock: FrozenClock, ob_fetcher: StaticFetcher
) -> Callable[..., Flask]:
    """Build a bank app trusting the sandbox Directory: ``ob_app_factory(OBDCR_X=...)``."""

    def make(*, store: ClientStore | None = None, **config: Any) -> Flask:
        app = Flask("sandbox_bank", instance_path=str(tmp_path / "instance"))
        app.config.update(ob_directory.app_config(tmp_path / "ca.pem", issuer=ISSUER))
        app.config.update(config)
        app.testing = True
        dcr = OpenBankingDCR(
            app,
            store=store if store is not None else MemoryStore(),
            jwks_fetcher=ob_fetcher,
            clock=ob_clock,
        )
        # the extension object, for tests that wire it to an Authlib server
        app.extensions[DCR_KEY] = dcr
        return app

    return make


@pytest.fixture
def ob_app(ob_app_factory) -> Flask:
    return ob_app_factory()
