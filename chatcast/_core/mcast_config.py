"""A multicast channel's options, checked once: :class:`MulticastConfig`. Sans-I/O.

Everything about a :class:`~chatcast.multicast.MulticastChannel`'s arguments that can be
decided without asking the OS lives here: the group is a multicast address of a usable scope,
the port and TTL are in range, the sizes are positive and fit in a UDP datagram, a key is
usable and not combined with the plain form. What needs the OS (does this host have that
interface?) is the shell's (:mod:`chatcast._sockets`).

Every check raises :class:`ValueError` (or :class:`TypeError` for a wrong type) naming the
bad value and the allowed range, as ``docs/multicast.md`` ("The knobs") promises.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Final, Literal

from .datagram import check_key
from .reliable_options import ReliableOptions

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_RECEIVE_BUFFER_BYTES",
    "DEFAULT_TTL",
    "MAX_UDP_PAYLOAD",
    "Group",
    "MulticastConfig",
    "check_port",
    "check_ttl",
    "needs_interface",
    "parse_group",
]

#: The lab's group.
DEFAULT_GROUP: Final = "224.1.1.1"
#: The lab's port.
DEFAULT_PORT: Final = 5004
#: The lab's TTL: two hops.
DEFAULT_TTL: Final = 2
#: Largest datagram sent or accepted by default: 8 KiB, which the lab's receivers
#: (``recv(10240)``) read whole.
DEFAULT_MAX_DATAGRAM_BYTES: Final = 8192
#: Messages a channel holds for its reader by default.
DEFAULT_QUEUE_SIZE: Final = 1024
#: Kernel receive buffer asked for by default: 4 MiB (see ``docs/multicast.md``).
DEFAULT_RECEIVE_BUFFER_BYTES: Final = 4 * 1024 * 1024
#: Largest UDP payload by IP version: 65535 - 8 (UDP header) - 20 (IPv4 header); IPv6 has no
#: header in its 16-bit length field, so 65535 - 8 (RFC 8200, without jumbograms).
MAX_UDP_PAYLOAD: Final = {4: 65507, 6: 65527}

#: An IPv4 or IPv6 multicast group.
Group = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_group(group: str) -> Group:
    """Return ``group`` as an address object, or raise if it is not a usable multicast group.

    Raises:
        TypeError: ``group`` is not a ``str``.
        ValueError: Not an IP address; not multicast (IPv4 ``224.0.0.0/4``, IPv6
            ``ff00::/8``); an IPv6 group with a ``%zone`` (give ``interface`` instead); an IPv6
            group of reserved scope 0 or 15 (RFC 4291 2.7).
    """
    if not isinstance(group, str):
        raise TypeError(f"group must be a str, got {type(group).__name__}")
    try:
        address = ipaddress.ip_address(group)
    except ValueError:
        raise ValueError(
            f"group must be an IPv4 or IPv6 multicast address, got {group!r}"
        ) from None
    if not address.is_multicast:
        raise ValueError(
            f"{group!r} is not a multicast group: use 224.0.0.0 to 239.255.255.255 (IPv4) "
            "or ff00::/8 (IPv6)"
        )
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise ValueError(f"give the interface of {group!r} with interface=..., not as a %zone")
        if _ipv6_scope(address) in (0x0, 0xF):
            raise ValueError(f"{group!r} has a reserved multicast scope (RFC 4291 2.7)")
    return address


def check_port(port: int) -> int:
    """Return ``port`` if it is a usable UDP port (1-65535).

    Raises:
        TypeError: Not an ``int``.
        ValueError: Out of range. Port 0 is refused: nobody could send to the port the OS
            would pick.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, got {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return port


def check_ttl(ttl: int) -> int:
    """Return ``ttl`` if it is a usable multicast TTL / hop limit (0-255).

    0 keeps datagrams on this host, 1 on the local network segment, each further hop needs a
    multicast router.

    Raises:
        TypeError: Not an ``int``.
        ValueError: Out of range.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"ttl must be an int, got {type(ttl).__name__}")
    if not 0 <= ttl <= 255:
        raise ValueError(f"ttl must be in 0..255, got {ttl}")
    return ttl


def needs_interface(group: Group) -> bool:
    """True for IPv6 groups of interface-local (1) or link-local (2) scope.

    Such a group means nothing without its link: sockets name it with the interface index as
    the scope id, so an interface must be given.
    """
    return isinstance(group, ipaddress.IPv6Address) and _ipv6_scope(group) <= 2


def _ipv6_scope(group: ipaddress.IPv6Address) -> int:
    # RFC 4291 2.7: the low 4 bits of the second byte.
    return group.packed[1] & 0x0F


@dataclasses.dataclass(frozen=True, slots=True)
class MulticastConfig:
    """The checked options of one multicast channel (all but the interface).

    Make one with :meth:`create`, which checks and normalises the arguments; the constructor
    itself trusts its arguments. The attributes are those of
    :class:`~chatcast.multicast.MulticastChannel`, normalised: ``group`` an address object,
    ``key`` bytes.
    """

    group: Group
    port: int
    ttl: int = DEFAULT_TTL
    loopback: bool = True
    name: str | None = None
    plain: bool = False
    echo: bool = False
    receive_buffer_bytes: int | None = DEFAULT_RECEIVE_BUFFER_BYTES
    max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES
    max_queue: int = DEFAULT_QUEUE_SIZE
    drop: Literal["oldest", "newest"] = "oldest"
    key: bytes | None = None
    reliable: bool = False
    ordered: bool = True
    repair_port: int = 0
    reliable_options: ReliableOptions = dataclasses.field(default_factory=ReliableOptions)

    @classmethod
    def create(
        cls,
        group: str,
        port: int,
        *,
        ttl: int = DEFAULT_TTL,
        loopback: bool = True,
        name: str | None = None,
        plain: bool = False,
        echo: bool = False,
        receive_buffer_bytes: int | None = DEFAULT_RECEIVE_BUFFER_BYTES,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        max_queue: int = DEFAULT_QUEUE_SIZE,
        drop: Literal["oldest", "newest"] = "oldest",
        key: bytes | str | None = None,
        reliable: bool = False,
        ordered: bool = True,
        repair_port: int | None = None,
        reliable_options: ReliableOptions | None = None,
    ) -> MulticastConfig:
        """Check the arguments of a channel and return them normalised.

        Args: as :class:`~chatcast.multicast.MulticastChannel` (but ``interface``).

        Raises:
            ValueError: A group that is not multicast, a port or TTL out of range, an empty
                name or key, a key with ``plain=True``, a size or a ``drop`` out of range; the
                first bad argument in the order above is named, with what is allowed.
            TypeError: An argument of the wrong type.
        """
        address = parse_group(group)
        check_port(port)
        check_ttl(ttl)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str or None, got {name!r}")
        _check_int("max_datagram_bytes", max_datagram_bytes, 1, MAX_UDP_PAYLOAD[address.version])
        _check_int("max_queue", max_queue, 1, None)
        if receive_buffer_bytes is not None:
            _check_int("receive_buffer_bytes", receive_buffer_bytes, 1, None)
        if drop not in ("oldest", "newest"):
            raise ValueError(f"drop must be 'oldest' or 'newest', got {drop!r}")
        signing_key = None if key is None else check_key(key)
        if signing_key is not None and plain:
            raise ValueError(
                "a key cannot be combined with plain=True: signed datagrams are always in the "
                "JSON form"
            )
        if reliable and plain:
            raise ValueError(
                "reliable=True cannot be combined with plain=True: plain datagrams carry no "
                "sequence number to repair by"
            )
        if repair_port is None:
            repair_port = port + 1 if port < 65535 else port - 1
        check_port(repair_port)
        if repair_port == port:
            raise ValueError(f"repair_port must differ from port {port}")
        if reliable_options is None:
            reliable_options = ReliableOptions()
        elif not isinstance(reliable_options, ReliableOptions):
            raise TypeError(
                f"reliable_options must be a ReliableOptions, got {type(reliable_options).__name__}"
            )
        return cls(
            group=address,
            port=port,
            ttl=ttl,
            loopback=bool(loopback),
            name=name,
            plain=bool(plain),
            echo=bool(echo),
            receive_buffer_bytes=receive_buffer_bytes,
            max_datagram_bytes=max_datagram_bytes,
            max_queue=max_queue,
            drop=drop,
            key=signing_key,
            reliable=bool(reliable),
            ordered=bool(ordered),
            repair_port=repair_port,
            reliable_options=reliable_options,
        )


def _check_int(what: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be {allowed}, got {value}")
