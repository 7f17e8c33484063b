"""Server-side sessions and login throttling, kept in ``<data-dir>/web_auth.sqlite`` (0600) so
that both survive a restart of the web service and the CLI can end sessions offline.

Sessions: every token names a session id; a token whose session row is gone is refused, so
logging out, a password change, a user's removal, ``POST /api/auth/sessions/end-all`` and
``gridpilot user end-sessions`` end sessions at once instead of after ``SESSION_S``. Expired
rows are dropped at every login and a user keeps at most ``MAX_SESSIONS_PER_USER`` (the oldest
end first), so the table is bounded by the number of users.

Throttling: failed logins are counted per user name (known or not: the same rule, so the
answer does not tell which names exist) and per client address. After ``USER_FREE`` failures
of one name, or ``ADDRESS_FREE`` of one address, within ``WINDOW_S`` of each other, each
further failure locks that name or address for ``BASE_DELAY_S`` doubled at every failure, up
to ``MAX_DELAY_S``; while locked every attempt is refused (the right password too) without
being checked. A success clears the name's count (not the address's: a valid account of one's
own must not wash out guesses at others). Attempts refused while locked do not lengthen the
lock: whoever guesses cannot keep an operator locked out longer than MAX_DELAY_S per failure.

Bounded: a row is forgotten ``WINDOW_S`` after its last failure (its lock has ended by then),
and the table holds at most ``MAX_FAILURE_ROWS``; past that the rows that are not locked and
failed longest ago go first. A flood of random user names from one address adds at most
ADDRESS_FREE rows before the address itself is locked (refused attempts write nothing).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DB_FILE = "web_auth.sqlite"
WINDOW_S = 15 * 60  # failures further apart than this do not add up
USER_FREE = 5  # failures of one user name before it is locked
ADDRESS_FREE = 20  # failures from one address (over any names) before it is locked
BASE_DELAY_S = 30  # the first lock; doubled at every further failure
MAX_DELAY_S = 15 * 60
MAX_FAILURE_ROWS = 10_000  # about 1 MB at most
MAX_SESSIONS_PER_USER = 20
MAX_KEY = 128  # a user name longer than any valid one is counted by its first characters

Clock = Callable[[], int]  # nanoseconds since the epoch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user);
CREATE TABLE IF NOT EXISTS login_failures (
    kind TEXT NOT NULL, key TEXT NOT NULL, failures INTEGER NOT NULL, last_ns INTEGER NOT NULL,
    locked_until_ns INTEGER NOT NULL, PRIMARY KEY (kind, key));
CREATE INDEX IF NOT EXISTS login_failures_last ON login_failures (last_ns);
"""


@dataclass(frozen=True, slots=True)
class Lock:
    """A user name (kind "user") or client address (kind "address") refused until ``until_ns``."""

    kind: str
    key: str
    failures: int
    until_ns: int

    def retry_after_s(self, now_ns: int) -> int:
        """Whole seconds to wait, at least 1 (the Retry-After header's value)."""
        return max(1, -(-(self.until_ns - now_ns) // 10**9))


def delay_s(failures: int, free: int) -> int:
    """How long a name or address with ``failures`` failures in a row is locked (0: not)."""
    if failures < free:
        return 0
    return min(MAX_DELAY_S, BASE_DELAY_S << min(failures - free, 30))


class AuthDb:
    """The SQLite file both stores share; one connection, used under a lock, from any thread."""

    def __init__(self, data_dir: Path, *, clock: Clock = time.time_ns) -> None:
        self.path = Path(data_dir) / DB_FILE
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # created 0600 before SQLite opens it (its journal files take the same mode)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(
            self.path, timeout=10, check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SessionStore:
    """Active sessions: created at login, looked up at every request, deleted to revoke."""

    def __init__(self, db: AuthDb) -> None:
        self.db = db

    def create(self, user: str, expires_ns: int) -> str:
        """A new session id for ``user``; drops expired sessions and the user's oldest beyond
        MAX_SESSIONS_PER_USER."""
        sid = secrets.token_urlsafe(18)
        now = self.db.clock()
        with self.db.transaction() as db:
            db.execute("DELETE FROM sessions WHERE expires_ns < ?", (now,))
            db.execute(
                "INSERT INTO sessions (id, user, created_ns, expires_ns) VALUES (?, ?, ?, ?)",
                (sid, user, now, expires_ns),
            )
            db.execute(
                "DELETE FROM sessions WHERE user = ? AND id NOT IN (SELECT id FROM sessions "
                "WHERE user = ? ORDER BY created_ns DESC, rowid DESC LIMIT ?)",
                (user, user, MAX_SESSIONS_PER_USER),
            )
        return sid

    def active(self, sid: str, user: str) -> bool:
        """Whether session ``sid`` of ``user`` exists (not logged out, not revoked)."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT 1 FROM sessions WHERE id = ? AND user = ?", (sid, user)
            ).fetchone()
        return row is not None

    def end(self, sid: str) -> bool:
        """End one session; whether it was active."""
        with self.db.transaction() as db:
            return db.execute("DELETE FROM sessions WHERE id = ?", (sid,)).rowcount > 0

    def end_user(self, user: str, *, keep: str = "") -> int:
        """End every session of ``user`` but ``keep``; how many ended."""
        with self.db.transaction() as db:
            cur = db.execute("DELETE FROM sessions WHERE user = ? AND id != ?", (user, keep))
            return cur.rowcount

    def end_all(self) -> int:
        """End every session of every user; how many ended."""
        with self.db.transaction() as db:
            return db.execute("DELETE FROM sessions").rowcount

    def count(self, user: str | None = None) -> int:
        """Active (unexpired) sessions, of ``user`` or of everyone."""
        now = self.db.clock()
        with self.db.transaction() as db:
            if user is None:
                q = db.execute("SELECT count(*) FROM sessions WHERE expires_ns >= ?", (now,))
            else:
                q = db.execute(
                    "SELECT count(*) FROM sessions WHERE user = ? AND expires_ns >= ?", (user, now)
                )
            n: int = q.fetchone()[0]
        return n


class LoginThrottle:
    """Counts failed logins per user name and per address; see the module's description."""

    def __init__(self, db: AuthDb) -> None:
        self.db = db

    @staticmethod
    def _keys(user: str, address: str) -> list[tuple[str, str, int]]:
        return [("user", user[:MAX_KEY], USER_FREE), ("address", address[:MAX_KEY], ADDRESS_FREE)]

    def locked(self, user: str, address: str) -> Lock | None:
        """The lock refusing this attempt now (the one ending last), or None."""
        now = self.db.clock()
        found: Lock | None = None
        with self.db.transaction() as db:
            for kind, key, _ in self._keys(user, address):
                row = db.execute(
                    "SELECT failures, locked_until_ns FROM login_failures "
                    "WHERE kind = ? AND key = ? AND locked_until_ns > ?",
                    (kind, key, now),
                ).fetchone()
                if row is not None and (found is None or row[1] > found.until_ns):
                    found = Lock(kind=kind, key=key, failures=row[0], until_ns=row[1])
        return found

    def failed(self, user: str, address: str) -> list[Lock]:
        """Count a wrong password (or unknown name); the locks this failure starts."""
        now = self.db.clock()
        started = []
        with self.db.transaction() as db:
            db.execute("DELETE FROM login_failures WHERE last_ns < ?", (now - WINDOW_S * 10**9,))
            for kind, key, free in self._keys(user, address):
                row = db.execute(
                    "SELECT failures FROM login_failures WHERE kind = ? AND key = ?", (kind, key)
                ).fetchone()
                failures = (row[0] if row else 0) + 1
                delay = delay_s(failures, free)
                until = now + delay * 10**9 if delay else 0
                db.execute(
                    "INSERT OR REPLACE INTO login_failures "
                    "(kind, key, failures, last_ns, locked_until_ns) VALUES (?, ?, ?, ?, ?)",
                    (kind, key, failures, now, until),
                )
                if delay:
                    started.append(Lock(kind=kind, key=key, failures=failures, until_ns=until))
            excess = db.execute("SELECT count(*) FROM login_failures").fetchone()[0]
            excess -= MAX_FAILURE_ROWS
            if excess > 0:  # unlocked rows first, then those that failed longest ago
                db.execute(
                    "DELETE FROM login_failures WHERE rowid IN (SELECT rowid FROM "
                    "login_failures ORDER BY locked_until_ns > ?, last_ns LIMIT ?)",
                    (now, excess),
                )
        return started

    def succeeded(self, user: str) -> None:
        """The right password: the name's count starts afresh."""
        with self.db.transaction() as db:
            db.execute(
                "DELETE FROM login_failures WHERE kind = 'user' AND key = ?", (user[:MAX_KEY],)
            )

    def rows(self) -> int:
        """How many names and addresses have failures counted (for tests and the heartbeat)."""
        with self.db.transaction() as db:
            n: int = db.execute("SELECT count(*) FROM login_failures").fetchone()[0]
        return n
