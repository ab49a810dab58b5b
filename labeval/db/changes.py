"""Hearing about committed changes: one LISTEN connection per process on the channel that
migration 0013's triggers notify (payload: the changed table's name).

A process that caches what it read from the database (labeval.api.cache) must know both what
changed and whether it may have missed something: notifications sent while no connection
listened are lost. So the listener reports three things: a change (`on_change(table)`), that it
is down (`on_down()`: the connection is lost or cannot be opened; keep nothing cached) and that
it is up again (`on_up()`: listening; whatever changed while it was down is unknown, so start
afresh). It reconnects by itself until stopped.

A notification reaches a listener a moment after its transaction commits, so a cache that only
waited for notifications could answer with what a change committed a millisecond ago replaced
(another replica's override, a key revoked through the command line). `sync()` closes that gap:
one round trip on the listening connection, which PostgreSQL answers only after delivering every
notification already pending for it (a backend sends pending notifications before it reports
ready for the next query), so once it returns every change committed before the call has been
reported. Callers that arrive while a round trip is on the wire wait for the next one (it starts
after they arrived); all callers of one moment share one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

CHANNEL = "labeval_changes"
# How often a quiet connection is checked: a peer that vanished without closing the TCP
# connection (a failover, a cut cable) is noticed within about this long.
PING_SECONDS = 5.0
# The wait before a new attempt to connect after a failure.
RETRY_SECONDS = 1.0

log = logging.getLogger("labeval.changes")


class ChangeListener:
    def __init__(self, url: str, *, on_change: Callable[[str], None], on_down: Callable[[], None],
                 on_up: Callable[[], None], ping_seconds: float = PING_SECONDS,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.url = url
        self.on_change, self.on_down, self.on_up = on_change, on_down, on_up
        self.ping_seconds, self.retry_seconds = ping_seconds, retry_seconds
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        # The round trip the callers of sync() wait for next, and the task that makes them.
        self._next: asyncio.Future[bool] | None = None
        self._rounds: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="labeval-change-listener")

    async def stop(self) -> None:
        if self._rounds is not None:
            self._rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rounds
            self._rounds = None
        if self._next is not None and not self._next.done():
            self._next.set_result(False)
        self._next = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_listening(self, timeout: float) -> bool:
        """True once a connection listens (for a start-up that should not begin uncached)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._conn is None:
                    await asyncio.sleep(0.01)
        return self._conn is not None

    async def sync(self) -> bool:
        """True once every change committed before this call has been reported through
        on_change; False when not listening (then nothing may be served from a cache)."""
        if self._conn is None:
            return False
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._rounds is None or self._rounds.done():
                self._rounds = asyncio.get_running_loop().create_task(self._round_trips(),
                                                                      name="labeval-change-sync")
        # Shielded: one caller's cancellation (a client gone) must not cancel the others' wait.
        return await asyncio.shield(self._next)

    async def _round_trips(self) -> None:
        while self._next is not None:
            waiting, self._next = self._next, None
            conn, ok = self._conn, False
            try:
                if conn is not None:
                    try:
                        await conn.fetchval("SELECT 1", timeout=self.ping_seconds)
                        ok = True
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                        log.warning("the connection that listens for changes failed a round trip (%s)", exc)
                        # Caches off now, not when the loss is noticed; the listener reconnects.
                        self.on_down()
                        conn.terminate()
            finally:
                # Also when stopped mid-trip: no caller may wait for an answer that never comes.
                # The notifications delivered before the answer have run (they were scheduled first).
                if not waiting.done():
                    waiting.set_result(ok)

    def drop_connection(self) -> None:
        """Abort the listening connection, as a network failure would (for tests)."""
        if self._conn is not None:
            self._conn.terminate()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.on_change(payload)

    async def _run(self) -> None:
        try:
            while True:
                await self._listen_once()
                await asyncio.sleep(self.retry_seconds)
        finally:
            self.on_down()

    async def _listen_once(self) -> None:
        """One connection's life: open, LISTEN, report up, wait until it is lost, report down."""
        lost = asyncio.Event()
        try:
            conn = await asyncpg.connect(self.url)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("cannot listen for changes (%s); caches are off until it can", exc)
            return
        self._conn = conn
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(CHANNEL, self._notified)
            # Only now, with LISTEN in force, is no later commit missed.
            self.on_up()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=self.ping_seconds)
                if not lost.is_set():
                    # Through sync(): one connection runs one query at a time.
                    await self.sync()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("lost the connection that listens for changes (%s); caches are off until it is back", exc)
        finally:
            self.on_down()
            self._conn = None
            if not conn.is_closed():
                conn.terminate()
