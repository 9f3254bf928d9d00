"""Where a token request's and a ``require_token`` GET's CPU goes, step by step, in process.

A profile spreads a request's time over hundreds of functions and, with its own overhead,
overstates the small ones; a step timed alone in a loop runs with warm CPU caches and
understates it (inside a request, Werkzeug and Flask have run in between). This script takes the
third way: the whole request, through the WSGI app of :mod:`benchmarks.token_hot_path` (the bank
wired as ``tests/conftest.py``'s, SQLite, revocation on, the certificate in a header from a
trusted proxy), then the same request with one more step replaced by its answer, each series
timed separately. A step's cost is what removing it saved, with everything around it as in a
server.

* **token, private_key_jwt** (each request with a fresh assertion): the token write (SQLite),
  the jti replay cache, the revoked-key lookups, finding and checking the certificate the
  token is bound to (chain, revocation, binding to the SSA), the signature check (beyond it:
  the RSA operation itself stays in the last row's figure, as :func:`flask_obdcr.jose.verify`
  is replaced whole);
* **GET, require_token**: the revocation check, the rest of the certificate's verification,
  reading the certificate from the header, the token lookup; then the unchecked GET of the same
  view for reference.

Steps are replaced cumulatively, in the order listed; the last row is what is left (Flask,
Werkzeug, Authlib's machinery and the glue). CPU time (``time.process_time``), the best of
``--repeat`` series of ``--n`` requests each.

    .venv/bin/python -m benchmarks.token_breakdown
    .venv/bin/python -m benchmarks.token_breakdown --n 2000 --repeat 7
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

from . import token_hot_path as hot

FORM = {"grant_type": "client_credentials", "scope": "accounts"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.token_breakdown",
        description="A token request and a require_token GET, each step removed in turn.",
    )
    p.add_argument("--n", type=int, default=1000, help="requests per series")
    p.add_argument("--repeat", type=int, default=5, help="series per row (the best is shown)")
    return p


@contextmanager
def replaced(target: Any, name: str, value: Any) -> Iterator[None]:
    """``target.name`` answers ``value`` while inside; put back after, as it was (a class's
    own attribute from its ``__dict__``, so that a staticmethod stays one; an instance's
    attribute that came from its class is removed again)."""
    own = vars(target)
    had, original = name in own, own.get(name)
    setattr(target, name, value)
    try:
        yield
    finally:
        if had:
            setattr(target, name, original)
        else:
            delattr(target, name)


def best(run: Callable[[int], None], n: int, repeat: int) -> float:
    """The best CPU µs per request over ``repeat`` series of ``n``."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run(n)
        times.append((time.process_time() - start) / n * 1e6)
    return min(times)


def rows(
    steps: list[tuple[str, Callable[[], Any]]], run: Callable[[int], None], args: Any
) -> list[tuple[str, float, float]]:
    """(label, CPU µs per request, saved against the previous row), removing step by step."""
    out: list[tuple[str, float, float]] = []
    with ExitStack() as stack:
        previous = best(run, args.n, args.repeat)
        out.append(("the whole request", previous, 0.0))
        for label, remove in steps:
            stack.enter_context(remove())
            figure = best(run, args.n, args.repeat)
            out.append((f"without {label}", figure, previous - figure))
            previous = figure
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if min(args.n, args.repeat) < 1:
        raise SystemExit("--n and --repeat must be at least 1")
    import flask_obdcr.authlib_server as authlib_server
    from flask_obdcr.extension import EXTENSION_KEY
    from flask_obdcr.testing import SandboxDirectory

    print("building the sandbox Directory (key generation) ...", file=sys.stderr)
    directory = SandboxDirectory()
    software = directory.register_software()
    work = Path(tempfile.mkdtemp(prefix="obdcr-token-breakdown-"))
    options = SimpleNamespace(revocation="require", cert_source="header", key_type="RSA")
    try:
        with hot.responder(options, directory.issuing_ca) as revocation:
            ca = directory.issuing_ca
            directory.issue_transport_certificate(
                software, ocsp_url=revocation.ocsp_url(ca), crl_url=revocation.crl_url(ca)
            )
            header = "HTTP_" + hot.CERT_HEADER.upper().replace("-", "_")
            cert = (header, quote(software.transport_pem(), safe=""))
            app = hot.make_bank(directory, directory.documents(), work, "sqlite", options)
            state = app.extensions[EXTENSION_KEY]
            # one client sends every assertion: tens of thousands of live jtis, where the
            # default quota answers 429 (the HTTP harness raises it the same way)
            state.replay_cache.quota_per_owner = 10**7

            def register(method: str) -> str:
                body = directory.registration_request(
                    software, aud=hot.ISSUER, token_endpoint_auth_method=method
                ).encode()
                env = hot.environ("POST", "/register", cert, body)
                env["CONTENT_TYPE"] = "application/jwt"
                return json.loads(hot.call(app, env, "201"))["client_id"]

            pkj, tls = register("private_key_jwt"), register("tls_client_auth")
            token_form = urlencode({**FORM, "client_id": tls}).encode()
            bound = json.loads(hot.call(app, hot.environ("POST", "/token", cert, token_form)))
            bearer = {"Authorization": f"Bearer {bound['access_token']}"}
            guarded = hot.environ("GET", "/accounts", cert, headers=bearer)
            unchecked = hot.environ("GET", "/accounts-open", cert, headers=bearer)

            count = 100 + args.n * args.repeat * 6
            print(f"signing {count} client assertions ...", file=sys.stderr)
            exp = int(time.time()) + 3000
            assertions = iter(
                [
                    urlencode(
                        {
                            **FORM,
                            "client_assertion_type": hot.ASSERTION_TYPE,
                            "client_assertion": software.client_assertion(
                                pkj, aud=hot.TOKEN_URL, exp=exp
                            ),
                        }
                    ).encode()
                    for _ in range(count)
                ]
            )
            base = hot.environ("POST", "/token", cert)
            base["CONTENT_TYPE"] = "application/x-www-form-urlencoded"

            def token_requests(n: int) -> None:
                for _ in range(n):
                    body = next(assertions)
                    hot.call(app, {**base, "body": body, "CONTENT_LENGTH": str(len(body))})

            def gets(env: dict[str, Any]) -> Callable[[int], None]:
                def run(n: int) -> None:
                    for _ in range(n):
                        hot.call(app, env)

                return run

            token_requests(100)  # caches, imports, first-request paths
            gets(guarded)(100)
            gets(unchecked)(100)
            asked = len(revocation.requests)

            verified = state.certificates.verified({**guarded, "REMOTE_ADDR": "127.0.0.1"})
            certificate = verified.certificate
            record = state.tokens.find(bound["access_token"])
            authenticator = authlib_server.ClientAuthenticator
            token_steps: list[tuple[str, Callable[[], Any]]] = [
                ("the token write (SQLite)", lambda: replaced(state.tokens, "_save", _none)),
                ("the jti replay cache", lambda: replaced(state.replay_cache, "remember", _yes)),
                ("the revoked-key lookups", lambda: replaced(state.revoked_keys, "find", _none)),
                (
                    "the bound certificate (read, chain, revocation, binding)",
                    lambda: replaced(
                        authenticator, "_belonging_certificate", staticmethod(_give(verified))
                    ),
                ),
                (
                    "the signature check (jose.verify, the RSA operation included)",
                    lambda: replaced(authlib_server.jose, "verify", _first_key),
                ),
            ]
            get_steps: list[tuple[str, Callable[[], Any]]] = [
                (
                    "the revocation check",
                    lambda: replaced(state.certificates.revocation, "check", _none),
                ),
                (
                    "the rest of verify()",
                    lambda: replaced(state.certificates, "verify", _give(verified)),
                ),
                (
                    "the certificate from the header",
                    lambda: replaced(state.certificates, "from_environ", _give(certificate)),
                ),
                ("the token lookup", lambda: replaced(state.tokens, "find", _give(record))),
            ]
            token_rows = rows(token_steps, token_requests, args)
            get_rows = rows(get_steps, gets(guarded), args)
            open_get = best(gets(unchecked), args.n, args.repeat)
            if len(revocation.requests) != asked:
                raise SystemExit("the revocation responder was asked while timing")
            state.store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nCPU µs per request, the best of {args.repeat} series of {args.n}; each row removes"
        " one more step (SQLite, revocation on, the certificate from a header)\n"
    )
    print("| token, private_key_jwt | CPU µs | the step cost |\n|---|---:|---:|")
    for label, figure, saved in token_rows:
        print(
            f"| {label} | {figure:.0f} | {saved:.0f} |"
            if saved
            else f"| {label} | {figure:.0f} | |"
        )
    print("\n| GET, require_token | CPU µs | the step cost |\n|---|---:|---:|")
    for label, figure, saved in get_rows:
        print(
            f"| {label} | {figure:.0f} | {saved:.0f} |"
            if saved
            else f"| {label} | {figure:.0f} | |"
        )
    print(f"| GET, no check (the same view undecorated) | {open_get:.0f} | |")
    return 0


def _none(*_args: Any, **_kwargs: Any) -> None:
    return None


def _yes(*_args: Any, **_kwargs: Any) -> bool:
    return True


def _give(value: Any) -> Callable[..., Any]:
    return lambda *_args, **_kwargs: value


def _first_key(_decoded: Any, keys: Any, _alg: str) -> Any:
    return next(iter(keys))


if __name__ == "__main__":
    sys.exit(main())
