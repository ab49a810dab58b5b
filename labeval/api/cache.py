"""The process's cache of its busiest reads: encoded answers (eligibility per category, a lab's
detail) with their strong ETag, and the API keys it has authenticated.

Correct across replicas because every replica hears every committed change (migration 0013's
triggers, labeval.db.changes): a change to a table the answers are read from drops every cached
answer, a change to api_keys drops every cached key. While the listening connection is down
nothing is served from the cache nor put in it, and when it is back the cache starts empty.

Hearing is not enough by itself: a notification arrives a moment after its commit. So before a
request uses the cache, `ready()` waits for the listener's sync (one round trip shared by every
request of that moment), after which every change committed before the request arrived has
dropped what it changed: a cached answer is then as fresh as a read of the database.

A read that started before a change and ends after it must not put its (possibly older) answer
in the cache: it takes the generation before reading and `put` ignores it when the generation
moved on meanwhile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Hashable, Mapping

import msgspec
from litestar.enums import MediaType
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_304_NOT_MODIFIED

from labeval.db.apikeys import ApiKey

# Bounds on what one process keeps (answers are small: a category's list, one lab); past a
# bound the cache starts over rather than track use.
MAX_ANSWERS = 20_000
MAX_KEYS = 10_000
KEYS_TABLE = "api_keys"
# Scope key: the guard's ready() for this request (labeval.api.auth); routes serve cached answers
# only when it is True.
CACHE_READY = "labeval.cache_ready"


class Answer:
    """An encoded answer, its strong ETag, and the two ASGI responses that send it (200 with the
    body, 304 without): built once per answer, since building a litestar response per request
    costs more than the rest of a cached request's handler. They hold no per-request state (the
    request id header is added by the middleware on the way out)."""

    __slots__ = ("body", "etag", "not_modified", "ok")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.etag = '"' + hashlib.sha256(body).hexdigest() + '"'
        headers = {"ETag": self.etag}
        self.ok = ASGIResponse(body=body, media_type=MediaType.JSON, headers=headers)
        self.not_modified = ASGIResponse(body=b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)


class CachedKey(msgspec.Struct, kw_only=True):
    key: ApiKey
    # time.monotonic() of the last write of the key's last_used_at by this process.
    touched: float


class ReadCache:
    def __init__(self) -> None:
        # False until the change listener is up: an app without one (or with a lost one) reads
        # the database on every request.
        self.live = False
        self.generation = 0
        self._answers: dict[Hashable, Answer] = {}
        self._keys: dict[bytes, CachedKey] = {}
        self._sync: Callable[[], Awaitable[bool]] | None = None

    def attach(self, sync: Callable[[], Awaitable[bool]]) -> None:
        """The change listener's sync (labeval.db.changes.ChangeListener.sync)."""
        self._sync = sync

    async def ready(self) -> bool:
        """Whether this request may use the cache: live, and every change committed before now
        has been heard. Called once per API request, by the guard, before any cached lookup."""
        if not self.live or self._sync is None:
            return False
        return await self._sync() and self.live

    # The change listener's three reports.
    def changed(self, table: str) -> None:
        self.generation += 1
        if table == KEYS_TABLE:
            self._keys.clear()
        else:
            self._answers.clear()

    def down(self) -> None:
        self.live = False
        self.clear()

    def up(self) -> None:
        self.clear()
        self.live = True

    def clear(self) -> None:
        self.generation += 1
        self._answers.clear()
        self._keys.clear()

    def answer(self, key: Hashable, scope: Mapping[str, object]) -> Answer | None:
        """The cached answer, if this request's guard found the cache ready."""
        return self._answers.get(key) if self.live and scope.get(CACHE_READY) is True else None

    def put_answer(self, key: Hashable, answer: Answer, generation: int) -> None:
        if self.live and generation == self.generation:
            if len(self._answers) >= MAX_ANSWERS:
                self._answers.clear()
            self._answers[key] = answer

    def key(self, digest: bytes) -> CachedKey | None:
        return self._keys.get(digest) if self.live else None

    def put_key(self, digest: bytes, cached: CachedKey, generation: int) -> None:
        if self.live and generation == self.generation:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            self._keys[digest] = cached
