"""Celery beat exactly once, however many nodes run one: a PostgreSQL advisory lock.

Every node started by ``manage.py serve`` runs a beat (and a worker started with
``--beat`` runs one too). ``LockedScheduler`` (``CELERY_BEAT_SCHEDULER``) sends due tasks
only while its process holds a session-level advisory lock on the shared database; every
other beat is on standby and tries to take the lock every ``STANDBY_RETRY_SECONDS``.

- The lock belongs to a database connection of its own. It ends with that connection:
  a holder that exits, crashes or is killed with SIGKILL closes it (the kernel does), and
  PostgreSQL frees the lock at once, so a standby beat takes over within
  ``STANDBY_RETRY_SECONDS``.
- A holder that hangs, or loses the network to PostgreSQL, stops sending queries: the
  server ends its session after ``IDLE_SESSION_TIMEOUT_SECONDS`` (PostgreSQL's
  ``idle_session_timeout``, set on that session only), which frees the lock. The holder
  itself checks that it still holds the lock every ``HOLDER_CHECK_SECONDS`` and stops
  sending as soon as the check fails; ``tcp_user_timeout`` and TCP keepalives make that
  check fail within ``CLIENT_DEAD_SECONDS`` when the server is unreachable, well before
  the server frees the lock for another beat.
- A beat that takes over sends what its own schedule file says is due: each task whose
  period passed since this node's beat last sent it (or since it started) is sent once
  then. A task may so run once more than its period would give around a takeover; every
  beat task is safe to run twice (see STYLE.md: leases, conditional updates).

Any other database (SQLite, the embedded default: one machine, one beat) takes no lock;
the scheduler then behaves exactly as Celery's ``PersistentScheduler``.

The lock needs a real session: a PgBouncer in transaction-pooling mode between the
nodes and PostgreSQL would hand the lock's session to others; point ``DATABASE_URL`` of
the beat at PostgreSQL directly (or at a session-pooling PgBouncer).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.beat import PersistentScheduler
from django.conf import settings
from django.db import Error, connections
from django.db.backends.base.base import BaseDatabaseWrapper

# PostgreSQL's idle_session_timeout exists from version 14 on.
IDLE_SESSION_TIMEOUT_SINCE = 140000
logger = logging.getLogger(__name__)

# The advisory lock's key, two int4 ("RPAC", "beat"): advisory locks are per database,
# so this names beat within RelayPACS's database and nothing else.
LOCK_KEY = (0x52504143, 0x62656174)
# How often a standby beat tries to take the lock: the longest a takeover waits after the
# holder died (its tasks run every 15 s and more rarely).
STANDBY_RETRY_SECONDS = 3.0
# How often the holder checks that its lock (its connection) is still there. Beat wakes
# up at least this often, whatever its schedule.
HOLDER_CHECK_SECONDS = 5.0
# The server ends the lock's session after this long without a query (a hung holder or a
# lost network): twelve missed checks. BEAT_LOCK_IDLE_SECONDS overrides it (tests).
IDLE_SESSION_TIMEOUT_SECONDS = 60
# The holder's client gives up on a server that stopped answering after about this long
# (tcp_user_timeout, keepalives), well before the server frees the lock for another beat.
CLIENT_DEAD_SECONDS = 15


class BeatLock:
    """The advisory lock that lets one beat of the database send tasks.

    ``hold()`` answers whether this process holds the lock now, taking it when it is free;
    it never blocks on another holder and never raises for a database failure (logged;
    the answer is then False). Not thread-safe: beat's scheduler loop is its only user.
    """

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias
        self._connection: BaseDatabaseWrapper | None = None
        self._needed: bool | None = None

    @property
    def needed(self) -> bool:
        """Whether the database is one that several nodes share (PostgreSQL)."""
        if self._needed is None:
            self._needed = connections[self.alias].vendor == "postgresql"
        return self._needed

    def hold(self) -> bool:
        if not self.needed:
            return True
        if self._connection is not None:
            if self._still_held():
                return True
            logger.warning(
                "Celery beat lost its lock; it stops sending tasks until it has it again."
            )
            self.release()
        return self._take()

    def release(self) -> None:
        """Drop the lock (close its connection). Idempotent."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Error:
                pass  # a broken connection: the server ends the session, and the lock

    def _new_connection(self) -> BaseDatabaseWrapper:
        wrapper = connections.create_connection(self.alias)
        # A copy: the settings dict is shared with the process's other connections.
        options = dict(wrapper.settings_dict.get("OPTIONS", {}))
        # Never from a pool: closing a pooled connection would keep its session (the lock).
        options.pop("pool", None)
        options.update(
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=CLIENT_DEAD_SECONDS * 1000,
            connect_timeout=10,
        )
        wrapper.settings_dict = {**wrapper.settings_dict, "OPTIONS": options}
        return wrapper

    def _take(self) -> bool:
        connection = self._new_connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", list(LOCK_KEY))
                (taken,) = cursor.fetchone()
                if taken and getattr(connection, "pg_version", 0) >= IDLE_SESSION_TIMEOUT_SINCE:
                    cursor.execute(
                        "SELECT set_config('idle_session_timeout', %s, false)",
                        [f"{_idle_session_timeout()}s"],
                    )
                elif taken:
                    logger.warning(
                        "PostgreSQL before 14 has no idle_session_timeout: a beat that hangs "
                        "while it holds the beat lock keeps it until its process ends."
                    )
        except Error as exc:
            logger.warning(
                "Celery beat could not reach the database to take its lock (%s); it tries "
                "again in %s s.",
                type(exc).__name__,
                STANDBY_RETRY_SECONDS,
            )
            _close_quietly(connection)
            return False
        if not taken:
            _close_quietly(connection)
            return False
        self._connection = connection
        logger.info("Celery beat took the lock: this node's beat sends the scheduled tasks.")
        return True

    def _still_held(self) -> bool:
        assert self._connection is not None
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid() AND granted"
                    " AND classid = %s AND objid = %s AND objsubid = 2",
                    list(LOCK_KEY),
                )
                (count,) = cursor.fetchone()
        except Error:
            return False
        return bool(count)


def _idle_session_timeout() -> int:
    seconds = int(getattr(settings, "BEAT_LOCK_IDLE_SECONDS", 0) or IDLE_SESSION_TIMEOUT_SECONDS)
    # Never below two holder checks: a healthy holder must not lose its own session.
    return max(seconds, int(2 * HOLDER_CHECK_SECONDS))


def _close_quietly(connection: BaseDatabaseWrapper) -> None:
    try:
        connection.close()
    except Error:
        pass


class LockedScheduler(PersistentScheduler):
    """Celery's PersistentScheduler (its schedule file in this node's DATA_DIR) that sends
    due tasks only while this process holds the ``BeatLock``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock = BeatLock()
        self._was_holding = True
        super().__init__(*args, **kwargs)
        if self.lock.needed:
            # Wake up often enough to notice a lost lock (and, on standby, a free one).
            current: float = self.max_interval  # type: ignore[has-type]
            self.max_interval = min(current, HOLDER_CHECK_SECONDS)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.lock.hold():
            if self._was_holding:
                logger.info(
                    "Celery beat is on standby: another node's beat holds the lock; this "
                    "one takes over if that one stops."
                )
                self._was_holding = False
            return STANDBY_RETRY_SECONDS
        self._was_holding = True
        interval: float = super().tick(*args, **kwargs)
        return interval

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.lock.release()
