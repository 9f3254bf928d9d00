"""AnyBank's own records for the consent journey, in SQLite in the instance folder.

* ``consents``: the AISP account-access consents (OB Read/Write API v3.1), with the accounts
  the customer chose once they authorised one;
* ``authorization_codes``: issued by the authorization endpoint, kept hashed, single use;
* ``access_tokens``: which consent (and which code) each access token of the
  authorization-code grant serves, keyed by the token's hash: the extension's token store
  keeps the token itself (hash, client, scope, expiry, ``cnf``);
* ``refresh_tokens``: kept hashed, with the consent, the client and the certificate
  (``x5t#S256``) the first access token was bound to.

Codes and tokens are only ever stored as :func:`flask_obdcr.storage.hash_secret` of the
string. Every read-modify-write (a code's use, a consent's status change) is one statement or
one ``BEGIN IMMEDIATE`` transaction, so two processes cannot both win it. No Flask here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask_obdcr.storage import hash_secret

__all__ = [
    "AUTHORISED",
    "AWAITING",
    "REJECTED",
    "REVOKED",
    "AuthorizationCode",
    "BankStore",
    "Consent",
    "RefreshToken",
    "TokenLink",
]

AWAITING = "AwaitingAuthorisation"
AUTHORISED = "Authorised"
REJECTED = "Rejected"
REVOKED = "Revoked"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consents (
    consent_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    permissions TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    transaction_from TEXT,
    transaction_to TEXT,
    created_at INTEGER NOT NULL,
    status_updated_at INTEGER NOT NULL,
    customer TEXT,
    accounts TEXT
);
CREATE TABLE IF NOT EXISTS authorization_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT,
    consent_id TEXT NOT NULL,
    customer TEXT NOT NULL,
    auth_time INTEGER NOT NULL,
    acr TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS access_tokens (
    token_hash TEXT PRIMARY KEY,
    consent_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS access_tokens_code ON access_tokens (code_hash);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    consent_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    scope TEXT NOT NULL,
    x5t_s256 TEXT,
    issued_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_code ON refresh_tokens (code_hash);
"""

#: how long a used code is kept, so that a replay is recognised (and what it issued revoked)
#: rather than answered as an unknown code
USED_CODE_KEPT_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Consent:
    consent_id: str
    client_id: str
    status: str
    permissions: tuple[str, ...]
    expires_at: int
    transaction_from: str | None
    transaction_to: str | None
    created_at: int
    status_updated_at: int
    customer: str | None = None
    accounts: tuple[str, ...] = ()

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True)
class AuthorizationCode:
    """A code as Authlib's grants read it (``AuthorizationCodeMixin`` of OpenID Connect)."""

    code_hash: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    consent_id: str
    customer: str
    auth_time: int
    acr: str
    expires_at: int

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str:
        return self.acr

    def get_amr(self) -> list[str] | None:
        return None


@dataclass(frozen=True)
class RefreshToken:
    """A refresh token as Authlib's RefreshTokenGrant reads it (``TokenMixin``)."""

    token_hash: str
    consent_id: str
    client_id: str
    code_hash: str
    scope: str
    x5t_s256: str | None
    issued_at: int

    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope


@dataclass(frozen=True)
class TokenLink:
    """Which consent an access token of the authorization-code grant serves."""

    token_hash: str
    consent_id: str
    client_id: str
    code_hash: str
    revoked: bool


class CodeReplayed(Exception):
    """A code that was used before: what it issued has been revoked."""


class BankStore:
    """The journey's records in one SQLite file (``<instance>/anybank.db``)."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # one connection per operation: safe across threads, and Werkzeug's threaded server
        # and gunicorn's workers all see committed rows at once
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def now(self) -> int:
        return int(self.clock())

    # -- consents ---------------------------------------------------------------------------

    def add_consent(
        self,
        consent_id: str,
        *,
        client_id: str,
        permissions: Sequence[str],
        expires_at: int,
        transaction_from: str | None = None,
        transaction_to: str | None = None,
    ) -> Consent:
        now = self.now()
        with self._connection() as db:
            db.execute(
                "INSERT INTO consents (consent_id, client_id, status, permissions, expires_at,"
                " transaction_from, transaction_to, created_at, status_updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    consent_id,
                    client_id,
                    AWAITING,
                    json.dumps(list(permissions)),
                    expires_at,
                    transaction_from,
                    transaction_to,
                    now,
                    now,
                ),
            )
        found = self.consent(consent_id)
        assert found is not None
        return found

    def consent(self, consent_id: str) -> Consent | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT * FROM consents WHERE consent_id = ?", (consent_id,)
            ).fetchone()
        return None if row is None else _consent(row)

    def authorise(self, consent_id: str, *, customer: str, accounts: Sequence[str]) -> bool:
        """AwaitingAuthorisation -> Authorised with the customer's accounts; False when the
        consent was not awaiting (decided in another tab, revoked meanwhile)."""
        with self._connection() as db:
            changed = db.execute(
                "UPDATE consents SET status = ?, customer = ?, accounts = ?,"
                " status_updated_at = ? WHERE consent_id = ? AND status = ?",
                (AUTHORISED, customer, json.dumps(list(accounts)), self.now(), consent_id,
                 AWAITING),
            ).rowcount  # fmt: skip
        return changed == 1

    def reject(self, consent_id: str) -> bool:
        """AwaitingAuthorisation -> Rejected; False when it was not awaiting."""
        with self._connection() as db:
            changed = db.execute(
                "UPDATE consents SET status = ?, status_updated_at = ?"
                " WHERE consent_id = ? AND status = ?",
                (REJECTED, self.now(), consent_id, AWAITING),
            ).rowcount
        return changed == 1

    def revoke_consent(self, consent_id: str) -> None:
        """Any status -> Revoked (idempotent), and its refresh tokens with it. Its access
        tokens stay linked: the accounts API answers them with the consent's status."""
        with self._transaction() as db:
            db.execute(
                "UPDATE consents SET status = ?, status_updated_at = ?"
                " WHERE consent_id = ? AND status != ?",
                (REVOKED, self.now(), consent_id, REVOKED),
            )
            db.execute("UPDATE refresh_tokens SET revoked = 1 WHERE consent_id = ?", (consent_id,))

    # -- authorization codes ---------------------------------------------------------------

    def save_code(
        self,
        code: str,
        *,
        client_id: str,
        redirect_uri: str,
        scope: str,
        nonce: str | None,
        consent_id: str,
        customer: str,
        auth_time: int,
        acr: str,
        lifetime: int,
    ) -> None:
        now = self.now()
        with self._connection() as db:
            # forgotten codes go as new ones come: a used one is kept a while to spot replays
            db.execute(
                "DELETE FROM authorization_codes WHERE expires_at < ?",
                (now - USED_CODE_KEPT_SECONDS,),
            )
            db.execute(
                "INSERT INTO authorization_codes (code_hash, client_id, redirect_uri, scope,"
                " nonce, consent_id, customer, auth_time, acr, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (hash_secret(code), client_id, redirect_uri, scope, nonce, consent_id, customer,
                 auth_time, acr, now + lifetime),
            )  # fmt: skip

    def use_code(self, code: str, *, client_id: str) -> AuthorizationCode | None:
        """The code, marked used, if it is this client's, unused and not expired; None for an
        unknown, expired or another client's code. :class:`CodeReplayed` when it was used
        before: every token issued from it is revoked first (RFC 6749 section 4.1.2)."""
        code_hash = hash_secret(code)
        now = self.now()
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM authorization_codes WHERE code_hash = ? AND client_id = ?",
                (code_hash, client_id),
            ).fetchone()
            if row is None:
                return None
            replayed = row["used_at"] is not None
            if replayed:
                revoke = "SET revoked = 1 WHERE code_hash = ?"
                db.execute("UPDATE refresh_tokens " + revoke, (code_hash,))
                db.execute("UPDATE access_tokens " + revoke, (code_hash,))
            elif now >= row["expires_at"]:
                return None
            else:
                db.execute(
                    "UPDATE authorization_codes SET used_at = ? WHERE code_hash = ?",
                    (now, code_hash),
                )
        if replayed:  # raised once the revocation is committed
            raise CodeReplayed(row["consent_id"])
        return AuthorizationCode(
            code_hash=row["code_hash"],
            client_id=row["client_id"],
            redirect_uri=row["redirect_uri"],
            scope=row["scope"],
            nonce=row["nonce"],
            consent_id=row["consent_id"],
            customer=row["customer"],
            auth_time=row["auth_time"],
            acr=row["acr"],
            expires_at=row["expires_at"],
        )

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        """Whether a code was already issued to ``client_id`` for ``nonce`` (a replayed
        authorization request)."""
        with self._connection() as db:
            row = db.execute(
                "SELECT 1 FROM authorization_codes WHERE client_id = ? AND nonce = ?",
                (client_id, nonce),
            ).fetchone()
        return row is not None

    # -- tokens of the authorization-code grant --------------------------------------------

    def link_access_token(
        self, token_hash: str, *, consent_id: str, client_id: str, code_hash: str, expires_at: int
    ) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM access_tokens WHERE expires_at < ?", (self.now(),))
            db.execute(
                "INSERT INTO access_tokens (token_hash, consent_id, client_id, code_hash,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                (token_hash, consent_id, client_id, code_hash, expires_at),
            )

    def token_link(self, token_hash: str) -> TokenLink | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT * FROM access_tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        if row is None:
            return None
        return TokenLink(
            token_hash=row["token_hash"],
            consent_id=row["consent_id"],
            client_id=row["client_id"],
            code_hash=row["code_hash"],
            revoked=bool(row["revoked"]),
        )

    def save_refresh_token(
        self,
        token: str,
        *,
        consent_id: str,
        client_id: str,
        code_hash: str,
        scope: str,
        x5t_s256: str | None,
    ) -> None:
        with self._connection() as db:
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, consent_id, client_id, code_hash, scope,"
                " x5t_s256, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (hash_secret(token), consent_id, client_id, code_hash, scope, x5t_s256,
                 self.now()),
            )  # fmt: skip

    def refresh_token(self, token: str) -> RefreshToken | None:
        """The active (not revoked) refresh token, or None."""
        if not token or len(token) > 4096:
            return None
        with self._connection() as db:
            row = db.execute(
                "SELECT * FROM refresh_tokens WHERE token_hash = ? AND revoked = 0",
                (hash_secret(token),),
            ).fetchone()
        if row is None:
            return None
        return RefreshToken(
            token_hash=row["token_hash"],
            consent_id=row["consent_id"],
            client_id=row["client_id"],
            code_hash=row["code_hash"],
            scope=row["scope"],
            x5t_s256=row["x5t_s256"],
            issued_at=row["issued_at"],
        )


def _consent(row: sqlite3.Row) -> Consent:
    return Consent(
        consent_id=row["consent_id"],
        client_id=row["client_id"],
        status=row["status"],
        permissions=tuple(json.loads(row["permissions"])),
        expires_at=row["expires_at"],
        transaction_from=row["transaction_from"],
        transaction_to=row["transaction_to"],
        created_at=row["created_at"],
        status_updated_at=row["status_updated_at"],
        customer=row["customer"],
        accounts=tuple(json.loads(row["accounts"])) if row["accounts"] else (),
    )
