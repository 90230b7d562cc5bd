"""Synchronous builders for multicast UDP sockets.

Everything the OS needs to be told before a multicast socket works, in one place, with no
asyncio: :class:`~chatcast.multicast.MulticastChannel` builds its sockets here and hands them
to ``loop.create_datagram_endpoint(sock=...)``, and the tests inspect them directly.

* :func:`parse_group`, :func:`check_port`, :func:`check_ttl` validate arguments and raise
  :class:`ValueError` (or :class:`TypeError`) naming the bad value and the allowed range.
  They need no OS, so they live in :mod:`chatcast._core.mcast_config`; this module passes
  them on, so its callers keep one import for everything socket-related.
* :func:`resolve_interface` turns ``"127.0.0.1"``, ``"eth0"`` or ``"fe80::1%eth0"`` into an
  :class:`Interface`, or raises :class:`ValueError` when this host has no such interface.
* :func:`open_receive_socket` returns a non-blocking socket bound to the group's port and
  joined to the group; :func:`open_send_socket` returns a non-blocking socket connected to
  the group with TTL, loopback and outgoing interface set.

The platform rules followed (comments name each where it is applied):

* Several sockets may receive on one group:port: ``SO_REUSEADDR`` everywhere, plus
  ``SO_REUSEPORT`` where it exists (BSD and macOS need it for a second bind).
* Linux, BSD, macOS bind to the *group* address, so a socket sees only its group's datagrams;
  Windows cannot bind a multicast address and binds the interface address (or the wildcard).
* Linux: ``IP_MULTICAST_ALL=0`` / ``IPV6_MULTICAST_ALL=0``, or a socket also receives every
  group any other socket on the host joined on its port.
* IPv4 TTL and loop are one unsigned byte (BSD and macOS reject an int; Linux takes either;
  Windows wants a DWORD). IPv6 hop limit and loop are ints everywhere (RFC 3493).
* IPv6 joins and picks the outgoing interface by *index*; IPv4 by address, or on Linux by
  index through ``struct ip_mreqn``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Final

from ._core.mcast_config import (
    DEFAULT_RECEIVE_BUFFER_BYTES,
    Group,
    check_port,
    check_ttl,
    needs_interface,
    parse_group,
)

__all__ = [
    "DEFAULT_RECEIVE_BUFFER_BYTES",
    "Interface",
    "check_port",
    "check_ttl",
    "needs_interface",
    "open_receive_socket",
    "open_send_socket",
    "parse_group",
    "resolve_interface",
    "set_receive_buffer",
]

#: What bind() and connect() take: (host, port) or (host, port, flowinfo, scope_id).
SockAddr = tuple[str, int] | tuple[str, int, int, int]

_LINUX: Final = sys.platform.startswith("linux")
_WINDOWS: Final = sys.platform == "win32"
_BSD: Final = sys.platform == "darwin" or "bsd" in sys.platform

# Linux <linux/in.h> and <linux/in6.h>; the socket module does not export them on 3.11.
_IP_MULTICAST_ALL: Final = getattr(socket, "IP_MULTICAST_ALL", 49)
_IPV6_MULTICAST_ALL: Final = getattr(socket, "IPV6_MULTICAST_ALL", 29)
# BSD and macOS <sys/sockio.h>: _IOWR('i', 33, struct ifreq).
_BSD_SIOCGIFADDR: Final = 0xC0206921

_INADDR_ANY: Final = bytes(4)
_SMALLEST_RECEIVE_BUFFER: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Interface:
    """The network interface a multicast socket joins and sends on.

    Attributes:
        address: IPv4: the interface's address, the way every OS accepts it; ``None`` when the
            interface is chosen by ``index`` or by the OS. IPv6: the address given, if any
            (informative only: IPv6 always goes by index).
        index: The interface index (``if_nametoindex``); ``0`` lets the OS choose, which it
            does from the routing table (usually the default route's interface).
        spec: What the caller passed (``"127.0.0.1"``, ``"eth0"``), or ``None`` for the OS
            default; for messages.
    """

    address: str | None = None
    index: int = 0
    spec: str | None = None

    def __str__(self) -> str:
        return self.spec if self.spec is not None else "the default interface"


def resolve_interface(interface: str | None, family: socket.AddressFamily) -> Interface:
    """Resolve an interface given by address or by name, for groups of ``family``.

    Args:
        interface: An address of this host (``"127.0.0.1"``, ``"192.168.1.10"``, ``"::1"``,
            ``"fe80::1%eth0"``), an interface name (``"lo"``, ``"eth0"``), or ``None`` (or
            ``"0.0.0.0"`` / ``"::"``) for the OS default.
        family: ``AF_INET`` or ``AF_INET6``, the family of the group.

    Returns:
        The interface, ready for :func:`open_receive_socket` and :func:`open_send_socket`.

    Raises:
        TypeError: ``interface`` is not a ``str`` or ``None``.
        ValueError: No interface of this host has that address or name; an address of the
            other family; a multicast address; or a combination this OS cannot resolve with
            the standard library (the message says what to give instead).
    """
    if interface is None:
        return Interface()
    if not isinstance(interface, str):
        raise TypeError(f"interface must be a str or None, got {type(interface).__name__}")
    if not interface:
        raise ValueError("interface must be an address or a name, got ''")
    try:
        literal = ipaddress.ip_address(interface)
    except ValueError:
        literal = None
    if literal is not None:
        return _resolve_address(interface, literal, family)
    return _resolve_name(interface, family)


def _resolve_address(
    spec: str, literal: ipaddress.IPv4Address | ipaddress.IPv6Address, family: socket.AddressFamily
) -> Interface:
    if family == socket.AF_INET and literal.version != 4:
        raise ValueError(f"an IPv4 group needs an IPv4 interface address or a name, got {spec!r}")
    if family == socket.AF_INET6 and literal.version != 6:
        raise ValueError(f"an IPv6 group needs an IPv6 interface address or a name, got {spec!r}")
    if literal.is_unspecified:
        return Interface(spec=spec)
    if literal.is_multicast:
        raise ValueError(f"interface must be an address of this host, not a group: {spec!r}")
    if family == socket.AF_INET:
        _check_local(family, (str(literal), 0), spec)
        return Interface(address=str(literal), spec=spec)
    try:
        sockaddr = socket.getaddrinfo(
            spec, 0, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
        )[0][4]
    except OSError:  # socket.gaierror: an unknown %zone
        raise ValueError(f"unknown interface {spec!r}: no such zone on this host") from None
    _check_local(family, sockaddr, spec)
    index = int(sockaddr[3]) if len(sockaddr) == 4 else 0  # a link-local %zone, else 0
    if not index:
        index = _ipv6_index_of(str(literal).split("%")[0])
    if not index:
        raise ValueError(
            f"cannot tell which interface has {spec!r} on this OS; give the interface name"
        )
    return Interface(address=str(literal).split("%")[0], index=index, spec=spec)


def _resolve_name(spec: str, family: socket.AddressFamily) -> Interface:
    try:
        index = socket.if_nametoindex(spec)
    except (OSError, AttributeError):
        raise ValueError(
            f"unknown interface {spec!r}: not an address of this host nor an interface name "
            f"(interfaces: {', '.join(_interface_names()) or 'none found'})"
        ) from None
    if family == socket.AF_INET6 or _LINUX:
        # Linux joins and sends by index (struct ip_mreqn); IPv6 does everywhere.
        return Interface(index=index, spec=spec)
    address = _ipv4_address_of(spec)
    if address is None:
        raise ValueError(
            f"cannot find the IPv4 address of interface {spec!r} on this OS; "
            "give the interface's address instead of its name"
        )
    return Interface(address=address, index=index, spec=spec)


def _check_local(family: socket.AddressFamily, sockaddr: tuple[object, ...], spec: str) -> None:
    """Raise ValueError unless some interface of this host has the address in ``sockaddr``."""
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.bind(sockaddr)
    except OSError as exc:
        raise ValueError(
            f"unknown interface {spec!r}: no interface of this host has that address "
            f"({exc.strerror or exc})"
        ) from None
    finally:
        probe.close()


def _interface_names() -> list[str]:
    try:
        return [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return []


def _ipv6_index_of(address: str) -> int:
    """The index of the interface that has IPv6 ``address``, or 0 if this OS cannot say."""
    packed = socket.inet_pton(socket.AF_INET6, address)
    # Linux: if_inet6 lists "address index prefixlen scope flags name" in hex. thread-self
    # (Linux 3.17+) follows this thread's network namespace, /proc/net the main thread's.
    for path in ("/proc/thread-self/net/if_inet6", "/proc/net/if_inet6"):
        with contextlib.suppress(OSError), open(path, encoding="ascii") as table:
            for line in table:
                fields = line.split()
                if len(fields) >= 2 and bytes.fromhex(fields[0]) == packed:
                    return int(fields[1], 16)
            return 0
    return 0


def _ipv4_address_of(name: str) -> str | None:
    """The primary IPv4 address of interface ``name``, or None where the OS cannot say."""
    if not _BSD:
        # Linux never gets here (it joins by index); Windows has no SIOCGIFADDR.
        return None
    return _bsd_ipv4_address_of(name)  # pragma: no cover - BSD and macOS only


def _bsd_ipv4_address_of(name: str) -> str | None:  # pragma: no cover - BSD and macOS only
    import fcntl

    # BSD/macOS: SIOCGIFADDR fills struct ifreq {char name[16]; struct sockaddr_in addr;},
    # whose sin_addr sits at bytes 20..24 (sin_len, sin_family and sin_port come first).
    request = struct.pack("16s16s", name.encode()[:15], bytes(16))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        reply = fcntl.ioctl(probe.fileno(), _BSD_SIOCGIFADDR, request)
    except OSError:
        return None
    finally:
        probe.close()
    return socket.inet_ntoa(reply[20:24])


def _family(group: Group) -> socket.AddressFamily:
    return socket.AF_INET if group.version == 4 else socket.AF_INET6


def _group_sockaddr(group: Group, port: int, interface: Interface) -> SockAddr:
    if isinstance(group, ipaddress.IPv4Address):
        return (str(group), port)
    # A link-local group means nothing without its link: the scope id names the interface.
    return (str(group), port, 0, interface.index if needs_interface(group) else 0)


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a kernel receive buffer of ``size`` bytes; return what the OS reports.

    A multicast burst arrives faster than Python reads it; datagrams that do not fit in the
    kernel's receive buffer are dropped silently by the kernel. The default socket buffer
    (Linux ``net.core.rmem_default``, 208 KiB) holds only a few hundred small datagrams,
    because each queued datagram is charged its whole kernel buffer (``skb->truesize``,
    about 1 KiB for a chat line), not its payload.

    The OS may grant less: Linux caps the request at ``net.core.rmem_max`` and reports twice
    the granted value (the doubling is its bookkeeping overhead); macOS refuses sizes over
    ``kern.ipc.maxsockbuf`` with ``ENOBUFS``, so the request is halved until it is accepted.
    Raise the cap (``sysctl -w net.core.rmem_max=8388608``) to get more.

    Returns:
        The receive buffer size as ``getsockopt(SO_RCVBUF)`` reports it.
    """
    while True:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            break
        except OSError:
            if size <= _SMALLEST_RECEIVE_BUFFER:
                break  # keep the OS default
            size //= 2
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def open_receive_socket(
    group: Group,
    port: int,
    interface: Interface,
    *,
    loopback: bool = True,
    receive_buffer_bytes: int | None = DEFAULT_RECEIVE_BUFFER_BYTES,
) -> socket.socket:
    """Return a non-blocking UDP socket that receives ``group``:``port`` on ``interface``.

    Other sockets (other channels, other programs such as the lab's receivers, which set
    only ``SO_REUSEADDR``) can bind the same port and all receive every datagram.

    Args:
        group: The group, from :func:`parse_group`.
        port: The UDP port.
        interface: Where to join, from :func:`resolve_interface`.
        loopback: Windows only: whether this socket receives datagrams sent from this host
            (Windows applies ``IP_MULTICAST_LOOP`` on the receiving socket).
        receive_buffer_bytes: Kernel receive buffer to ask for, or ``None`` for the OS default.

    Raises:
        OSError: The OS refused to bind or join (for instance no route to the group on the
            default interface: give an interface). The socket is closed.
    """
    family = _family(group)
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reuse_port = getattr(socket, "SO_REUSEPORT", None)
        if reuse_port is not None and not _WINDOWS:
            # BSD/macOS: a second bind of a multicast port needs SO_REUSEPORT. Linux: harmless
            # with SO_REUSEADDR (multicast goes to every socket of a reuseport group). Some
            # kernels (WSL 1, old Linux) define the constant but refuse the option.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
        if _LINUX:
            # Linux: without IP_MULTICAST_ALL=0 a socket receives every group that any socket
            # on the host joined on its port, not only the groups it joined itself (since
            # 2.6.31 for IPv4, 4.20 for IPv6; older kernels lack the option: binding to the
            # group below still keeps other groups out).
            level, option = (
                (socket.IPPROTO_IP, _IP_MULTICAST_ALL)
                if family == socket.AF_INET
                else (socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL)
            )
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, 0)
        if receive_buffer_bytes is not None:
            set_receive_buffer(sock, receive_buffer_bytes)
        sock.bind(_bind_sockaddr(group, port, interface))
        _join(sock, group, interface)
        if _WINDOWS:  # pragma: no cover - Windows applies IP_MULTICAST_LOOP on receive
            _set_loop(sock, family, loopback)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_sockaddr(group: Group, port: int, interface: Interface) -> SockAddr:
    if _WINDOWS:  # pragma: no cover - not testable here
        # Windows: bind() of a multicast address fails with WSAEADDRNOTAVAIL; bind the
        # interface address (IPv4) or the wildcard, and rely on the join to pick the group.
        if isinstance(group, ipaddress.IPv4Address):
            return (interface.address or "0.0.0.0", port)
        return ("::", port, 0, 0)
    # Linux, BSD, macOS: binding the group address filters out unicast to this port and
    # datagrams of other groups on the same port (the lab's receivers bind "" and get both).
    return _group_sockaddr(group, port, interface)


def _join(sock: socket.socket, group: Group, interface: Interface) -> None:
    try:
        if isinstance(group, ipaddress.IPv4Address):
            if interface.address is None and interface.index and _LINUX:
                # Linux: struct ip_mreqn {imr_multiaddr; imr_address; int imr_ifindex;}
                # joins by index, for interfaces given by name.
                request = struct.pack("=4s4si", group.packed, _INADDR_ANY, interface.index)
            else:
                # struct ip_mreq {imr_multiaddr; imr_interface;}: every OS. INADDR_ANY lets
                # the kernel pick the interface from the route to the group.
                address = interface.address or "0.0.0.0"
                request = group.packed + socket.inet_aton(address)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, request)
        else:
            # struct ipv6_mreq {struct in6_addr; unsigned int ipv6mr_interface;} (RFC 3493);
            # index 0 lets the kernel choose.
            request = group.packed + struct.pack("=I", interface.index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, request)
    except OSError as exc:
        hint = ""
        if interface.address is None and not interface.index:
            # No multicast route (ENODEV): the usual case on a host without a default route.
            hint = " (name one with interface=..., e.g. 127.0.0.1 for this machine only)"
        raise OSError(
            exc.errno, f"cannot join {group} on {interface}: {exc.strerror or exc}{hint}"
        ) from exc


def _set_loop(sock: socket.socket, family: socket.AddressFamily, loopback: bool) -> None:
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, _ipv4_byte(int(loopback)))
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(loopback))


def _ipv4_byte(value: int) -> int | bytes:
    # BSD/macOS take IP_MULTICAST_TTL and IP_MULTICAST_LOOP as one u_char and reject an int
    # with EINVAL; Linux accepts either size; Windows wants a DWORD.
    return value if _WINDOWS else bytes([value])


def open_send_socket(
    group: Group,
    port: int,
    interface: Interface,
    *,
    ttl: int = 2,
    loopback: bool = True,
) -> socket.socket:
    """Return a non-blocking UDP socket connected to ``group``:``port``, ready to send.

    Connecting fixes the source address and port (``getsockname()``), so receivers on this
    host can recognise this socket's datagrams by their source, and keeps unicast from
    strangers out of its receive queue (a connected UDP socket accepts datagrams only from
    its peer, and no datagram comes *from* a group address).

    Args:
        group: The group, from :func:`parse_group`.
        port: The destination port.
        interface: The outgoing interface, from :func:`resolve_interface`; the default one
            follows the route to the group.
        ttl: IPv4 TTL / IPv6 hop limit: 0 keeps datagrams on this host, 1 on the link.
        loopback: Whether datagrams are also delivered to receivers on this host. Linux
            delivers them anyway when the outgoing interface is the loopback interface.

    Raises:
        OSError: The OS refused an option or has no route to the group (``ENETUNREACH``);
            the socket is closed.
    """
    family = _family(group)
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, _ipv4_byte(ttl))
            if interface.address is None and interface.index and _LINUX:
                # Linux accepts struct ip_mreqn here too, to send by interface index.
                request = struct.pack("=4s4si", _INADDR_ANY, _INADDR_ANY, interface.index)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, request)
            elif interface.address is not None:
                sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface.address)
                )
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
            if interface.index:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, interface.index)
        _set_loop(sock, family, loopback)
        try:
            sock.connect(_group_sockaddr(group, port, interface))
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot send to {group} on {interface}: {exc.strerror or exc}"
            ) from exc
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
