"""Backplanes: several :class:`~chatcast.server.BroadcastServer` s acting as one chat.

A backplane carries what happens in rooms from each server to all the others. chatcast does not
invent a cluster protocol: :class:`RedisBackplane` uses Redis pub/sub for events and a Redis hash
for who is where, as Socket.IO's Redis adapter, Django Channels and SignalR do.

Guarantees (``docs/scaling.md``):

* Each batch of room messages crosses Redis **once per server**, not once per client; every
  server fans it out to its own members. A server ignores its own envelopes, so nothing is
  delivered twice.
* Per sender, order is kept on every server.
* **At most once across servers.** While Redis is unreachable, local rooms keep working;
  envelopes that cannot cross are dropped and counted (``failures``), and names are claimed
  locally only. When Redis returns, the server re-registers its names and carries on.

The core of chatcast stays stdlib-only: this module imports ``redis`` only when a
:class:`RedisBackplane` is created (``pip install chatcast[redis]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ._core.commands import name_key
from ._core.envelope import BATCH, Envelope
from .exceptions import BackplaneError

__all__ = [
    "Backplane",
    "BackplaneStatistics",
    "Envelope",
    "RedisBackplane",
    "RedisPubSubBackplane",
    "redact",
]

log = logging.getLogger("chatcast.backplane")


@dataclass(frozen=True, slots=True)
class BackplaneStatistics:
    """A snapshot of a backplane's counters.

    Attributes:
        connected: Whether the backplane is connected to its engine now.
        published: Envelopes published.
        received: Envelopes received from other servers.
        failures: Envelopes that could not cross (engine down, queue full): lost for the
            other servers (at most once). An envelope whose publication was not confirmed
            (the engine stopped answering) counts too, though it may have crossed after all.
        lost_messages: The chat messages in those envelopes (a batch holds several; a
            notice, announcement or private message counts one).
        reconnects: Times the connection was re-established after a loss (or after the
            engine was unreachable at start).
        bad_entries: Entries of the log that were skipped: malformed, foreign, or with an
            id the log never gave (from the future).
        duplicates: Entries dropped because their id had been delivered already.
        caught_up: Entries read after a lost connection came back (they would have been lost
            without the log).
    """

    connected: bool
    published: int
    received: int
    failures: int
    reconnects: int
    lost_messages: int = 0
    bad_entries: int = 0
    duplicates: int = 0
    caught_up: int = 0


#: What the server gives a backplane to call: deliver an envelope from another server (or,
#: from a :attr:`~Backplane.sequenced` one, from any server, this one included), and report a
#: state change ("down", "up": reconnected and resynced).
Deliver = Callable[[Envelope], None]
StateChanged = Callable[[str, str], None]
#: Called once an envelope is in the backplane's log, with the id of its first message; with
#: ``None`` if it could not get there (the server then delivers it locally only).
Done = Callable[[int | None], None]


class Backplane:
    """The interface a :class:`~chatcast.server.BroadcastServer` uses; subclass to add an engine.

    Every method that the server calls from its protocol callbacks (:meth:`publish`,
    :meth:`moved`, :meth:`release`) returns at once and never raises: they queue work for the
    backplane's own task. :meth:`claim` and :meth:`presence` are coroutines the
    server awaits outside the hot path.
    """

    #: Seconds between liveness refreshes; the server re-reads :meth:`presence` as often.
    heartbeat: float = 5.0
    #: Whether the engine keeps a log that numbers messages (see :attr:`sequenced`).
    logged: bool = False

    def __init__(self) -> None:
        #: This server's id on the backplane (random, unique).
        self.server_id = uuid.uuid4().hex[:12]
        self._deliver: Deliver = lambda envelope: None
        self._state_changed: StateChanged = lambda state, detail: None

    def attach(self, deliver: Deliver, state_changed: StateChanged) -> None:
        """Called by the server before :meth:`start`."""
        self._deliver = deliver
        self._state_changed = state_changed

    async def start(self) -> None:
        """Connect and start carrying envelopes."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop; release this server's names."""
        raise NotImplementedError

    def publish(self, envelope: Envelope, done: Done | None = None) -> int | None:
        """Queue ``envelope`` for every other server. Never waits, never raises.

        A ``sequenced`` backplane calls ``done`` once the envelope is in its log (with the
        id of its first message) or once it gave up (with ``None``, perhaps at once), and
        returns the sequence number the envelope comes back with (None if given up).
        """
        raise NotImplementedError

    @property
    def sequenced(self) -> bool:
        """Whether messages go through the backplane's log now: numbered there, and
        delivered from it on every server, the sender's included. False for a fire-and-forget
        engine, and for a log that cannot be reached (the server then works locally)."""
        return False

    def follow(self, room: str) -> None:
        """This server has a member in ``room``: read its messages (sharded engines)."""

    def unfollow(self, room: str) -> None:
        """This server has no member in ``room`` any more."""

    def followed(self) -> list[str]:
        """The rooms read now."""
        return []

    async def following(self, room: str) -> int:
        """Return once ``room``'s messages are read (sharded engines): the newest id of the
        room that was history when its reading started."""
        return self.cutoff(room)

    def position(self, room: str) -> tuple[int, int]:
        """The newest ids delivered live from ``room`` and from everything else."""
        return 0, 0

    def reading(self, room: str) -> bool:
        """Whether ``room``'s messages are read now."""
        return True

    def cutoff(self, room: str) -> int:
        """The newest id of ``room`` delivered live here, or to be delivered as history only
        (a room being started): what comes after it is delivered live."""
        return self.position(room)[0]

    async def missed(
        self, room: str, names: frozenset[str], after: int, upto: tuple[int, int]
    ) -> tuple[list[Envelope], bool]:
        """What a member named one of ``names`` (name keys) in ``room`` missed after id
        ``after`` up to ``upto`` (a :meth:`position`): the room's envelopes, announcements
        and its private messages, in id order; and whether some are gone.

        Raises:
            Exception: The log cannot be read now.
        """
        raise NotImplementedError

    async def recent(self, room: str) -> list[Envelope]:
        """The newest envelopes of ``room`` kept in the log (up to 1000), oldest first.

        Raises:
            Exception: The log cannot be read now.
        """
        return []

    async def find_session(self, digest: str) -> dict[str, str] | None:
        """The session record ``digest`` (hex) names, saved by any server, or None."""
        return None

    def save_session(self, digest: str, record: dict[str, str], ttl: float) -> None:
        """Keep a session record where every server can find it, for ``ttl`` seconds."""

    def drop_session(self, digest: str) -> None:
        """Forget a session record."""

    def take(self, name: str, room: str) -> None:
        """Take ``name`` for this server whoever holds it (a resumed session owns it)."""
        self.moved(name, room)

    def disowned(self, name: str) -> None:
        """``name`` is another server's now (a session resumed there): forget it here,
        without giving it back (it is not re-registered as this server's)."""

    async def claim(self, name: str, room: str) -> bool:
        """Take ``name`` for a client of this server in ``room``; False if taken elsewhere."""
        raise NotImplementedError

    def moved(self, name: str, room: str) -> None:
        """Record that ``name`` (ours) is now in ``room``."""
        raise NotImplementedError

    def release(self, name: str) -> None:
        """Give ``name`` (ours) back."""
        raise NotImplementedError

    async def presence(self) -> dict[str, tuple[str, str]]:
        """Every name held by a live server (this one included): its server id and room.

        Raises:
            Exception: The engine cannot be asked now (the caller keeps what it knew).
        """
        raise NotImplementedError

    def statistics(self) -> BackplaneStatistics:
        """Return a snapshot of the counters."""
        raise NotImplementedError


# Compare-and-delete: drop a name only if this server owns it.
_RELEASE_SCRIPT: Final = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and string.sub(value, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '|' then
    return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class RedisPubSubBackplane(Backplane):
    """A backplane on Redis pub/sub, at most once: the design before the log (#12).

    Kept for comparison (``benchmarks/sharding.py``) and for Redis older than 5: every server
    reads every envelope; whatever crosses while a server's link is down is lost (counted);
    ids are per server and sessions cannot move. :class:`RedisBackplane` is the default.

    Pub/sub for events, a hash for names.

    Args:
        url: The Redis URL, e.g. ``"redis://127.0.0.1:6379/0"``.
        prefix: Key and channel prefix; servers with the same prefix form one chat.
        queue_size: Envelopes held while the publisher catches up; beyond it they are
            dropped and counted as failures.
        heartbeat: Seconds between this server's liveness refreshes; a server not heard from
            for three heartbeats is dead and its names are free again. Redis counts as down
            when nothing at all has come from it (an envelope, any command's reply, the
            answer to a ``PING`` sent on the subscription after one quiet heartbeat) for two
            heartbeats of the event loop's own punctual time: a loop running late is busy, and
            a busy server is not a dead Redis.

    Servers form one chat when they share the Redis server, the database number of the URL
    and ``prefix``; any of the three apart makes separate chats (Redis pub/sub itself ignores
    the database number: the channel names carry it).

    Raises:
        ImportError: redis-py is not installed (``pip install chatcast[redis]``).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "chatcast",
        queue_size: int = 10000,
        heartbeat: float = 5.0,
    ) -> None:
        super().__init__()
        try:
            import redis.asyncio  # noqa: F401  (checked here, used in start())
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "RedisBackplane needs redis-py: pip install 'chatcast[redis]'"
            ) from exc
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not heartbeat > 0:
            raise ValueError(f"heartbeat must be > 0 seconds, got {heartbeat}")
        self.url = url
        self.prefix = prefix
        self.heartbeat = heartbeat
        # Pub/sub channels are global to a Redis server, keys are per database: name the
        # database in the channel, or chats on /0 and /1 would hear each other.
        self._channel = f"{prefix}:events:db{_database(url)}"
        self._names_key = f"{prefix}:names"
        # (operation, payload, chat messages it carries)
        self._queue: asyncio.Queue[tuple[str, Any, int]] = asyncio.Queue(queue_size)
        self._local: dict[str, str] = {}  # our names -> room, for resync
        self._redis: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._closing = False
        self._published = 0
        self._received = 0
        self._failures = 0
        self._lost_messages = 0
        self._reconnects = 0
        self._last_heard = 0.0  # loop time anything last came from Redis
        self._fatal: BaseException | None = None  # a refusal no retry will cure
        self._started = False  # start() has returned: refusals are retried like outages

    @property
    def where(self) -> str:
        """The URL without its password, for logs and banners."""
        return redact(self.url)

    def _server_key(self, server_id: str) -> str:
        return f"{self.prefix}:server:{server_id}"

    def _entry(self, name: str, room: str) -> str:
        # The names hash: field name_key(name), so "Alice" and "alice" are one name across
        # the cluster; value "server|room|name" (neither rooms nor names hold "|").
        return f"{self.server_id}|{room}|{name}"

    async def start(self) -> None:
        """Connect to Redis and start the publisher, subscriber and heartbeat tasks.

        Starts even when Redis is unreachable (local rooms work; the backplane keeps
        retrying, and reports "down" then "up" through the server's events).

        Raises:
            BackplaneError: Redis answered but refused us: a wrong password, a database
                number it does not have. Retrying would not help.
        """
        self._connect()
        ready = asyncio.Event()
        await self._run(
            [
                asyncio.create_task(self._subscriber(ready), name="chatcast-backplane-sub"),
                asyncio.create_task(self._publisher(), name="chatcast-backplane-pub"),
                asyncio.create_task(self._beat(), name="chatcast-backplane-beat"),
            ],
            ready,
        )

    def _connect(self) -> None:
        """Make the Redis client (it connects when first used)."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        # One immediate retry on a broken connection: after Redis restarts, the pool's old
        # connections are dead and the first command on each would otherwise be lost.
        self._redis = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )

    async def _run(self, tasks: list[asyncio.Task[None]], ready: asyncio.Event) -> None:
        """Keep ``tasks`` (the backplane's own), and wait briefly for the first connection
        (``ready``), so that a server started next to others hears them from its first
        client on; carry on regardless if Redis is down.

        Raises:
            BackplaneError: Redis answered but refused us.
        """
        self._tasks = tasks
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                await ready.wait()
        self._started = True
        if self._fatal is not None:
            fatal = self._fatal
            await self.close()
            raise BackplaneError(f"Redis at {self.where} refused us: {fatal}") from fatal

    async def close(self) -> None:
        """Publish what is queued (for up to 2 s), stop the tasks, give back this server's
        names, and disconnect."""
        if self._connected and not self._closing:
            # The leave notices of a closing server's clients are in the queue: let them go.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._queue.join()
        self._closing = True
        # redis-py can turn a cancellation inside its reconnect path into a ConnectionError;
        # the loops also stop on _closing, and the wait is bounded either way.
        pending = set(self._tasks)
        for _ in range(3):
            for task in pending:
                task.cancel()
            if not pending:
                break
            _, pending = await asyncio.wait(pending, timeout=1)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    for name in list(self._local):
                        await self._redis.eval(
                            _RELEASE_SCRIPT, 1, self._names_key, name_key(name), self.server_id
                        )
                    await self._redis.delete(self._server_key(self.server_id))
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._redis.aclose()
        self._connected = False

    # -- queued work --------------------------------------------------------------------

    def publish(self, envelope: Envelope, done: Done | None = None) -> int | None:
        messages = len(envelope.texts) if envelope.kind == BATCH else 1
        self._enqueue("publish", envelope.encode(), messages)
        return None

    def moved(self, name: str, room: str) -> None:
        self._local[name] = room
        self._enqueue("hset", (name_key(name), self._entry(name, room)))

    def release(self, name: str) -> None:
        self._local.pop(name, None)
        self._enqueue("release", name_key(name))

    def disowned(self, name: str) -> None:
        key = name_key(name)
        for held in [held for held in self._local if name_key(held) == key]:
            del self._local[held]

    def _enqueue(self, op: str, payload: Any, messages: int = 0) -> None:
        if self._closing:
            return
        if not self._connected and op == "publish":
            self._lost(1, messages)  # Redis is down: at most once, counted
            return
        try:
            self._queue.put_nowait((op, payload, messages))
        except asyncio.QueueFull:
            if op == "publish":
                self._lost(1, messages)

    def _lost(self, envelopes: int, messages: int) -> None:
        self._failures += envelopes
        self._lost_messages += messages

    async def _publisher(self) -> None:
        """Run queued operations in order, pipelining whatever has piled up."""
        while not self._closing:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 512:
                batch.append(self._queue.get_nowait())
            try:
                async with asyncio.timeout(2 * self.heartbeat + 5):  # a hung Redis too
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for op, payload, _ in batch:
                            if op == "publish":
                                pipe.publish(self._channel, payload)
                            elif op == "hset":
                                pipe.hset(self._names_key, payload[0], payload[1])
                            else:  # release: compare-and-delete, rare enough for EVAL
                                pipe.eval(
                                    _RELEASE_SCRIPT, 1, self._names_key, payload, self.server_id
                                )
                        await pipe.execute()
                self._heard()
                self._published += sum(1 for op, _, _ in batch if op == "publish")
            except Exception as exc:  # redis-py raises many types; all mean "did not cross"
                lost = sum(1 for op, _, _ in batch if op == "publish")
                self._lost(lost, sum(messages for _, _, messages in batch))
                if lost:
                    log.warning("backplane: %d envelopes lost: %s", lost, exc or "timeout")
                else:
                    log.info("backplane: name registry not updated (resynced later): %s", exc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    # -- claims and lookups ---------------------------------------------------------------

    async def claim(self, name: str, room: str) -> bool:
        """Take ``name`` cluster-wide (an atomic ``HSETNX``); False if another live server
        holds it. The server checks its own clients itself. While Redis is down or does not
        answer within a heartbeat, the claim is made locally only (unique on this server
        until the next resync)."""
        value = self._entry(name, room)
        field = name_key(name)
        if not self._connected:
            self._local[name] = room  # degraded: unique on this server only until resync
            return True
        try:
            async with asyncio.timeout(self.heartbeat):
                if await self._redis.hsetnx(self._names_key, field, value):
                    self._local[name] = room
                    return True
                owner = await self._redis.hget(self._names_key, field)
                owner_id = owner.decode().split("|", 1)[0] if owner else ""
                if owner_id == self.server_id or not await self._redis.exists(
                    self._server_key(owner_id)
                ):
                    # Left over by this server (a name it gave up while Redis was away), or
                    # by a server that died: take it.
                    await self._redis.hset(self._names_key, field, value)
                    self._local[name] = room
                    return True
                return False
        except Exception as exc:
            log.warning("backplane: claim of %r made locally only: %s", name, exc or "timeout")
            self._local[name] = room
            return True

    async def presence(self) -> dict[str, tuple[str, str]]:
        if not self._connected:
            raise ConnectionError("backplane is down")
        async with asyncio.timeout(self.heartbeat):
            return await self._presence()

    async def _presence(self) -> dict[str, tuple[str, str]]:
        raw = await self._redis.hgetall(self._names_key)
        # field -> [server, room, name]
        entries = {k.decode(): v.decode().split("|", 2) for k, v in raw.items()}
        servers = sorted({where[0] for where in entries.values()})
        alive = {self.server_id}
        if servers:
            async with self._redis.pipeline(transaction=False) as pipe:
                for server in servers:
                    pipe.exists(self._server_key(server))
                results = await pipe.execute()
            alive.update(s for s, ok in zip(servers, results, strict=True) if ok)
        return {
            (where[2] if len(where) > 2 else field): (where[0], where[1] if len(where) > 1 else "")
            for field, where in entries.items()
            if where[0] in alive
        }

    def statistics(self) -> BackplaneStatistics:
        return BackplaneStatistics(
            connected=self._connected,
            published=self._published,
            received=self._received,
            failures=self._failures,
            reconnects=self._reconnects,
            lost_messages=self._lost_messages,
        )

    # -- background tasks -----------------------------------------------------------------

    def _heard(self) -> None:
        """Note that Redis answered: any reply or message proves it alive."""
        self._last_heard = asyncio.get_running_loop().time()

    async def _beat(self) -> None:
        """Keep this server's liveness key fresh (other servers read it)."""
        while not self._closing:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.heartbeat):
                    await self._redis.set(
                        self._server_key(self.server_id),
                        b"1",
                        ex=max(1, round(3 * self.heartbeat)),
                    )
                self._heard()
            await asyncio.sleep(self.heartbeat)

    async def _subscriber(self, ready: asyncio.Event) -> None:
        """Receive envelopes; on a lost connection retry with backoff, then resync.

        Every "down" reported to the server is followed by an "up" once Redis is back,
        whether the connection was lost or Redis was unreachable from the start.
        """
        from redis.exceptions import AuthenticationError, ResponseError

        delay = 0.1
        connected_once = False
        down = False  # a "down" was reported and no "up" yet
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(2 * self.heartbeat + 5):  # a hung Redis too
                    await pubsub.subscribe(self._channel)
                    await self._resync()
                self._heard()
                self._connected = True
                delay = 0.1
                if down:
                    down = False
                    self._reconnects += 1
                    log.warning("backplane: connected to %s and resynced", self.where)
                    self._state_changed("up", "reconnected and resynced")
                connected_once = True
                ready.set()
                await self._listen(pubsub)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        await pubsub.aclose()
                raise
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, AuthenticationError | ResponseError) and not self._started:
                    self._fatal = exc  # a wrong password or database: start() reports it
                    ready.set()
                    return
                if not down:
                    down = True
                    if connected_once:
                        log.warning("backplane: lost %s (%s); retrying", self.where, reason)
                    else:
                        log.warning(
                            "backplane: cannot reach %s (%s); serving locally, retrying",
                            self.where,
                            reason,
                        )
                    self._state_changed("down", reason)
                self._connected = False
                ready.set()  # start() does not wait for a Redis that is not there
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        await pubsub.aclose()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(5.0, delay * 2)

    async def _listen(self, pubsub: Any) -> None:
        """Deliver envelopes until Redis is closed, lost or silent.

        Silence is measured in punctual loop time: each poll adds at most the time it was
        asked to wait, so a loop that comes back late (busy fanning out, or starved of CPU)
        does not count its own lateness against Redis. After one heartbeat of silence a
        ``PING`` goes out on this connection; its answer, any envelope, or any reply on
        another connection ends the silence. Two heartbeats of it mean Redis is down.

        Raises:
            ConnectionError: Redis said nothing for two heartbeats (a stopped or overloaded
                Redis, a dead link without RST).
        """
        loop = asyncio.get_running_loop()
        poll = min(1.0, self.heartbeat / 4)
        silent = 0.0
        pinged = False
        while not self._closing:
            started = loop.time()
            message = await pubsub.get_message(timeout=poll)
            now = loop.time()
            if message is not None:  # an envelope, a pong: Redis is there
                self._last_heard = now
                if message.get("type") == "message":
                    self._receive(message["data"])
            if now - self._last_heard <= poll:
                silent = 0.0
                pinged = False
                continue
            silent += min(now - started, poll)
            if silent > 2 * self.heartbeat:
                raise ConnectionError(f"no answer for {2 * self.heartbeat:g} s")
            if silent >= self.heartbeat and not pinged:
                pinged = True
                await pubsub.ping()

    async def _resync(self) -> None:
        """Re-register our names and liveness (Redis may have restarted empty), and give
        back the names this server let go of while Redis could not hear it."""
        await self._redis.set(
            self._server_key(self.server_id), b"1", ex=max(1, round(3 * self.heartbeat))
        )
        ours = {name_key(n): self._entry(n, room) for n, room in self._local.items()}
        mine = self.server_id + "|"
        stale = [
            field
            for field, value in (await self._redis.hgetall(self._names_key)).items()
            if value.decode().startswith(mine) and field.decode() not in ours
        ]
        if stale:
            await self._redis.hdel(self._names_key, *stale)
        if ours:
            await self._redis.hset(self._names_key, mapping=ours)

    def _receive(self, data: bytes) -> None:
        try:
            envelope = Envelope.decode(data)
        except ValueError as exc:
            log.warning("backplane: dropped a bad envelope: %s", exc)
            return
        if envelope.origin == self.server_id:
            return  # our own, already delivered locally
        self._received += 1
        self._deliver(envelope)


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to log or print."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _database(url: str) -> int:
    """The database number a Redis URL names (``/N`` or ``?db=N``; 0 by default)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query).get("db")
    text = query[0] if query else parts.path.strip("/")
    return int(text) if text.isdigit() else 0


from ._redis_streams import RedisBackplane  # noqa: E402  (it builds on the classes above)
