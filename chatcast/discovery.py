"""Find chat servers on the LAN: servers announce themselves, clients listen.

::

    # A server announces itself while it runs (every 2 s, TTL 1, on the interface given):
    server = BroadcastServer("192.168.1.10", 8080, announce=Announce(interface="192.168.1.10"))

    # A client lists what it hears for a while...
    servers = await discover_once(interface="192.168.1.10", seconds=3.0)

    # ... or follows the servers as they come, change and go:
    async with discover(interface="192.168.1.10") as found:
        async for server in found:              # DiscoveredServer, on each change
            print(server.name, server.host, server.port, "gone" if server.gone else "")

    # ... and connects to one:
    async with client_for(servers[0], name="alice") as client:
        await client.send("halo")

Beacons are datagrams of chatcast's own kind (``"type": "beacon"``) on group
``239.255.67.67`` port ``5067``, apart from the chat's ``224.1.1.1:5004``; with the multicast
key they are signed, and a listener with the key hears only beacons signed with it.
``docs/discovery.md`` describes them, and what they tell everyone on the network.

The decisions (what a beacon says, which ones are accepted, when a server is forgotten) are
in the sans-I/O :mod:`chatcast._core.beacon`; this module does the sockets and the timers.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import ssl as ssl_module
import time
from collections.abc import Callable
from typing import Any, Final

from . import _sockets
from ._announce import Announce, Announcer, ServerInfo
from ._core.beacon import (
    DEFAULT_DISCOVERY_GROUP,
    DEFAULT_DISCOVERY_PORT,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_SERVERS,
    BeaconDecoder,
    BeaconSkip,
    DiscoveredServer,
    ServerTable,
)
from ._core.datagram import check_key
from .client import BroadcastClient
from .exceptions import ChannelClosed

__all__ = [
    "DEFAULT_DISCOVERY_GROUP",
    "DEFAULT_DISCOVERY_PORT",
    "DEFAULT_INTERVAL",
    "Announce",
    "Announcer",
    "DiscoveredServer",
    "Discovery",
    "DiscoveryStatistics",
    "ServerInfo",
    "client_for",
    "discover",
    "discover_once",
]

logger = logging.getLogger("chatcast.discovery")

#: How often a listener looks for servers that stopped announcing, in seconds.
_EXPIRY_TICK: Final = 0.25
#: Changes held for a reader that does not keep up; the oldest go first.
_MAX_CHANGES: Final = 1024
#: Datagrams read straight from the socket per wake-up, after the one asyncio read.
_DRAIN: Final = 63
#: Bytes asked for per datagram: more than a beacon may be, so an oversized one is seen
#: whole and counted.
_RECV_SIZE: Final = 2048


@dataclasses.dataclass(frozen=True, slots=True)
class DiscoveryStatistics:
    """Counters of one :class:`Discovery`, taken at one instant.

    ``received == accepted + oversized + invalid + unsigned + forged + stale + replayed``.

    Attributes:
        received: Datagrams read.
        accepted: Valid beacons (of servers new, known, or saying goodbye).
        oversized: Datagrams over 1024 bytes, skipped unread.
        invalid: Datagrams that are not valid beacons.
        unsigned: With a key: unsigned beacons, skipped.
        forged: With a key: beacons signed with another key, altered, cut or malformed.
        stale: With a key: beacons stamped more than 5 minutes from this host's clock.
        replayed: With a key: beacons heard already.
        servers: Servers known now.
        evicted: Servers forgotten to make room (``max_servers``): a sign of a flood.
        expired: Servers forgotten because they stopped announcing.
        overflowed: Changes dropped because the reader did not keep up.
    """

    received: int = 0
    accepted: int = 0
    oversized: int = 0
    invalid: int = 0
    unsigned: int = 0
    forged: int = 0
    stale: int = 0
    replayed: int = 0
    servers: int = 0
    evicted: int = 0
    expired: int = 0
    overflowed: int = 0


class Discovery:
    """Listens for beacons: the servers heard now, and their changes as they happen.

    Make one with :func:`discover`. ``async with`` opens and closes it; iterating it
    (``async for server in discovery``) yields a :class:`DiscoveredServer` each time a server
    is first heard, changes what it announces (its client count, say), or goes
    (``server.gone``: it said goodbye, or was silent for three of its intervals); the
    iteration ends when the discovery is closed. :meth:`servers` is the list now.
    At most ``max_servers`` servers are remembered and 1024 changes held for a reader that
    does not keep up (the oldest dropped), whatever the network sends.
    """

    def __init__(
        self,
        *,
        interface: str | None,
        group: str,
        port: int,
        key: bytes | str | None,
        max_servers: int,
    ) -> None:
        parsed = _sockets.parse_group(group)
        _sockets.check_port(port)
        family = socket.AF_INET if parsed.version == 4 else socket.AF_INET6
        self._interface = _sockets.resolve_interface(interface, family)
        self._group = parsed
        self._port = port
        self._decoder = BeaconDecoder(
            key=None if key is None else check_key(key), max_servers=max_servers
        )
        self._table = ServerTable(max_servers=max_servers)
        self._changes: collections.deque[DiscoveredServer] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _ReceiveProtocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = "new"
        self._expired = 0
        self._overflowed = 0

    async def open(self) -> None:
        """Join the group and start listening.

        Raises:
            RuntimeError: Opened already.
            OSError: The OS refused to bind or join.
        """
        if self._state != "new":
            raise RuntimeError("a Discovery can be opened once")
        self._state = "open"
        loop = self._loop = asyncio.get_running_loop()
        sock = _sockets.open_receive_socket(
            self._group, self._port, self._interface, receive_buffer_bytes=None
        )
        try:
            self._transport, self._protocol = await loop.create_datagram_endpoint(
                lambda: _ReceiveProtocol(self._datagram), sock=sock
            )
            if not type(loop).__name__.startswith("Proactor"):
                # Windows' proactor has a read in flight: reading ahead would reorder.
                self._protocol.sock = sock
        except BaseException:
            sock.close()
            self._state = "closed"
            raise
        self._timer = loop.call_later(_EXPIRY_TICK, self._expire)
        logger.info("listening for servers on %s port %d on %s", self._group, self._port,
                    self._interface)  # fmt: skip

    def close(self) -> None:
        """Stop listening; idempotent. A reader waiting in the iteration stops."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._timer is not None:
            self._timer.cancel()
        if self._protocol is not None:
            self._protocol.sock = None
        if self._transport is not None:
            self._transport.close()
        self._wake()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed (after :meth:`close`)."""
        if self._protocol is not None:
            await asyncio.shield(self._protocol.closed)

    async def __aenter__(self) -> Discovery:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def servers(self) -> list[DiscoveredServer]:
        """The servers heard and not gone, by name."""
        return self._table.servers()

    def statistics(self) -> DiscoveryStatistics:
        """The counters now (see :class:`DiscoveryStatistics`)."""
        decoder = self._decoder
        skipped = {reason.value: decoder.skipped[reason] for reason in BeaconSkip}
        return DiscoveryStatistics(
            received=decoder.received,
            accepted=decoder.received - sum(skipped.values()),
            servers=len(self._table),
            evicted=self._table.evicted,
            expired=self._expired,
            overflowed=self._overflowed,
            **skipped,
        )

    async def next_change(self) -> DiscoveredServer:
        """The next change: a server new, changed or gone.

        Raises:
            ChannelClosed: The discovery is closed (or was never opened).
        """
        while not self._changes:
            if self._state != "open" or self._loop is None:
                raise ChannelClosed("the discovery is closed")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._changes.popleft()

    def __aiter__(self) -> Discovery:
        return self

    async def __anext__(self) -> DiscoveredServer:
        try:
            return await self.next_change()
        except ChannelClosed:
            raise StopAsyncIteration from None

    def _datagram(self, data: bytes, addr: Any) -> None:
        beacon = self._decoder.decode(data, time.time())
        if isinstance(beacon, BeaconSkip):
            return
        assert self._loop is not None
        change = self._table.update(beacon, str(addr[0]), self._loop.time())
        if change is not None:
            self._change(change)

    def _expire(self) -> None:
        assert self._loop is not None
        for server in self._table.expire(self._loop.time()):
            self._expired += 1
            self._change(server)
        self._timer = self._loop.call_later(_EXPIRY_TICK, self._expire)

    def _change(self, server: DiscoveredServer) -> None:
        if len(self._changes) >= _MAX_CHANGES:
            self._changes.popleft()
            self._overflowed += 1
        self._changes.append(server)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _ReceiveProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to ``on_datagram``; having been handed one, reads what else is
    waiting straight from the socket (at most ``_DRAIN``), as the multicast receiver does:
    asyncio's selector transport reads one datagram per loop iteration, which in a flood
    would leave the kernel dropping most beacons, a real server's among them."""

    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self._on_datagram = on_datagram
        self.sock: socket.socket | None = None  # for reading ahead; None under a proactor
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        on_datagram = self._on_datagram
        on_datagram(data, addr)
        for _ in range(_DRAIN):
            if self.sock is None:
                return
            try:
                data, addr = self.sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("discovery receive error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sock = None
        if not self.closed.done():
            self.closed.set_result(None)


def discover(
    *,
    interface: str | None = None,
    group: str = DEFAULT_DISCOVERY_GROUP,
    port: int = DEFAULT_DISCOVERY_PORT,
    key: bytes | str | None = None,
    max_servers: int = DEFAULT_MAX_SERVERS,
) -> Discovery:
    """Listen for servers' beacons: ``async with discover(...) as found: async for ...``.

    Args:
        interface: Where to listen: an address or name of this host's interface, or
            ``None`` for the OS's choice (the route to the group).
        group: The discovery group.
        port: The discovery UDP port.
        key: The multicast key: hear only beacons signed with it. Without one every beacon
            is heard, signed or not, and none is authenticated.
        max_servers: Servers remembered at once, at least 1 (the least recently heard go).

    Raises:
        ValueError: A group, port, interface, key or ``max_servers`` out of range.
    """
    return Discovery(interface=interface, group=group, port=port, key=key, max_servers=max_servers)


async def discover_once(
    *,
    seconds: float = 3.0,
    interface: str | None = None,
    group: str = DEFAULT_DISCOVERY_GROUP,
    port: int = DEFAULT_DISCOVERY_PORT,
    key: bytes | str | None = None,
    max_servers: int = DEFAULT_MAX_SERVERS,
) -> list[DiscoveredServer]:
    """Listen for ``seconds``; return the servers heard and not gone, by name.

    Servers announce every 2 s by default, so listening over 2 s hears every one on a
    network that does not lose the datagrams. Other arguments as :func:`discover`.

    Raises:
        ValueError: An argument out of range.
        OSError: The OS refused to bind or join.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    async with discover(
        interface=interface, group=group, port=port, key=key, max_servers=max_servers
    ) as found:
        await asyncio.sleep(seconds)  # the listening window itself, not a synchronisation
        return found.servers()


def client_for(
    server: DiscoveredServer,
    *,
    ssl: ssl_module.SSLContext | bool | None = None,
    **options: Any,
) -> BroadcastClient:
    """A :class:`~chatcast.client.BroadcastClient` (not yet connected) for a discovered server.

    It connects to the server's TCP port, or, if it has only TLS, to its TLS port with
    ``ssl`` (default: the system's trust store, as ``ssl=True``). ``options`` are the
    client's other arguments (``name``, ``room``, ``token``...).

    Raises:
        ValueError: The server has neither TCP nor TLS (a web port only), or a bad option.
    """
    if server.tcp is not None and not ssl:
        return BroadcastClient(server.host, server.tcp, **options)
    if server.tls is not None:
        return BroadcastClient(server.host, server.tls, ssl=ssl or True, **options)
    if ssl and server.tcp is not None:
        raise ValueError(f"server {server.name!r} has no TLS port (its TCP port is plain)")
    raise ValueError(f"server {server.name!r} has no TCP or TLS port to connect to")
