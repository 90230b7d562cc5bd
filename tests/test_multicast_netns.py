"""Multicast across network namespaces the tests make: the lab's own scripts, hosts, IPv6.

Needs Linux, root and iproute2 (``ip``); skipped with the reason otherwise. Each test makes
its own namespaces, named with this process's pid, and deletes them at teardown even when the
test fails. Inside a namespace only ``lo`` (and, for the two-host test, a veth pair) exists,
so the lab's scripts, which send and join on the OS's default interface, cannot reach the
machine's real network.

Channels are created *inside* a namespace by switching this thread into it (``setns``) just
for the construction and ``open()``: a socket stays in the namespace it was created in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcast.message import Message
from chatcast.multicast import MulticastChannel
from tests.helpers import timeout

pytestmark = pytest.mark.netns

LAB = Path(__file__).parent / "lab"
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    """Move this thread into the network namespace open at ``fd``."""
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name``, then switch back."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(original)
        finally:
            os.close(target)
    finally:
        os.close(original)


def ip(*args: str) -> None:
    """Run ``ip ARGS``; fail the test with ip's message if it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode:
        raise AssertionError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class NetLab:
    """Namespaces, channels inside them and processes, all cleaned up by the fixture."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.channels: list[MulticastChannel] = []
        self.processes: list[asyncio.subprocess.Process] = []

    def namespace(self) -> str:
        """A new namespace with only ``lo``, up."""
        name = f"chatcast-{os.getpid()}-{len(self.namespaces)}"
        result = subprocess.run(
            ["ip", "netns", "add", name], capture_output=True, text=True, check=False
        )
        if result.returncode:
            pytest.skip(f"cannot create a network namespace: {result.stderr.strip()}")
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def lab_namespace(self) -> str:
        """A namespace where the OS default interface for multicast is ``lo``, as the lab needs."""
        name = self.namespace()
        # Without a route for the groups, INADDR_ANY joins and default sends fail (ENODEV).
        ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "lo")
        return name

    async def channel(
        self, namespace: str, group: str, port: int, **options: Any
    ) -> MulticastChannel:
        """An open channel whose sockets live in ``namespace``."""
        with in_netns(namespace):
            channel = MulticastChannel(group, port, **options)
            self.channels.append(channel)
            async with asyncio.timeout(timeout()):
                await channel.open()
        return channel

    async def run_lab_script(self, namespace: str, script: str) -> asyncio.subprocess.Process:
        """Start one of the lab's scripts, verbatim, inside ``namespace``."""
        process = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            namespace,
            sys.executable,
            "-u",  # the scripts print(); unbuffered so each line arrives as printed
            str(LAB / script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    async def close(self) -> None:
        """Stop processes, close channels, then delete the namespaces."""
        for process in self.processes:
            if process.returncode is None:
                process.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout()):
                    await process.wait()
            if process.stdin is not None:
                process.stdin.close()
        for channel in self.channels:
            channel.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout()):
                    await channel.wait_closed()
        for name in self.namespaces:
            deleting = await asyncio.create_subprocess_exec(
                "ip", "netns", "delete", name, stderr=asyncio.subprocess.DEVNULL
            )
            await deleting.wait()


@pytest.fixture
async def netlab() -> AsyncIterator[NetLab]:
    """A NetLab, or skip when namespaces cannot be made here."""
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux only")
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (the ip command)")
    lab = NetLab()
    try:
        yield lab
    finally:
        await lab.close()


async def receive(channel: MulticastChannel, seconds: float = 5.0) -> Message:
    """The channel's next message, within ``seconds`` (scaled)."""
    async with asyncio.timeout(timeout(seconds)):
        return await channel.receive()


async def read_line(process: asyncio.subprocess.Process, seconds: float = 5.0) -> str:
    """The next line the process printed, without its line ending."""
    assert process.stdout is not None
    async with asyncio.timeout(timeout(seconds)):
        line = await process.stdout.readline()
    assert line, "the process ended"
    return line.decode().rstrip("\n")


async def wait_joined(prober: MulticastChannel, process: asyncio.subprocess.Process) -> None:
    """Wait until a lab receiver has joined: probe until it prints a probe back.

    The receiver prints nothing when it starts, so the only sign that it has joined is a
    datagram it prints. Each probe waits a little for the echo before the next is sent.
    """
    async with asyncio.timeout(timeout(10)):
        while True:
            await prober.send("probe")
            with contextlib.suppress(TimeoutError):
                if await read_line(process, seconds=0.2) == "probe":
                    return


async def next_non_probe(process: asyncio.subprocess.Process) -> str:
    """The next line the process printed that is not a leftover probe."""
    while (line := await read_line(process)) == "probe":
        pass
    return line


# -- the lab's own scripts -------------------------------------------------------------------


async def test_lab_scripts_talk_to_chatcast(netlab: NetLab) -> None:
    """The verbatim sender.py reaches a channel; a channel reaches receiver1.py and receiver2.py."""
    ns = netlab.lab_namespace()
    channel = await netlab.channel(ns, "224.1.1.1", 5004, interface="127.0.0.1", ttl=1)
    plain = await netlab.channel(ns, "224.1.1.1", 5004, interface="127.0.0.1", ttl=1, plain=True)
    receivers = [
        await netlab.run_lab_script(ns, "receiver1.py"),
        await netlab.run_lab_script(ns, "receiver2.py"),
    ]
    for receiver in receivers:
        await wait_joined(plain, receiver)

    # chatcast -> the lab's receivers: plain text prints as is, the JSON form as JSON.
    await plain.send("halo dari chatcast ✓")
    await channel.send("dalam JSON")
    for receiver in receivers:
        assert await next_non_probe(receiver) == "halo dari chatcast ✓"
        obj = json.loads(await next_non_probe(receiver))
        assert (obj["type"], obj["text"]) == ("message", "dalam JSON")

    # The lab's sender -> chatcast and the lab's receivers, in order.
    while channel.receive_nowait() is not None:
        pass  # probes
    sender = await netlab.run_lab_script(ns, "sender.py")
    assert sender.stdin is not None
    lines = ["halo", "pesan kedua", "ünïcödé ✓"]
    for line in lines:
        sender.stdin.write(f"{line}\n".encode())
    await sender.stdin.drain()
    got = [await receive(channel) for _ in lines]
    assert [message.text for message in got] == lines
    assert len({message.sender for message in got}) == 1  # one source address:port
    for receiver in receivers:
        assert [await next_non_probe(receiver) for _ in lines] == lines

    # At end of input the lab's sender dies of EOFError, as it always did.
    sender.stdin.close()
    async with asyncio.timeout(timeout()):
        assert await sender.wait() != 0


# -- two hosts -------------------------------------------------------------------------------


async def test_ttl_across_veth(netlab: NetLab) -> None:
    """Between two hosts on one link, TTL 1 crosses to the neighbour and TTL 0 does not."""
    left, right = netlab.namespace(), netlab.namespace()
    tag = str(os.getpid())[-6:]
    left_if, right_if = f"ccl{tag}", f"ccr{tag}"
    ip(
        "link",
        "add",
        left_if,
        "netns",
        left,
        "type",
        "veth",
        "peer",
        "name",
        right_if,
        "netns",
        right,
    )
    ip("-n", left, "addr", "add", "10.99.0.1/24", "dev", left_if)
    ip("-n", right, "addr", "add", "10.99.0.2/24", "dev", right_if)
    ip("-n", left, "link", "set", left_if, "up")
    ip("-n", right, "link", "set", right_if, "up")

    group, port = "239.255.99.1", 5004
    ttl0 = await netlab.channel(left, group, port, interface="10.99.0.1", ttl=0, name="ttl0")
    ttl1 = await netlab.channel(left, group, port, interface="10.99.0.1", ttl=1, name="ttl1")
    local = await netlab.channel(left, group, port, interface=left_if)
    remote = await netlab.channel(right, group, port, interface=right_if)
    neighbour = await netlab.channel(right, group, port, interface="10.99.0.2")

    await ttl0.send("stays home")
    assert (await receive(local)).text == "stays home"  # sent, and looped back locally
    await ttl1.send("crosses")
    assert (await receive(local)).text == "crosses"
    for channel in (remote, neighbour):
        message = await receive(channel)
        # Had the TTL 0 datagram crossed, it would have arrived first.
        assert (message.text, message.sender) == ("crosses", "ttl1")
    await ttl1.send("again")
    assert (await receive(remote)).text == "again"
    assert remote.statistics().received == 2

    # And an answer comes back the other way.
    await neighbour.send("balasan")
    assert [(await receive(ttl1)).text for _ in range(2)] == ["stays home", "balasan"]


async def test_loopback_off_across_veth(netlab: NetLab) -> None:
    """loopback=False keeps a channel's datagrams from this host's receivers, not the link's."""
    left, right = netlab.namespace(), netlab.namespace()
    tag = str(os.getpid())[-6:]
    left_if, right_if = f"cml{tag}", f"cmr{tag}"
    ip(
        "link",
        "add",
        left_if,
        "netns",
        left,
        "type",
        "veth",
        "peer",
        "name",
        right_if,
        "netns",
        right,
    )
    ip("-n", left, "addr", "add", "10.98.0.1/24", "dev", left_if)
    ip("-n", right, "addr", "add", "10.98.0.2/24", "dev", right_if)
    ip("-n", left, "link", "set", left_if, "up")
    ip("-n", right, "link", "set", right_if, "up")

    group, port = "239.255.98.1", 5004
    quiet = await netlab.channel(left, group, port, interface=left_if, ttl=1, loopback=False)
    loud = await netlab.channel(left, group, port, interface=left_if, ttl=1)
    local = await netlab.channel(left, group, port, interface=left_if)
    remote = await netlab.channel(right, group, port, interface=right_if)

    await quiet.send("not for this host")
    assert (await receive(remote)).text == "not for this host"
    await loud.send("for everyone")
    assert (await receive(remote)).text == "for everyone"
    assert (await receive(local)).text == "for everyone"  # the quiet one would be first


# -- IPv6 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["ff05::c4a7:5", "ff02::c4a7:5"])
async def test_ipv6_on_loopback_in_netns(netlab: NetLab, group: str) -> None:
    """IPv6 site- and link-local groups on lo, by name and by address, in a namespace."""
    ns = netlab.namespace()
    # This host's lo has no MULTICAST flag; in our own namespace we may turn it on. Linux
    # turns IPv6 routes via lo into reject routes unless they are of type local.
    ip("-n", ns, "link", "set", "lo", "multicast", "on")
    ip("-n", ns, "-6", "route", "add", "local", "ff00::/8", "dev", "lo", "table", "local")
    sender = await netlab.channel(ns, group, 5004, interface="lo", ttl=1, name="six")
    by_address = await netlab.channel(ns, group, 5004, interface="::1")
    by_name = await netlab.channel(ns, group, 5004, interface="lo", plain=True)
    await sender.send("halo IPv6")
    for channel in (by_address, by_name):
        message = await receive(channel)
        assert (message.text, message.sender) == ("halo IPv6", "six")
    await by_name.send("plain IPv6")
    message = await receive(sender)
    assert by_name.local_address is not None
    assert message.sender == f"[{by_name.local_address[0]}]:{by_name.local_address[1]}"


async def test_lab_receivers_see_reliable_data_once_and_no_control(netlab: NetLab) -> None:
    """With reliable channels on the lab's group (NACKs, a repair and heartbeats on port
    5005), the verbatim receiver1.py and receiver2.py print each data datagram once and
    nothing else."""
    from chatcast.multicast import ReliableOptions
    from tests.helpers import wait_until

    ns = netlab.lab_namespace()
    options = ReliableOptions(linger=0.2)
    reliable = {"reliable": True, "reliable_options": options}
    plain = await netlab.channel(ns, "224.1.1.1", 5004, interface="127.0.0.1", ttl=1, plain=True)
    receiver = await netlab.channel(ns, "224.1.1.1", 5004, interface="127.0.0.1", **reliable)
    sender = await netlab.channel(
        ns, "224.1.1.1", 5004, interface="127.0.0.1", ttl=1, name="rel", **reliable
    )
    labs = [
        await netlab.run_lab_script(ns, "receiver1.py"),
        await netlab.run_lab_script(ns, "receiver2.py"),
    ]
    for lab in labs:
        await wait_joined(plain, lab)
    # Datagram 2 is lost on the way out: only the reliable receiver gets it, by repair.
    transport = sender._send_transport
    assert transport is not None
    original = transport.sendto
    numbers = iter(range(1, 100))

    def lossy(data: bytes, addr: object = None) -> None:
        if next(numbers) != 2:
            original(data)

    transport.sendto = lossy  # type: ignore[method-assign,assignment]
    for text in ("a", "b", "c"):
        await sender.send(text)
    got: list[str] = []
    while len(got) < 3:
        text = (await receive(receiver)).text
        if text != "probe":
            got.append(text)
    assert got == ["a", "b", "c"]
    # The repair, then at least one heartbeat, have gone out on the repair port.
    await wait_until(lambda: receiver.statistics().control_received >= 2)
    await plain.send("end")
    for lab in labs:
        lines = [await next_non_probe(lab) for _ in range(3)]
        assert [json.loads(line)["text"] for line in lines[:2]] == ["a", "c"]
        assert lines[2] == "end"
