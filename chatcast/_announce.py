"""The sending half of LAN discovery: a server's beacons (:class:`Announcer`).

:class:`Announce` is how a server is told to announce itself
(``BroadcastServer(announce=Announce(...))``); :class:`Announcer` sends the beacons, on the
one interface named: at once, every ``interval``, and a goodbye at the end. What a beacon
says and how it is signed is :mod:`chatcast._core.beacon`'s; :mod:`chatcast.discovery` is the
public face (it exports these) and the listening half.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable

from . import _sockets
from ._core.beacon import (
    DEFAULT_DISCOVERY_GROUP,
    DEFAULT_DISCOVERY_PORT,
    DEFAULT_INTERVAL,
    MAX_NAME_CHARS,
    Beacon,
    BeaconEncoder,
)
from ._core.datagram import check_key

__all__ = ["Announce", "Announcer", "ServerInfo"]

logger = logging.getLogger("chatcast.discovery")


@dataclasses.dataclass(frozen=True, slots=True)
class Announce:
    """How a server announces itself (``BroadcastServer(announce=Announce(...))``).

    Args:
        interface: The interface to announce on, by address or name. ``None``: the server's
            own listening address, which must then be a specific one (not ``0.0.0.0``):
            beacons never go out on an interface nobody named.
        name: The name listed (at most 64 characters); default: this host's name.
        host: The address clients are told to connect to; default: the server's listening
            address if it is a specific one, else the interface's if given as an address,
            else none (clients use the beacon's source address).
        group: The discovery group.
        port: The discovery UDP port.
        ttl: TTL of beacons: 1 (default) keeps them on the local network, 0 on this host.
        interval: Seconds between beacons, 0.5 to 60.
        key: The multicast key (``bytes``, or ``str`` as UTF-8): sign beacons with it.
        web: A web (WebSocket) port to list too, if the server has one.

    Raises:
        ValueError: An argument out of range (the message names it).
    """

    interface: str | None = None
    name: str | None = None
    host: str | None = None
    group: str = DEFAULT_DISCOVERY_GROUP
    port: int = DEFAULT_DISCOVERY_PORT
    ttl: int = 1
    interval: float = DEFAULT_INTERVAL
    key: bytes | str | None = None
    web: int | None = None

    def __post_init__(self) -> None:
        _sockets.parse_group(self.group)
        _sockets.check_port(self.port)
        _sockets.check_ttl(self.ttl)
        if isinstance(self.interval, bool) or not 0.5 <= self.interval <= 60:
            raise ValueError(f"interval must be 0.5 to 60 seconds, got {self.interval!r}")
        if self.name is not None and not 0 < len(self.name) <= MAX_NAME_CHARS:
            raise ValueError(f"name must be 1 to {MAX_NAME_CHARS} characters, got {self.name!r}")
        if self.key is not None:
            check_key(self.key)
        if self.web is not None:
            _sockets.check_port(self.web)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerInfo:
    """What a beacon says about the server now (asked before each beacon).

    Attributes:
        host: The server's listening address (``None`` or a wildcard: all).
        port: Its port.
        tls: Whether the port speaks TLS.
        token: Whether a token is needed.
        clients: Clients connected now.
        web: The port of its chat page (:class:`~chatcast.web.WebGateway`), if it serves one.
    """

    host: str | None
    port: int
    tls: bool
    token: bool
    clients: int
    web: int | None = None


def _specific(host: str | None) -> str | None:
    """``host`` if it is one specific address (not a wildcard, not a name), else None."""
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if address.is_unspecified else host


class Announcer:
    """Sends one server's beacons: at once on :meth:`start`, then every ``interval``, and a
    goodbye on :meth:`close`.

    Args:
        info: Called before each beacon for what it says.
        announce: Where and how to announce.
        server_host: The server's listening address, for the defaults of ``announce``.

    Raises:
        ValueError: No interface could be chosen (a wildcard ``server_host`` and no
            ``interface``), or an unknown interface.
    """

    def __init__(
        self, info: Callable[[], ServerInfo], announce: Announce, *, server_host: str | None
    ) -> None:
        interface = announce.interface or _specific(server_host)
        if interface is None:
            raise ValueError(
                "announcing needs an interface: give one (e.g. interface='192.168.1.10'), or "
                "listen on a specific address instead of all of them"
            )
        group = _sockets.parse_group(announce.group)
        family = socket.AF_INET if group.version == 4 else socket.AF_INET6
        self._interface = _sockets.resolve_interface(interface, family)
        self._group = group
        self._announce = announce
        self._info = info
        self._host = announce.host or _specific(server_host) or _specific(interface)
        self._name = announce.name or (socket.gethostname()[:MAX_NAME_CHARS] or "chatcast")
        #: This run's server id: 16 hex digits, new each time.
        self.server_id = secrets.token_hex(8)
        key = None if announce.key is None else check_key(announce.key)
        self._encoder = BeaconEncoder(self.server_id, epoch=time.time_ns() // 1000, key=key)
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] | None = None
        #: Beacons handed to the OS.
        self.sent = 0
        #: Beacons the OS refused (logged at debug level).
        self.errors = 0

    async def start(self) -> None:
        """Open the socket and send the first beacon.

        Raises:
            OSError: The OS refused the socket or the route to the group.
        """
        loop = asyncio.get_running_loop()
        sock = _sockets.open_send_socket(
            self._group, self._announce.port, self._interface, ttl=self._announce.ttl
        )
        try:
            transport, protocol = await loop.create_datagram_endpoint(_SendProtocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._transport = transport
        self._closed = protocol.closed
        logger.info(
            "announcing %s as %r on %s (group %s port %d, ttl %d)",
            self.server_id,
            self._name,
            self._interface,
            self._group,
            self._announce.port,
            self._announce.ttl,
        )
        self._tick()

    def _beacon(self, *, bye: bool = False) -> Beacon:
        info = self._info()
        return Beacon(
            server_id=self.server_id,
            name=self._name,
            host=self._host or _specific(info.host),
            tcp=None if info.tls else info.port,
            tls=info.port if info.tls else None,
            web=info.web if info.web is not None else self._announce.web,
            token=info.token,
            clients=info.clients,
            interval=self._announce.interval,
            bye=bye,
        )

    def _send(self, beacon: Beacon) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(self._encoder.encode(beacon, time.time()))
        except (OSError, ValueError) as exc:
            self.errors += 1
            logger.debug("beacon not sent: %s", exc)
            return
        self.sent += 1

    def _tick(self) -> None:
        self._send(self._beacon())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._announce.interval, self._tick)

    def close(self) -> None:
        """Send the goodbye and stop; idempotent. :meth:`wait_closed` waits for the socket."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._send(self._beacon(bye=True))
            self._transport.close()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed (after :meth:`close`)."""
        if self._closed is not None:
            await asyncio.shield(self._closed)


class _SendProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def error_received(self, exc: Exception) -> None:
        logger.debug("beacon send error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
