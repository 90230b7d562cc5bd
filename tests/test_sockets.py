"""Tests for chatcast._sockets: validation, interface resolution and the sockets it builds.

Every socket here joins and sends on the loopback interface (127.0.0.1 / lo) only.
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import struct
import sys
from collections.abc import Iterator

import pytest

from chatcast._sockets import (
    Interface,
    check_port,
    check_ttl,
    open_receive_socket,
    open_send_socket,
    parse_group,
    resolve_interface,
    set_receive_buffer,
)
from tests.helpers import timeout

LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="checks Linux-specific socket state")
LOOPBACK = Interface(address="127.0.0.1", spec="127.0.0.1")
IP_MULTICAST_ALL = 49  # <linux/in.h>


def free_port() -> int:
    """A UDP port nobody on this host has bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


def unique_group() -> ipaddress.IPv4Address:
    """A random group in 239.255.0.0/16 (IPv4 local scope, RFC 2365)."""
    group = parse_group(f"239.255.{random.randrange(256)}.{random.randrange(1, 255)}")
    assert isinstance(group, ipaddress.IPv4Address)
    return group


def recv(sock: socket.socket, seconds: float = 5.0) -> tuple[bytes, tuple[str, int]]:
    """The next datagram on a non-blocking socket, waiting at most ``seconds`` (scaled)."""
    readable, _, _ = select.select([sock], [], [], timeout(seconds))
    assert readable, "no datagram arrived in time"
    data, addr = sock.recvfrom(65536)
    return data, addr


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """A list to put sockets in; every one is closed at teardown."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def igmp_groups(device: str) -> set[str]:
    """The IPv4 groups joined on ``device``, from Linux's /proc/net/igmp."""
    groups: set[str] = set()
    current = None
    with open("/proc/net/igmp", encoding="ascii") as table:
        for line in table:
            if not line.startswith(("\t", " ")):
                fields = line.split()
                current = fields[1] if len(fields) > 1 else None
            elif current == device:
                packed = bytes.fromhex(line.split()[0])[::-1]  # host order (little endian)
                groups.add(socket.inet_ntoa(packed))
    return groups


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["224.1.1.1", "239.255.1.2", "ff05::1", "ff02::1:2"])
def test_parse_group_accepts_multicast(group: str) -> None:
    """IPv4 224.0.0.0/4 and IPv6 ff00::/8 groups are accepted and normalised."""
    assert str(parse_group(group)) == str(ipaddress.ip_address(group))


@pytest.mark.parametrize(
    ("group", "match"),
    [
        ("10.0.0.1", "not a multicast group"),
        ("127.0.0.1", "not a multicast group"),
        ("fe80::1", "not a multicast group"),
        ("localhost", "IPv4 or IPv6 multicast address"),
        ("224.1.1", "IPv4 or IPv6 multicast address"),
        ("ff05::1%lo", "interface="),
        ("ff00::1", "reserved multicast scope"),
        ("ff0f::1", "reserved multicast scope"),
    ],
)
def test_parse_group_rejects(group: str, match: str) -> None:
    """A non-multicast, malformed, zoned or reserved-scope group is a clear ValueError."""
    with pytest.raises(ValueError, match=match):
        parse_group(group)


def test_parse_group_type() -> None:
    """A group that is not a str is a TypeError."""
    with pytest.raises(TypeError, match="group must be a str"):
        parse_group(224)  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_check_port_range(port: int) -> None:
    """Ports outside 1..65535 are refused with the range in the message."""
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        check_port(port)


@pytest.mark.parametrize("ttl", [-1, 256])
def test_check_ttl_range(ttl: int) -> None:
    """TTLs outside 0..255 are refused with the range in the message."""
    with pytest.raises(ValueError, match=r"0\.\.255"):
        check_ttl(ttl)


def test_check_types() -> None:
    """bool and str are not accepted as port or TTL; valid values come back unchanged."""
    with pytest.raises(TypeError):
        check_port(True)
    with pytest.raises(TypeError):
        check_ttl("2")  # type: ignore[arg-type]
    assert check_port(5004) == 5004
    assert check_ttl(0) == 0
    assert check_ttl(255) == 255


# -- interfaces ----------------------------------------------------------------------------


def test_resolve_default() -> None:
    """None and the wildcard address mean the OS default (no address, index 0)."""
    assert resolve_interface(None, socket.AF_INET) == Interface()
    assert resolve_interface("0.0.0.0", socket.AF_INET) == Interface(spec="0.0.0.0")
    assert resolve_interface("::", socket.AF_INET6) == Interface(spec="::")


def test_resolve_ipv4_address() -> None:
    """An IPv4 address of this host resolves to itself."""
    resolved = resolve_interface("127.0.0.1", socket.AF_INET)
    assert resolved.address == "127.0.0.1"
    assert str(resolved) == "127.0.0.1"


@linux_only
def test_resolve_names() -> None:
    """An interface name resolves to its index (Linux joins IPv4 by index too)."""
    index = socket.if_nametoindex("lo")
    assert resolve_interface("lo", socket.AF_INET) == Interface(index=index, spec="lo")
    assert resolve_interface("lo", socket.AF_INET6) == Interface(index=index, spec="lo")


@linux_only
def test_resolve_ipv6_address_finds_index() -> None:
    """An IPv6 address of this host resolves to the index of the interface that has it."""
    resolved = resolve_interface("::1", socket.AF_INET6)
    assert resolved.index == socket.if_nametoindex("lo")
    assert resolved.address == "::1"


@pytest.mark.parametrize(
    ("interface", "family", "match"),
    [
        ("192.0.2.254", socket.AF_INET, "no interface of this host has that address"),
        ("nosuchif0", socket.AF_INET, "unknown interface 'nosuchif0'.*interfaces: "),
        ("nosuchif0", socket.AF_INET6, "unknown interface"),
        ("::1", socket.AF_INET, "IPv4 group needs an IPv4"),
        ("127.0.0.1", socket.AF_INET6, "IPv6 group needs an IPv6"),
        ("224.1.1.1", socket.AF_INET, "not a group"),
        ("fe80::1%nosuchif0", socket.AF_INET6, "unknown interface"),
        ("2001:db8::1", socket.AF_INET6, "no interface of this host has that address"),
        ("", socket.AF_INET, "address or a name"),
    ],
)
def test_resolve_unknown(interface: str, family: socket.AddressFamily, match: str) -> None:
    """Unknown or unusable interfaces are a ValueError that says why."""
    with pytest.raises(ValueError, match=match):
        resolve_interface(interface, family)


def test_resolve_type() -> None:
    """An interface that is not a str is a TypeError."""
    with pytest.raises(TypeError):
        resolve_interface(1, socket.AF_INET)  # type: ignore[arg-type]


# -- receive sockets -----------------------------------------------------------------------


@linux_only
def test_receive_socket_options(sockets: list[socket.socket]) -> None:
    """The receive socket is reusable, bound to the group, joined on lo, not IP_MULTICAST_ALL."""
    group, port = unique_group(), free_port()
    sock = open_receive_socket(group, port, LOOPBACK)
    sockets.append(sock)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    assert sock.getsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL) == 0
    assert sock.getsockname() == (str(group), port)
    assert sock.getblocking() is False
    assert str(group) in igmp_groups("lo")
    assert str(group) not in igmp_groups("eth0")


@linux_only
def test_receive_socket_joins_by_name(sockets: list[socket.socket]) -> None:
    """An interface given by name joins on that interface (struct ip_mreqn)."""
    group = unique_group()
    sockets.append(open_receive_socket(group, free_port(), resolve_interface("lo", socket.AF_INET)))
    assert str(group) in igmp_groups("lo")


@linux_only
def test_receive_buffer_sizing(sockets: list[socket.socket]) -> None:
    """The requested receive buffer is granted up to rmem_max, and Linux reports it doubled."""
    with open("/proc/sys/net/core/rmem_max", encoding="ascii") as file:
        rmem_max = int(file.read())
    request = 256 * 1024
    sock = open_receive_socket(unique_group(), free_port(), LOOPBACK, receive_buffer_bytes=request)
    sockets.append(sock)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * min(request, rmem_max)
    assert set_receive_buffer(sock, 128 * 1024) == 2 * min(128 * 1024, rmem_max)


def test_receive_buffer_default_kept(sockets: list[socket.socket]) -> None:
    """receive_buffer_bytes=None leaves the OS default buffer alone."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sock = open_receive_socket(unique_group(), free_port(), LOOPBACK, receive_buffer_bytes=None)
    sockets.append(sock)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == default


def test_receive_socket_failure_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A join the OS refuses raises OSError naming group and interface, and leaks no socket."""
    created: list[socket.socket] = []
    real_socket = socket.socket

    def tracking_socket(*args: object) -> socket.socket:
        sock = real_socket(*args)  # type: ignore[arg-type]
        created.append(sock)
        return sock

    monkeypatch.setattr(socket, "socket", tracking_socket)
    bogus = Interface(index=2**31 - 1, spec="bogus0")
    group = unique_group()
    with pytest.raises(OSError, match=f"cannot join {group} on bogus0"):
        open_receive_socket(group, free_port(), bogus)
    assert created
    assert all(sock.fileno() == -1 for sock in created)


# -- send sockets --------------------------------------------------------------------------


def test_send_socket_options(sockets: list[socket.socket]) -> None:
    """The send socket has the TTL, loop and interface asked for, connected to the group."""
    group, port = unique_group(), free_port()
    sock = open_send_socket(group, port, LOOPBACK, ttl=0, loopback=False)
    sockets.append(sock)
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 0
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
    chosen = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
    assert socket.inet_ntoa(chosen) == "127.0.0.1"
    assert sock.getpeername() == (str(group), port)
    assert sock.getsockname()[0] == "127.0.0.1"
    assert sock.getblocking() is False


def test_send_socket_ttl_and_loop_values(sockets: list[socket.socket]) -> None:
    """TTL 255 and loop on are stored as given (one unsigned byte each)."""
    sock = open_send_socket(unique_group(), free_port(), LOOPBACK, ttl=255, loopback=True)
    sockets.append(sock)
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 255
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1


@linux_only
def test_send_socket_failure_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    """An outgoing interface the OS refuses raises OSError and leaks no socket."""
    created: list[socket.socket] = []
    real_socket = socket.socket

    def tracking_socket(*args: object) -> socket.socket:
        sock = real_socket(*args)  # type: ignore[arg-type]
        created.append(sock)
        return sock

    monkeypatch.setattr(socket, "socket", tracking_socket)
    with pytest.raises(OSError):  # noqa: PT011 - the errno is the OS's choice
        open_send_socket(unique_group(), free_port(), Interface(index=2**31 - 1), ttl=0)
    assert created
    assert all(sock.fileno() == -1 for sock in created)


# -- together ------------------------------------------------------------------------------


def test_round_trip_on_loopback(sockets: list[socket.socket]) -> None:
    """A datagram from the send socket reaches the receive socket, from the send socket's name."""
    group, port = unique_group(), free_port()
    receiver = open_receive_socket(group, port, LOOPBACK)
    sender = open_send_socket(group, port, LOOPBACK, ttl=0)
    sockets += [receiver, sender]
    sender.send(b"halo")
    data, addr = recv(receiver)
    assert data == b"halo"
    assert addr == sender.getsockname()


def test_shared_port_with_lab_style_socket(sockets: list[socket.socket]) -> None:
    """Two receive sockets and a lab-style socket (SO_REUSEADDR only) on one port all receive."""
    group, port = unique_group(), free_port()
    ours = [open_receive_socket(group, port, LOOPBACK) for _ in range(2)]
    sockets += ours
    lab = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sockets.append(lab)
    lab.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lab.bind(("", port))
    mreq = struct.pack("4s4s", group.packed, socket.inet_aton("127.0.0.1"))
    lab.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    lab.setblocking(False)
    # A socket opened after the lab's still binds and receives.
    late = open_receive_socket(group, port, LOOPBACK)
    sockets.append(late)
    sender = open_send_socket(group, port, LOOPBACK, ttl=0)
    sockets.append(sender)
    sender.send(b"to everyone")
    for sock in [*ours, lab, late]:
        assert recv(sock)[0] == b"to everyone"


def test_only_own_group(sockets: list[socket.socket]) -> None:
    """A receive socket does not get another group's datagrams sent to the same port."""
    group, port = unique_group(), free_port()
    other = ipaddress.IPv4Address(int(group) ^ 1)
    receiver = open_receive_socket(group, port, LOOPBACK)
    neighbour = open_receive_socket(other, port, LOOPBACK)  # someone joined `other` here
    to_other = open_send_socket(other, port, LOOPBACK, ttl=0)
    to_group = open_send_socket(group, port, LOOPBACK, ttl=0)
    sockets += [receiver, neighbour, to_other, to_group]
    to_other.send(b"other group")
    assert recv(neighbour)[0] == b"other group"
    to_group.send(b"my group")
    # Had the other group's datagram been let in, it would be first in the queue.
    assert recv(receiver)[0] == b"my group"


def ipv6_loopback() -> Interface:
    """The loopback interface for IPv6 groups, or skip."""
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    try:
        return resolve_interface("lo", socket.AF_INET6)
    except ValueError:
        pytest.skip("no interface named lo")


def test_ipv6_receive_socket(sockets: list[socket.socket]) -> None:
    """An IPv6 receive socket binds the group and joins by interface index."""
    lo = ipv6_loopback()
    group, port = parse_group("ff05::c4a7:1"), free_port()
    receiver = open_receive_socket(group, port, lo)
    sockets.append(receiver)
    assert receiver.getsockname()[:2] == (str(group), port)


def test_ipv6_link_local_bind_has_scope(sockets: list[socket.socket]) -> None:
    """A link-local IPv6 group is bound with the interface as its scope id."""
    lo = ipv6_loopback()
    group, port = parse_group("ff02::c4a7:1"), free_port()
    receiver = open_receive_socket(group, port, lo)
    sockets.append(receiver)
    assert receiver.getsockname() == (str(group), port, 0, lo.index)


def test_ipv6_send_socket(sockets: list[socket.socket]) -> None:
    """An IPv6 send socket sets hop limit, loop and interface (by index)."""
    lo = ipv6_loopback()
    try:
        sender = open_send_socket(parse_group("ff05::c4a7:1"), free_port(), lo, ttl=1)
    except OSError as exc:
        pytest.skip(
            f"no IPv6 multicast route via lo on this host ({exc}); see test_multicast_netns"
        )
    sockets.append(sender)
    assert sender.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS) == 1
    assert sender.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP) == 1
    assert sender.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF) == lo.index
