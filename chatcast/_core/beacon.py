"""LAN discovery, sans-I/O: the beacon a server announces itself with, and the table of
servers heard.

Rules of this room: what a beacon carries, how it is checked, and when a server is
forgotten are decided here; :mod:`chatcast.discovery` only moves datagrams and time in and
out. No socket, no event loop, no clock (the time is an argument). ``docs/discovery.md`` is
the normative description.

* :class:`Beacon` is what one server says about itself; :func:`encode_body` and
  :func:`decode_body` are its JSON form (``"type": "beacon"``, a kind of its own that no chat
  channel accepts as a message).
* :class:`BeaconEncoder` makes the datagrams of one server: the JSON body alone, or, with the
  multicast key, the body in the signed form of :mod:`chatcast._core.datagram` (the server
  id is the sender id).
* :class:`BeaconDecoder` turns a datagram into a :class:`Beacon` or the :class:`BeaconSkip`
  reason it was skipped; with a key only authentic, fresh, first-seen beacons pass.
* :class:`ServerTable` keeps the servers heard, at most ``max_servers`` of them (the least
  recently heard is dropped first), and forgets a server that said goodbye or stayed silent
  for three of its announced intervals.

Bounds, whatever the network sends: a datagram over :data:`MAX_BEACON_BYTES` is skipped
before it is parsed; the table and the replay state hold at most ``max_servers`` entries each;
every datagram costs one size check, at most one HMAC and one small JSON parse.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import math
import re
from typing import Any, Final

from .datagram import (
    HEADER_BYTES,
    MARKER,
    TRAILER_BYTES,
    Drop,
    ReplayGuard,
    SignedDatagram,
    Signer,
    Verifier,
)

__all__ = [
    "BEACON_TYPE",
    "DEFAULT_DISCOVERY_GROUP",
    "DEFAULT_DISCOVERY_PORT",
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_SERVERS",
    "MAX_BEACON_BYTES",
    "MAX_NAME_CHARS",
    "Beacon",
    "BeaconDecoder",
    "BeaconEncoder",
    "BeaconSkip",
    "DiscoveredServer",
    "ServerTable",
    "decode_body",
    "encode_body",
]

#: The discovery group: organisation-local (RFC 2365), so routers do not forward it out of
#: a site, and apart from the chat's 224.1.1.1.
DEFAULT_DISCOVERY_GROUP: Final = "239.255.67.67"
#: The discovery port: not the chat's 5004, so chat channels never hear beacons.
DEFAULT_DISCOVERY_PORT: Final = 5067
#: Seconds between two beacons of one server.
DEFAULT_INTERVAL: Final = 2.0
#: Servers a table remembers at once.
DEFAULT_MAX_SERVERS: Final = 256
#: Largest beacon datagram accepted; a real one is about 200 bytes (350 signed).
MAX_BEACON_BYTES: Final = 1024
#: Longest server name, in characters.
MAX_NAME_CHARS: Final = 64
#: The ``type`` of a beacon's JSON body.
BEACON_TYPE: Final = "beacon"
#: A server is forgotten after this many of its intervals without a beacon.
_MISSED: Final = 3
#: Announced intervals are taken within these bounds, in seconds (a forged 1e9 cannot pin
#: an entry; a 0 cannot make it vanish at once).
_MIN_INTERVAL, _MAX_INTERVAL = 0.1, 60.0
_SERVER_ID: Final = re.compile(r"[0-9a-f]{16}")
_MAX_HOST_CHARS: Final = 255
_VERSION: Final = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Beacon:
    """What a server announces about itself.

    Attributes:
        server_id: 16 lowercase hex digits, random per server run.
        name: A name for people to choose by (at most 64 characters).
        host: The address to connect to, or ``None``: the beacon's source address.
        tcp: The plain TCP port, or ``None``.
        tls: The TLS port, or ``None``.
        web: The web (WebSocket) port, or ``None``.
        token: Whether the server needs a token.
        clients: How many clients are connected.
        interval: Seconds until the next beacon.
        bye: The server is stopping: forget it now.
    """

    server_id: str
    name: str
    host: str | None = None
    tcp: int | None = None
    tls: int | None = None
    web: int | None = None
    token: bool = False
    clients: int = 0
    interval: float = DEFAULT_INTERVAL
    bye: bool = False

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ValueError(problem)


def _problem(beacon: Beacon) -> str | None:
    """Why ``beacon`` is not valid, or None."""
    if not isinstance(beacon.server_id, str) or not _SERVER_ID.fullmatch(beacon.server_id):
        return f"server_id must be 16 lowercase hex digits, got {beacon.server_id!r}"
    if not isinstance(beacon.name, str) or not 0 < len(beacon.name) <= MAX_NAME_CHARS:
        return f"name must be a str of 1 to {MAX_NAME_CHARS} characters, got {beacon.name!r}"
    if beacon.host is not None and (
        not isinstance(beacon.host, str) or not 0 < len(beacon.host) <= _MAX_HOST_CHARS
    ):
        return f"host must be None or a str of 1 to {_MAX_HOST_CHARS} characters"
    ports = (beacon.tcp, beacon.tls, beacon.web)
    for what, port in zip(("tcp", "tls", "web"), ports, strict=True):
        if port is not None and (not _is_int(port) or not 1 <= port <= 65535):
            return f"{what} must be None or a port in 1..65535, got {port!r}"
    if all(port is None for port in ports):
        return "a beacon needs at least one port (tcp, tls or web)"
    if not isinstance(beacon.token, bool) or not isinstance(beacon.bye, bool):
        return "token and bye must be bools"
    if not _is_int(beacon.clients) or beacon.clients < 0:
        return f"clients must be an int >= 0, got {beacon.clients!r}"
    interval = beacon.interval
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not math.isfinite(interval)
        or interval <= 0
    ):
        return f"interval must be a number of seconds > 0, got {interval!r}"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode_body(beacon: Beacon) -> bytes:
    """The beacon's JSON body: compact UTF-8, keys in a fixed order."""
    body = {
        "type": BEACON_TYPE,
        "v": _VERSION,
        "id": beacon.server_id,
        "name": beacon.name,
        "host": beacon.host,
        "tcp": beacon.tcp,
        "tls": beacon.tls,
        "web": beacon.web,
        "token": beacon.token,
        "clients": beacon.clients,
        "interval": beacon.interval,
        "bye": beacon.bye,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_body(body: bytes) -> Beacon | None:
    """The beacon in a JSON body, or ``None`` if it is not a valid one. Never raises.

    Unknown fields are ignored (a later version may add some); a missing optional field
    takes its default.
    """
    try:
        obj: Any = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(obj, dict) or obj.get("type") != BEACON_TYPE or obj.get("v") != _VERSION:
        return None
    try:
        return Beacon(
            server_id=obj.get("id"),  # type: ignore[arg-type]  # checked by Beacon
            name=obj.get("name"),  # type: ignore[arg-type]
            host=obj.get("host"),
            tcp=obj.get("tcp"),
            tls=obj.get("tls"),
            web=obj.get("web"),
            token=obj.get("token", False),
            clients=obj.get("clients", 0),
            interval=obj.get("interval", DEFAULT_INTERVAL),
            bye=obj.get("bye", False),
        )
    except (ValueError, TypeError):
        return None


class BeaconEncoder:
    """Makes one server's beacon datagrams, numbered from 1.

    Args:
        server_id: The server id, 16 lowercase hex digits (the signed form's sender id).
        epoch: The signed form's epoch (see :class:`~chatcast._core.datagram.Signer`).
        key: The multicast key: sign every beacon. ``None``: the JSON body alone.

    Raises:
        ValueError: A bad server id, epoch or key.
    """

    def __init__(self, server_id: str, *, epoch: int, key: bytes | None = None) -> None:
        self._signer = None if key is None else Signer(key, server_id, epoch)
        self._server_id = server_id
        #: The sequence number of the last signed beacon made; 0 at first.
        self.seq = 0

    def encode(self, beacon: Beacon, now: float) -> bytes:
        """The datagram carrying ``beacon``, sent at ``now`` (seconds since the Unix epoch).

        Raises:
            ValueError: ``beacon`` is another server's, or too large (a long host name).
        """
        if beacon.server_id != self._server_id:
            raise ValueError("the beacon's server_id is not this encoder's")
        body = encode_body(beacon)
        if self._signer is None:
            data = body
        else:
            data = self._signer.sign(self.seq + 1, int(now * 1000), body)
        if len(data) > MAX_BEACON_BYTES:
            raise ValueError(f"the beacon is {len(data)} bytes, over {MAX_BEACON_BYTES}")
        if self._signer is not None:
            self.seq += 1
        return data


class BeaconSkip(enum.Enum):
    """Why :meth:`BeaconDecoder.decode` skipped a datagram; the value names its counter."""

    #: Over :data:`MAX_BEACON_BYTES`.
    OVERSIZED = "oversized"
    #: Not a valid beacon (not JSON, another type, a field out of range), or a signed one
    #: whose server id is not its sender id.
    INVALID = "invalid"
    #: Keyed: not signed.
    UNSIGNED = "unsigned"
    #: Keyed: a wrong tag (another key, or altered), or a signed form cut or malformed.
    FORGED = "forged"
    #: Keyed: authentic, but stamped more than 5 minutes from this host's clock.
    STALE = "stale"
    #: Keyed: authentic, but accepted already, or older than the newest heard.
    REPLAYED = "replayed"


_SKIP_FOR_DROP: Final = {
    Drop.UNSIGNED: BeaconSkip.UNSIGNED,
    Drop.TRUNCATED: BeaconSkip.FORGED,
    Drop.MALFORMED: BeaconSkip.FORGED,
    Drop.FORGED: BeaconSkip.FORGED,
    Drop.STALE: BeaconSkip.STALE,
    Drop.REPLAYED: BeaconSkip.REPLAYED,
}
# The signed form's header (docs/multicast.md), read without the key: sender and length.
_SIGNED_HEADER: Final = re.compile(
    re.escape(MARKER) + rb"([0-9a-f]{16}) [0-9a-f]{16} [0-9a-f]{16} [0-9a-f]{16} ([0-9a-f]{4}) "
)


def _unverified(data: bytes) -> SignedDatagram | None:
    """The signed datagram in ``data``, its tag unchecked (a receiver without the key)."""
    match = _SIGNED_HEADER.match(data)
    if match is None or len(data) != HEADER_BYTES + int(match[2], 16) + TRAILER_BYTES:
        return None
    return SignedDatagram(match[1], 0, 1, 0, data[HEADER_BYTES:-TRAILER_BYTES])


class BeaconDecoder:
    """Turns received datagrams into beacons, and counts what it skips.

    Without a key it accepts the JSON body, and signed beacons too (unverified: it cannot
    check them, and an unsigned beacon is no more trustworthy). With a key it accepts only
    beacons signed with it, fresh (within 5 minutes of ``now``) and not seen before (the
    replay window of :class:`~chatcast._core.datagram.ReplayGuard`, for at most
    ``max_servers`` server ids).

    Attributes:
        received: Datagrams decoded, whatever became of them.
        skipped: Datagrams skipped, per reason.
    """

    def __init__(self, *, key: bytes | None = None, max_servers: int = DEFAULT_MAX_SERVERS):
        self._verifier = None if key is None else Verifier(key)
        self._guard = ReplayGuard(max_senders=max_servers)
        self.received = 0
        self.skipped: collections.Counter[BeaconSkip] = collections.Counter()

    def decode(self, data: bytes, now: float) -> Beacon | BeaconSkip:
        """The beacon in ``data`` received at ``now`` (seconds since the Unix epoch), or why
        it was skipped. Never raises."""
        self.received += 1
        result = self._decode(data, now)
        if isinstance(result, BeaconSkip):
            self.skipped[result] += 1
        return result

    def _decode(self, data: bytes, now: float) -> Beacon | BeaconSkip:
        if len(data) > MAX_BEACON_BYTES:
            return BeaconSkip.OVERSIZED
        if self._verifier is None:
            if data.startswith(MARKER):
                signed = _unverified(data)
                if signed is None:
                    return BeaconSkip.INVALID
                return self._body(signed)
            return decode_body(data) or BeaconSkip.INVALID
        verified = self._verifier.verify(data)
        if isinstance(verified, Drop):
            return _SKIP_FOR_DROP[verified]
        # The body is checked before the replay window: a key holder's invalid beacon
        # spends no sequence number and makes no replay state.
        beacon = self._body(verified)
        if isinstance(beacon, BeaconSkip):
            return beacon
        accepted = self._guard.accept(verified, int(now * 1000))
        if isinstance(accepted, Drop):
            return _SKIP_FOR_DROP[accepted]
        return beacon

    @staticmethod
    def _body(signed: SignedDatagram) -> Beacon | BeaconSkip:
        beacon = decode_body(signed.body)
        if beacon is None or beacon.server_id.encode() != signed.sender:
            return BeaconSkip.INVALID
        return beacon


@dataclasses.dataclass(frozen=True, slots=True)
class DiscoveredServer:
    """A server heard on the network, as of its latest beacon.

    Attributes:
        server_id: Its id, 16 hex digits (a new one each time it starts).
        name: The name it gives (from the network: sanitise before printing).
        host: The address to connect to: the one it gives, or else its beacon's source.
        tcp: Its plain TCP port, or ``None``.
        tls: Its TLS port, or ``None``.
        web: Its web port, or ``None``.
        token: Whether it needs a token.
        clients: Clients connected, as of its latest beacon.
        source: The address its beacons come from.
        first_seen: When it was first heard (the caller's clock, seconds).
        last_seen: When it was last heard.
        expires: When it is forgotten unless heard again.
        gone: It said goodbye, or stayed silent past ``expires``.
    """

    server_id: str
    name: str
    host: str
    tcp: int | None
    tls: int | None
    web: int | None
    token: bool
    clients: int
    source: str
    first_seen: float
    last_seen: float
    expires: float
    gone: bool = False

    @property
    def port(self) -> int:
        """The port a :class:`~chatcast.client.BroadcastClient` connects to: TCP if the
        server has it, else TLS, else web."""
        port = self.tcp if self.tcp is not None else self.tls if self.tls is not None else self.web
        assert port is not None  # a beacon has at least one port
        return port

    def _same(self, other: DiscoveredServer) -> bool:
        """Equal in what a person looking at the list would see change."""
        return (
            self.name,
            self.host,
            self.tcp,
            self.tls,
            self.web,
            self.token,
            self.clients,
            self.gone,
        ) == (
            other.name,
            other.host,
            other.tcp,
            other.tls,
            other.web,
            other.token,
            other.clients,
            other.gone,
        )


class ServerTable:
    """The servers heard, each until it says goodbye or stays silent too long.

    A server is forgotten three of its announced intervals (taken within 0.1 to 60 s) after
    its latest beacon. At most ``max_servers`` are kept: hearing one more forgets the one
    heard least recently, so a flood of fake ids costs bounded memory and never the servers
    that keep announcing (the flood's own entries are the least recently heard soonest).

    Args:
        max_servers: Servers kept at once, at least 1.

    Attributes:
        evicted: Servers forgotten to make room.
    """

    def __init__(self, *, max_servers: int = DEFAULT_MAX_SERVERS) -> None:
        if isinstance(max_servers, bool) or not isinstance(max_servers, int) or max_servers < 1:
            raise ValueError(f"max_servers must be an int >= 1, got {max_servers!r}")
        self.max_servers = max_servers
        self.evicted = 0
        self._servers: collections.OrderedDict[str, DiscoveredServer] = collections.OrderedDict()

    def update(self, beacon: Beacon, source: str, now: float) -> DiscoveredServer | None:
        """Record ``beacon``, heard from address ``source`` at ``now``.

        Returns:
            The server as it now stands if a person would see a change (new, changed, or
            gone with a goodbye), else ``None``.
        """
        servers = self._servers
        old = servers.pop(beacon.server_id, None)
        if beacon.bye:
            if old is None:
                return None
            return dataclasses.replace(old, last_seen=now, expires=now, gone=True)
        interval = min(max(float(beacon.interval), _MIN_INTERVAL), _MAX_INTERVAL)
        server = DiscoveredServer(
            server_id=beacon.server_id,
            name=beacon.name,
            host=beacon.host or source,
            tcp=beacon.tcp,
            tls=beacon.tls,
            web=beacon.web,
            token=beacon.token,
            clients=beacon.clients,
            source=source,
            first_seen=old.first_seen if old is not None else now,
            last_seen=now,
            expires=now + _MISSED * interval,
        )
        servers[beacon.server_id] = server
        if len(servers) > self.max_servers:
            servers.popitem(last=False)
            self.evicted += 1
        return None if old is not None and old._same(server) else server

    def expire(self, now: float) -> list[DiscoveredServer]:
        """Forget the servers silent past their expiry; return them, marked ``gone``."""
        gone = [server for server in self._servers.values() if server.expires <= now]
        for server in gone:
            del self._servers[server.server_id]
        return [dataclasses.replace(server, gone=True) for server in gone]

    def next_expiry(self) -> float | None:
        """When the next server expires, or ``None`` with none."""
        return min((server.expires for server in self._servers.values()), default=None)

    def servers(self) -> list[DiscoveredServer]:
        """The servers known now, by name then id (the order of a list a person reads)."""
        return sorted(self._servers.values(), key=lambda server: (server.name, server.server_id))

    def __len__(self) -> int:
        return len(self._servers)
