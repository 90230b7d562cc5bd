"""The default backplane: Redis Streams as the cluster's log (``docs/scaling.md``).

Every room has a stream (``PREFIX:room:NAME``); announcements to everyone, private messages,
presence notices and moderation go to one more (``PREFIX:all``). A server appends each batch
with one script that takes its ids from one counter (``PREFIX:ids``) and adds the entry, so ids
are cluster-wide and increase in every stream; the script remembers each server's recent
sequence numbers, so an append retried after a lost reply is made once.

Each server reads only the streams of the rooms it has members in, plus ``PREFIX:all``, in one
blocking ``XREAD``, from the last entry it processed: a server whose link blips reads on from
there and loses nothing. Its own messages come back the same way, so every server delivers a
room's messages in the room's one order, with the same ids. Entries are checked: malformed or
foreign ones, and ids the counter never gave, are skipped and counted; an id delivered already
is dropped.

Streams are bounded by ``MAXLEN ~`` (and by age, with ``MINID``); session records live in
hashes with an expiry, so a client can resume on any server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

from ._core import envelope as bp
from ._core.commands import name_key
from ._core.envelope import Envelope
from .backplane import BackplaneStatistics, Done, RedisPubSubBackplane

__all__ = ["RedisBackplane"]

log = logging.getLogger("chatcast.backplane")

# Append an envelope once: KEYS ids counter, stream, this server's recent sequence numbers,
# the cluster's secret; ARGV ids to take, sequence number, MAXLEN, MINID (or ""), payload, "1"
# to refresh the expiry of the sequence numbers (every 1024th append), the cluster's secret,
# the newest id the server knows, the stream's expiry in seconds (or ""). The entry's "k"
# signs its id with the secret: an entry the script did not write is recognised. A secret
# that is not (or no longer: Redis restarted empty) the cluster's is refused, and ids never
# go below what the server knows. Returns the first id.
_APPEND: Final = """
local done = redis.call('HGET', KEYS[3], ARGV[2])
if done then return tonumber(done) end
if redis.call('GET', KEYS[4]) ~= ARGV[7] then
    return redis.error_reply('CHATCASTSECRET the log was reset')
end
local count = tonumber(ARGV[1])
local first = redis.call('INCRBY', KEYS[1], count) - count + 1
if first <= tonumber(ARGV[8]) then
    first = tonumber(ARGV[8]) + 1
    redis.call('SET', KEYS[1], first + count - 1)
end
local k = redis.sha1hex(ARGV[7] .. ':' .. string.format('%d', first))
if ARGV[4] ~= '' then
    redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', 'e', ARGV[5], 'i', first, 'k', k)
    redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[3])
else
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[5], 'i', first, 'k', k)
end
redis.call('HSET', KEYS[3], ARGV[2], first)
redis.call('HDEL', KEYS[3], tostring(tonumber(ARGV[2]) - 4096))
if ARGV[6] == '1' then redis.call('EXPIRE', KEYS[3], 86400) end
if ARGV[9] ~= '' then redis.call('EXPIRE', KEYS[2], ARGV[9]) end
return first
"""

# Raise the counter to at least ARGV[1] (a server knows ids that Redis may have lost).
_FLOOR: Final = """
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
if now < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) return tonumber(ARGV[1]) end
return now
"""

#: How much earlier than this server's clock a member's arrival in a room is taken to be
#: (against Redis's clock, which numbers the streams): news is never taken for history.
_CLOCK_SLACK_MS = 250.0
#: How long a server that has not reached Redis yet keeps trying before it counts it as
#: down (start() waits 3 s for either).
_START_GRACE: Final = 2.0
#: Entries asked for per ``XREAD`` and per page of a replay.
_READ_COUNT: Final = 1000
_PAGE: Final = 500
#: Sequence numbers of envelopes given up on (delivered locally only) that are remembered,
#: so that one that reached the log after all is not delivered twice.
_FALLEN_KEPT: Final = 100_000

#: States.
_UP: Final = "up"
_RECONNECTING: Final = "reconnecting"
_DOWN: Final = "down"


class RedisBackplane(RedisPubSubBackplane):
    """A backplane on Redis Streams: a log per room, read by the servers that host it.

    Args:
        url: The Redis URL, e.g. ``"redis://127.0.0.1:6379/0"`` (Redis 5 or newer).
        prefix: Key prefix; servers with the same Redis, database and prefix form one chat.
        queue_size: Envelopes held while Redis cannot be reached (a blip, a restart); past
            it, or once Redis counts as down, envelopes are delivered locally only and
            counted as lost for the other servers.
        heartbeat: Seconds between liveness refreshes. Redis counts as **down** when it has
            not answered for two heartbeats of the event loop's punctual time (a loop running
            late is busy, not a sign of a dead Redis), or a lost connection could not be made
            again within two heartbeats. Until then messages wait for it: nothing is lost.
        stream_length: Entries kept per room stream (``MAXLEN ~``, so Redis may keep a few
            more); ``PREFIX:all`` keeps ten times as many. An entry is a batch of one
            sender's messages.
        stream_age: If set, seconds after which entries are trimmed (``MINID ~``) too.
        stream_ttl: If set, a stream is deleted after this many seconds without a new entry
            (a room nobody uses any more leaves nothing in Redis); 30 days by default.

    Raises:
        ImportError: redis-py is not installed (``pip install chatcast[redis]``).
        ValueError: A bound is not positive.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "chatcast",
        queue_size: int = 10000,
        heartbeat: float = 5.0,
        stream_length: int = 10000,
        stream_age: float | None = None,
        stream_ttl: float | None = 30 * 86400.0,
    ) -> None:
        super().__init__(url, prefix=prefix, queue_size=queue_size, heartbeat=heartbeat)
        if stream_length < 1:
            raise ValueError(f"stream_length must be >= 1, got {stream_length}")
        if stream_age is not None and not stream_age > 0:
            raise ValueError(f"stream_age must be > 0 seconds, got {stream_age}")
        if stream_ttl is not None and not stream_ttl >= 1:
            raise ValueError(f"stream_ttl must be >= 1 second, got {stream_ttl}")
        self.stream_ttl = stream_ttl
        self.stream_length = stream_length
        self.stream_age = stream_age
        self._queue_size = queue_size
        self._ids_key = f"{prefix}:ids"
        self._all_key = f"{prefix}:all"
        self._seqs_key = f"{prefix}:seqs:{self.server_id}"
        self._wake_key = f"{prefix}:wake:{self.server_id}"
        self._reader_redis: Any = None
        self._state = _DOWN
        self._seq = 0
        # (stream key, payload, ids to take, messages, seq, done) or a names operation
        # (op, payload): in order, retried until Redis takes them or counts as down.
        self._pending: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()  # something to append
        self._back = asyncio.Event()  # the reader is connected again
        self._in_flight = 0
        self._append = _sha(_APPEND)  # the script's name in Redis
        self._fallen: dict[int, None] = {}  # seq numbers given up on, oldest first
        # Streams read, and the last entry processed in each (a Redis stream id).
        self._positions: dict[str, str] = {}
        # The newest message id delivered from each stream (duplicates are dropped by it).
        self._last_id: dict[str, int] = {}
        self._following: dict[str, asyncio.Event] = {}  # room -> set once it is read
        self._thresholds: dict[str, tuple[int, float]] = {}  # rooms being started: follow()
        # The newest id of each room that was history when its reading started.
        self._boundary: dict[str, int] = {}
        self._refused: set[str] = set()  # rooms whose key is not a stream: not read
        self._counter = 0  # the newest id this server knows the counter gave
        # Read from Redis (made by the first server): the append script signs ids with it.
        self._secret = ""
        self._secret_key = f"{prefix}:secret"
        self._bad = 0
        self._duplicates = 0
        self._caught_up = 0
        self._catching_up = False

    # -- keys -------------------------------------------------------------------------------

    def _room_key(self, room: str) -> str:
        return f"{self.prefix}:room:{room}"

    def _session_key(self, digest: str) -> str:
        return f"{self.prefix}:session:{digest}"

    def _stream_of(self, envelope: Envelope) -> str:
        if envelope.room is not None and envelope.kind in (bp.BATCH, bp.ANNOUNCEMENT):
            return self._room_key(envelope.room)
        return self._all_key

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def sequenced(self) -> bool:
        return self._state != _DOWN

    async def start(self) -> None:
        """Connect to Redis and start reading, appending and refreshing liveness.

        Starts even when Redis is unreachable (local rooms work without ids; the backplane
        keeps retrying and reports "down", then "up").

        Raises:
            BackplaneError: Redis answered but refused us (a wrong password, a database
                number it does not have).
        """
        import redis.asyncio as aioredis

        self._connect()
        # The blocking reads on a connection of their own, outside the pool: no pool to take
        # a connection from and give it back to on every read (the read's hot path).
        self._reader_redis = aioredis.Redis.from_url(
            self.url, single_connection_client=True, socket_connect_timeout=2, socket_timeout=5
        )
        ready = asyncio.Event()
        await self._run(
            [
                asyncio.create_task(self._reader(ready), name="chatcast-backplane-read"),
                asyncio.create_task(self._appender(), name="chatcast-backplane-append"),
                asyncio.create_task(self._beat(), name="chatcast-backplane-beat"),
            ],
            ready,
        )

    async def close(self) -> None:
        """Append what is queued (for up to 2 s), stop, give back this server's names."""
        if self._state == _UP and not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    while self._pending or self._in_flight:
                        self._wake.set()
                        await asyncio.sleep(0.01)
        await super().close()
        if self._reader_redis is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._reader_redis.aclose()

    # -- appending --------------------------------------------------------------------------

    logged = True

    def publish(self, envelope: Envelope, done: Done | None = None) -> int | None:
        messages = len(envelope.texts) if envelope.kind == bp.BATCH else 1
        if self._closing or self._state == _DOWN or len(self._pending) >= self._queue_size:
            self._lost(1, messages)
            if done is not None:
                done(None)
            return None
        self._seq += 1
        envelope = dataclasses.replace(envelope, seq=self._seq)
        ids = max(1, len(envelope.texts)) if envelope.kind == bp.BATCH else 1
        item = (self._stream_of(envelope), envelope.encode(), ids, messages, self._seq, done)
        self._pending.append(item)
        self._wake.set()
        return self._seq

    def _enqueue(self, op: str, payload: Any, messages: int = 0) -> None:
        # Names operations (hset, release) go in the same order as the appends.
        if self._closing:
            return
        if len(self._pending) < self._queue_size:
            self._pending.append((op, payload))
            self._wake.set()

    def _give_up(self, items: Iterable[tuple[Any, ...]]) -> None:
        """Deliver ``items`` locally only: Redis counts as down, or they wait too long."""
        for item in items:
            if len(item) == 2:
                continue  # names: resynced when Redis is back
            _, _, _, messages, seq, done = item
            self._lost(1, messages)
            self._fallen[seq] = None
            if len(self._fallen) > _FALLEN_KEPT:
                del self._fallen[next(iter(self._fallen))]
            if done is not None:
                done(None)

    async def _appender(self) -> None:
        """Append queued envelopes in order, pipelining whatever has piled up; retry what
        Redis did not confirm (the script makes each append once)."""
        from redis.exceptions import NoScriptError, ResponseError

        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        delay = 0.05
        while not self._closing:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._state == _DOWN:
                items = list(self._pending)
                self._pending.clear()
                self._give_up(items)
                continue
            batch = [self._pending.popleft() for _ in range(min(512, len(self._pending)))]
            self._in_flight = len(batch)
            try:
                async with asyncio.timeout(2 * self.heartbeat + 5):
                    if len(batch) == 1 and len(batch[0]) != 2:
                        # The usual case at chat rates: one append, no pipeline to build.
                        try:
                            results = [await self._redis.evalsha(*self._append_args(batch[0]))]
                        except ResponseError as exc:
                            if not _wrong_type(exc):
                                raise
                            results = [exc]
                    else:
                        async with self._redis.pipeline(transaction=False) as pipe:
                            for item in batch:
                                self._pipe(pipe, item)
                            results = await pipe.execute(raise_on_error=False)
                    for result in results:
                        if isinstance(result, Exception) and not _wrong_type(result):
                            raise result  # retried: the script makes each append once
            except Exception as exc:  # redis-py raises many types: none confirmed
                self._in_flight = 0
                if isinstance(exc, NoScriptError):  # Redis restarted, or its scripts flushed
                    with contextlib.suppress(Exception):
                        self._append = await self._redis.script_load(_APPEND)
                elif "CHATCASTSECRET" in str(exc):  # Redis restarted empty: the secret anew
                    with contextlib.suppress(Exception):
                        await self._redis.set(self._secret_key, secrets.token_hex(16), nx=True)
                        self._secret = (await self._redis.get(self._secret_key)).decode()
                now = loop.time()
                if failing_since is None:
                    failing_since = now
                    log.warning(
                        "backplane: %d envelopes wait for Redis: %s", len(batch), exc or "timeout"
                    )
                if self._state == _DOWN or now - failing_since > 2 * self.heartbeat:
                    self._give_up(batch)
                    failing_since = None
                else:
                    self._pending.extendleft(reversed(batch))
                    self._back.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay * random.uniform(0.5, 1.0)):
                            await self._back.wait()  # the reader is connected again
                    delay = min(1.0, delay * 2)
                continue
            self._in_flight = 0
            failing_since = None
            delay = 0.05
            self._heard()
            results_iter = iter(results)
            for item in batch:
                result = next(results_iter)
                if len(item) == 2:
                    if item[0] == "wake" or (item[0] == "session" and item[1][1] is not None):
                        next(results_iter)  # its EXPIRE
                    continue
                if isinstance(result, Exception):
                    # Something else holds the stream's key: never appended, delivered here.
                    log.warning("backplane: cannot append to %s: %s", item[0], result)
                    self._give_up([item])
                    continue
                self._published += 1
                first = int(result)
                self._counter = max(self._counter, first + item[2] - 1)
                done = item[5]
                if done is not None:
                    done(first)

    def _pipe(self, pipe: Any, item: tuple[Any, ...]) -> None:
        if len(item) == 2:
            op, payload = item
            if op == "hset":
                pipe.hset(self._names_key, payload[0], payload[1])
            elif op == "release":
                from .backplane import _RELEASE_SCRIPT

                pipe.eval(_RELEASE_SCRIPT, 1, self._names_key, payload, self.server_id)
            elif op == "wake":  # this server's reader: a room to start reading
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, 3600)
            elif op == "session":
                key, record, ttl = payload
                if record is None:
                    pipe.delete(key)
                else:
                    pipe.hset(key, mapping=record)
                    pipe.expire(key, max(1, round(ttl)))
            return
        pipe.evalsha(*self._append_args(item))

    def _append_args(self, item: tuple[Any, ...]) -> tuple[Any, ...]:
        """The ``EVALSHA`` arguments that append ``item``."""
        stream, payload, ids, _, seq, _ = item
        minid = ""
        if self.stream_age is not None:
            minid = str(int((time.time() - self.stream_age) * 1000))
        length = self.stream_length if stream != self._all_key else 10 * self.stream_length
        refresh = "1" if seq % 1024 == 1 else "0"
        return (
            self._append,
            4,
            self._ids_key,
            stream,
            self._seqs_key,
            self._secret_key,
            ids,
            seq,
            length,
            minid,
            payload,
            refresh,
            self._secret,
            self._counter,
            "" if self.stream_ttl is None else str(round(self.stream_ttl)),
        )

    # -- following rooms ----------------------------------------------------------------------

    def follow(self, room: str) -> None:
        if room not in self._following:
            self._following[room] = asyncio.Event()
            # When a member came: the room's entries from before are its history, those
            # after are delivered live (see _backfill). The newest id this server knows is
            # surely before; the time (Redis's stream ids are its clock in ms) catches the
            # rest, a little early, so that a clock a little off never makes news history.
            self._thresholds[room] = (self._counter, time.time() * 1000 - _CLOCK_SLACK_MS)
            if self._state == _UP:
                self._enqueue("wake", None)  # a blocked read returns at once

    def reading(self, room: str) -> bool:
        event = self._following.get(room)
        return event is not None and event.is_set()

    def cutoff(self, room: str) -> int:
        return self._last_id.get(self._room_key(room), 0)

    def followed(self) -> list[str]:
        return list(self._following)

    def unfollow(self, room: str) -> None:
        self._following.pop(room, None)
        self._refused.discard(room)
        self._thresholds.pop(room, None)
        self._boundary.pop(room, None)
        key = self._room_key(room)
        self._positions.pop(key, None)
        self._last_id.pop(key, None)

    async def following(self, room: str) -> int:
        """Return once ``room`` is read (at once if it is, or Redis is down), or is no
        longer followed (its members left before it was read): the newest id of the room
        that was history when its reading started (what came after was delivered live)."""
        self.follow(room)
        event = self._following[room]
        while not event.is_set() and self._state != _DOWN and not self._closing:
            if self._following.get(room) is not event:
                break  # given up (and perhaps followed anew: a later wait is for that)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat):
                    await event.wait()
        return self._boundary.get(room, self.cutoff(room))

    def position(self, room: str) -> tuple[int, int]:
        """The newest ids delivered from ``room``'s stream and from ``PREFIX:all``."""
        return self._last_id.get(self._room_key(room), 0), self._last_id.get(self._all_key, 0)

    # -- reading ------------------------------------------------------------------------------

    async def _reader(self, ready: asyncio.Event) -> None:
        """Read the followed streams; on a lost connection retry with backoff, then read on
        from where it stopped. "down" is reported after two heartbeats without Redis, and
        followed by "up" once it is back."""
        from redis.exceptions import AuthenticationError, ResponseError

        loop = asyncio.get_running_loop()
        delay = 0.1
        failing_since: float | None = None
        reported_down = False
        connected_once = False
        while not self._closing:
            try:
                async with asyncio.timeout(2 * self.heartbeat + 5):
                    await self._resync()
                    self._append = await self._redis.script_load(_APPEND)
                    await self._redis.eval(_FLOOR, 1, self._ids_key, self._counter)
                    await self._redis.set(self._secret_key, secrets.token_hex(16), nx=True)
                    self._secret = (await self._redis.get(self._secret_key)).decode()
                    if self._all_key not in self._positions:
                        self._positions[self._all_key] = await self._tail(self._all_key)
                    self._positions[self._wake_key] = "$"  # only what comes from now on
                self._heard()
                if failing_since is not None:
                    self._catching_up = True
                    log.warning("backplane: connected to %s; reading on", self.where)
                self._state = _UP
                self._connected = True
                self._wake.set()
                self._back.set()
                failing_since = None
                delay = 0.1
                if reported_down:
                    reported_down = False
                    self._reconnects += 1
                    self._state_changed("up", "reconnected and resynced")
                connected_once = True
                ready.set()
                await self._read_forever()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, AuthenticationError | ResponseError) and not self._started:
                    self._fatal = exc
                    ready.set()
                    return
                now = loop.time()
                if failing_since is None:
                    failing_since = now
                    if connected_once:
                        log.warning("backplane: lost %s (%s); retrying", self.where, reason)
                    if self._state == _UP:
                        self._state = _RECONNECTING
                # Down: at start, when Redis could not be reached within the start's wait
                # (a first attempt that fails, retried at once, is not an outage); later,
                # after two heartbeats of failing.
                grace = _START_GRACE if not connected_once else 2 * self.heartbeat
                if not reported_down and now - failing_since >= grace:
                    reported_down = True
                    if not connected_once:
                        log.warning(
                            "backplane: cannot reach %s (%s); serving locally, retrying",
                            self.where,
                            reason,
                        )
                    else:
                        log.warning("backplane: %s counts as down: serving locally", self.where)
                    self._state = _DOWN
                    self._connected = False
                    self._wake.set()  # the appender gives up what waits
                    for event in self._following.values():
                        event.set()
                    self._state_changed("down", reason)
                    ready.set()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(5.0, delay * 2)

    async def _tail(self, key: str) -> str:
        """The id of the newest entry of stream ``key`` ("0-0" if it is empty)."""
        newest = await self._redis.xrevrange(key, "+", "-", count=1)
        return newest[0][0].decode() if newest else "0-0"

    async def _backfill(self) -> None:
        """Start reading the rooms newly followed: from their newest entry, after handing the
        last ``stream_length`` (at most 1000) to the server's history."""
        for room, event in list(self._following.items()):
            key = self._room_key(room)
            if key in self._positions or room in self._refused:
                continue
            newest = await self._redis.xrevrange(key, "+", "-", count=min(1000, self.stream_length))
            if self._following.get(room) is not event:
                continue  # unfollowed meanwhile
            self._positions[key] = newest[0][0].decode() if newest else "0-0"
            threshold, since = self._thresholds.pop(room, (0, 0.0))
            entries = list(reversed(newest))
            cut = 0  # entries[:cut] are history; those after came since a member joined
            while cut < len(entries) and (
                _entry_id(entries[cut]) <= threshold or _entry_ms(entries[cut]) < since
            ):
                cut += 1
            if cut:
                self._deliver_entries(key, entries[:cut], backfill=True)
            self._boundary[room] = max(threshold, self._last_id.get(key, 0))
            event.set()
            if cut < len(entries):
                self._deliver_entries(key, entries[cut:])

    async def _read_forever(self) -> None:
        """Deliver entries until Redis is lost or silent (two heartbeats of punctual time).

        A watchdog on a timer counts the silence while a read is outstanding: each tick adds
        at most its own interval, so a loop that runs late (busy, or starved of CPU) does not
        count its own lateness against Redis; it cancels the read when Redis has been silent
        too long. No task or timer is made per read (the hot path).

        Raises:
            ConnectionError: Redis said nothing for two heartbeats.
        """
        from redis.exceptions import ResponseError

        loop = asyncio.get_running_loop()
        wake = self._wake_key.encode()
        block = max(1, min(100, round(self.heartbeat * 250)))
        poll = min(1.0, self.heartbeat / 4)
        task = asyncio.current_task()
        assert task is not None
        state = [0.0, loop.time()]  # silence so far, last tick
        stalled: list[bool] = []

        handles: list[asyncio.TimerHandle] = []

        def tick() -> None:
            now = loop.time()
            elapsed = min(now - state[1], poll)
            state[1] = now
            state[0] = state[0] + elapsed if now - self._last_heard > poll else 0.0
            if state[0] > 2 * self.heartbeat:
                stalled.append(True)
                task.cancel()
                return
            handles[0] = loop.call_later(poll, tick)

        handles.append(loop.call_later(poll, tick))
        try:
            while not self._closing:
                try:
                    if any(
                        self._room_key(r) not in self._positions and r not in self._refused
                        for r in self._following
                    ):
                        await self._backfill()
                    replies = await self._reader_redis.xread(
                        dict(self._positions), count=_READ_COUNT, block=block
                    )
                except ResponseError as exc:
                    if not _wrong_type(exc) or not await self._refuse_wrong_types():
                        raise
                    continue
                self._last_heard = loop.time()
                if replies and any(key == wake for key, _ in replies):
                    replies = [reply for reply in replies if reply[0] != wake]  # woken: no news
                caught_up = self._catching_up
                self._catching_up = False
                if replies and len(replies) > 1:
                    delivered = self._deliver_merged(replies)
                    if caught_up:
                        self._caught_up += delivered
                    continue
                for key, entries in replies or ():
                    stream = key.decode()
                    if stream not in self._positions:
                        continue  # unfollowed while reading
                    delivered = self._deliver_entries(stream, entries)
                    if caught_up:
                        self._caught_up += delivered
        except asyncio.CancelledError:
            if stalled and not self._closing:
                task.uncancel()
                raise ConnectionError(f"no answer for {2 * self.heartbeat:g} s") from None
            raise
        finally:
            handles[0].cancel()

    async def _refuse_wrong_types(self) -> bool:
        """Stop reading the rooms whose key holds something else than a stream (written by
        something else): the other rooms go on; those rooms are served locally only. Return
        whether there was one."""
        rooms = [room for room in self._following if room not in self._refused]
        async with self._redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.type(self._room_key(room))
            kinds = await pipe.execute()
        for room, kind in zip(rooms, kinds, strict=True):
            if kind not in (b"stream", b"none", "stream", "none"):
                log.warning(
                    "backplane: %s is not a stream (%s): not read", self._room_key(room), kind
                )
                self._bad += 1
                self._refused.add(room)
                self._positions.pop(self._room_key(room), None)
                self._thresholds.pop(room, None)
                self._following[room].set()
        return any(room in self._refused for room in rooms)

    def _deliver_merged(self, replies: list[Any]) -> int:
        """Deliver the entries of several streams read at once in id order (a member sees
        a room and ``PREFIX:all``: its client drops an id below one it had); return how
        many were."""
        merged: list[tuple[int, str, Any]] = []
        ends: dict[str, str] = {}
        for key, entries in replies:
            stream = key.decode()
            if stream not in self._positions or not entries:
                continue  # unfollowed while reading
            merged.extend((_entry_id(entry), stream, entry) for entry in entries)
            ends[stream] = entries[-1][0].decode()
        merged.sort(key=lambda item: item[0])  # stable: each stream's order is kept
        delivered = 0
        start = 0
        for end in range(1, len(merged) + 1):
            if end == len(merged) or merged[end][1] != merged[start][1]:
                run = [entry for _, _, entry in merged[start:end]]
                delivered += self._deliver_entries(merged[start][1], run)
                start = end
        for stream, position in ends.items():
            if stream in self._positions:
                self._positions[stream] = position  # read on after the newest
        return delivered

    def _deliver_entries(self, stream: str, entries: list[Any], *, backfill: bool = False) -> int:
        """Check and deliver ``entries`` of ``stream`` in order; return how many were."""
        last = self._last_id.get(stream, 0)
        delivered = 0
        deliver = self._deliver
        for entry_id, fields in entries:
            self._positions[stream] = entry_id.decode()
            envelope = self._checked(fields)
            if envelope is None:
                continue
            ident = envelope.id
            assert ident is not None
            if ident <= last:
                self._duplicates += 1
                continue
            last = _last_of(envelope)
            if last > self._counter:
                self._counter = last
            if envelope.origin == self.server_id:
                if envelope.seq in self._fallen:
                    continue  # given up on and delivered locally: it reached the log after all
            elif not backfill:
                self._received += 1
            delivered += 1
            if backfill:
                envelope = _as_history(envelope)
            deliver(envelope)
        self._last_id[stream] = last
        return delivered

    def _checked(self, fields: dict[bytes, bytes]) -> Envelope | None:
        """The envelope of a stream entry with its id, or None (counted) if it is bad."""
        try:
            raw, ident_text = fields[b"e"], fields[b"i"]
            ident = int(ident_text)
            if ident < 1 or fields.get(b"k") != self._sign(ident):
                raise ValueError(f"id {ident} was not given by the cluster's log")
            envelope = Envelope.decode(raw)
        except (KeyError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            self._bad += 1
            if self._bad <= 10 or self._bad % 1000 == 0:  # counted always, logged less
                reason = f"no field {exc.args[0]!r}" if isinstance(exc, KeyError) else exc
                log.warning("backplane: skipped a bad log entry (%d so far): %s", self._bad, reason)
            return None
        return dataclasses.replace(envelope, id=ident)

    def _sign(self, ident: int) -> bytes:
        """What the append script writes beside id ``ident`` (``redis.sha1hex``)."""
        return hashlib.sha1(f"{self._secret}:{ident}".encode()).hexdigest().encode()

    # -- replaying what a member missed -------------------------------------------------------

    async def missed(
        self, room: str, names: frozenset[str], after: int, upto: tuple[int, int]
    ) -> tuple[list[Envelope], bool]:
        """What a member named one of ``names`` (name keys) in ``room`` missed after id
        ``after`` up to ``upto`` (the ids delivered live from the room's stream and from
        ``PREFIX:all``, as :meth:`position` gave them): room envelopes (not its own),
        announcements, private messages to it; in id order. The flag says whether the log no
        longer reaches back that far (some are gone).

        Raises:
            Exception: Redis cannot be read now.
        """
        upto_room, upto_all = upto
        found: list[Envelope] = []
        gap = False
        for key, until in ((self._room_key(room), upto_room), (self._all_key, upto_all)):
            entries, short = await self._after(key, after, until)
            gap = gap or short
            for envelope in entries:
                kind = envelope.kind
                if key == self._all_key:
                    if kind == bp.ANNOUNCEMENT or (
                        kind == bp.PRIVATE and name_key(envelope.to or "") in names
                    ):
                        found.append(envelope)
                elif kind == bp.ANNOUNCEMENT or name_key(envelope.sender or "") not in names:
                    found.append(envelope)
        found.sort(key=lambda envelope: envelope.id or 0)
        return found, gap

    async def _after(self, key: str, after: int, upto: int) -> tuple[list[Envelope], bool]:
        """Entries of stream ``key`` with ids in (``after``, ``upto``], oldest first, and
        whether the stream was trimmed past ``after``."""
        found: list[Envelope] = []
        end = "+"
        reached = False
        while True:
            page = await self._redis.xrevrange(key, end, "-", count=_PAGE)
            for _, fields in page:
                envelope = self._checked(fields)
                if envelope is None:
                    continue
                if _last_of(envelope) <= after:
                    reached = True
                    break
                if (envelope.id or 0) <= upto:
                    found.append(envelope)  # (a batch partly had is cut by the caller)
            if reached or len(page) < _PAGE:
                break
            end = "(" + page[-1][0].decode()
        found.reverse()
        gap = False
        if not reached and after > 0:
            # The stream starts after ``after``: were entries trimmed off its front?
            info = await self._redis.xinfo_stream(key) if await self._redis.exists(key) else {}
            added = info.get("entries-added")
            length = info.get("length", 0)
            gap = bool(added is not None and added > length)
        return found, gap

    async def recent(self, room: str) -> list[Envelope]:
        newest = await self._redis.xrevrange(
            self._room_key(room), "+", "-", count=min(1000, self.stream_length)
        )
        found = [self._checked(fields) for _, fields in reversed(newest)]
        return [envelope for envelope in found if envelope is not None]

    # -- sessions -----------------------------------------------------------------------------

    async def find_session(self, digest: str) -> dict[str, str] | None:
        if self._state != _UP:
            return None
        async with asyncio.timeout(self.heartbeat):
            raw = await self._redis.hgetall(self._session_key(digest))
            if not raw:
                return None
            record = {k.decode(): v.decode() for k, v in raw.items()}
            # The name may have been given back since (its server stopped, or died) and taken
            # by a member of another live server: the session cannot take it from them.
            owner = await self._redis.hget(self._names_key, name_key(record.get("name", "")))
            if owner is not None:
                owner_id = owner.decode().split("|", 1)[0]
                if owner_id not in (record.get("server"), self.server_id) and (
                    await self._redis.exists(self._server_key(owner_id))
                ):
                    return None
        return record

    def save_session(self, digest: str, record: dict[str, str], ttl: float) -> None:
        self._enqueue("session", (self._session_key(digest), record, ttl))

    def drop_session(self, digest: str) -> None:
        self._enqueue("session", (self._session_key(digest), None, 0))

    def take(self, name: str, room: str) -> None:
        self.moved(name, room)  # HSET: ours now, whoever had it

    # -- statistics ---------------------------------------------------------------------------

    def statistics(self) -> BackplaneStatistics:
        return BackplaneStatistics(
            connected=self._state != _DOWN and self._connected,
            published=self._published,
            received=self._received,
            failures=self._failures,
            reconnects=self._reconnects,
            lost_messages=self._lost_messages,
            bad_entries=self._bad,
            duplicates=self._duplicates,
            caught_up=self._caught_up,
        )


def _entry_id(entry: Any) -> int:
    """The message id of a raw stream entry (0 if it has none: it is skipped later)."""
    try:
        return int(entry[1][b"i"])
    except (KeyError, ValueError, TypeError):
        return 0


def _wrong_type(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a key that holds something else (not retried)."""
    return "WRONGTYPE" in str(exc)


def _last_of(envelope: Envelope) -> int:
    """The id of the last message of an envelope from the log (a batch takes one id per
    message; anything else one)."""
    ident = envelope.id or 0
    if envelope.kind == bp.BATCH and len(envelope.texts) > 1:
        return ident + len(envelope.texts) - 1
    return ident


def _entry_ms(entry: Any) -> float:
    """The time (Redis's clock, ms) in a raw stream entry's id."""
    try:
        return float(entry[0].split(b"-", 1)[0])
    except (ValueError, TypeError, AttributeError, IndexError):
        return 0.0


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def _as_history(envelope: Envelope) -> Envelope:
    """Mark an envelope read to fill the history (not news): it has no origin (see
    ``Cluster._deliver``)."""
    return dataclasses.replace(envelope, origin="")
