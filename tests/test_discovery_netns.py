"""Discovery between two hosts: network namespaces joined by a veth pair (192.0.2.0/24).

Needs Linux, root and iproute2; skipped otherwise (the ``netlab`` fixture). The commands run
as users run them, ``python -m chatcast ...`` under ``ip netns exec``; nothing is sent outside
the namespaces the test makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time

import pytest

from chatcast.discovery import Announce, Announcer, ServerInfo, discover
from tests.helpers import timeout
from tests.test_multicast_netns import NetLab, in_netns, ip, netlab  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.slow]

KEY = "kunci-kelas"
LEFT, RIGHT = "192.0.2.1", "192.0.2.2"


def two_hosts(lab: NetLab) -> tuple[str, str]:
    """Two namespaces on one link: left has 192.0.2.1, right 192.0.2.2."""
    left, right = lab.namespace(), lab.namespace()
    tag = str(os.getpid())[-6:]
    left_if, right_if = f"cdl{tag}", f"cdr{tag}"
    ip("link", "add", left_if, "netns", left, "type", "veth", "peer", "name", right_if,
       "netns", right)  # fmt: skip
    ip("-n", left, "addr", "add", f"{LEFT}/24", "dev", left_if)
    ip("-n", right, "addr", "add", f"{RIGHT}/24", "dev", right_if)
    ip("-n", left, "link", "set", left_if, "up")
    ip("-n", right, "link", "set", right_if, "up")
    return left, right


async def chatcast(
    lab: NetLab, namespace: str, *args: str, key: str | None = KEY
) -> asyncio.subprocess.Process:
    """``python -m chatcast ARGS`` inside ``namespace``, pipes on stdin and stdout."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CHATCAST_MULTICAST_KEY", None)
    if key is not None:
        env["CHATCAST_MULTICAST_KEY"] = key
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace, sys.executable, "-m", "chatcast", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    lab.processes.append(process)
    return process


async def line_matching(process: asyncio.subprocess.Process, pattern: str) -> re.Match[str]:
    """Read the process's stdout until a line matches ``pattern``."""
    assert process.stdout is not None
    async with asyncio.timeout(timeout(10)):
        while line := (await process.stdout.readline()).decode():
            if match := re.search(pattern, line):
                return match
    raise AssertionError(f"the process ended without printing {pattern!r}")


async def test_discover_and_client_across_hosts(netlab: NetLab) -> None:  # noqa: F811
    """On the right host, ``chatcast discover`` lists the server announced on the left within
    3 s, a forged beacon (another key) is not listed though it arrives, and ``chatcast client``
    with no --host chats with the server."""
    left, right = two_hosts(netlab)
    server = await chatcast(
        netlab, left, "server", "--host", LEFT, "--port", "0", "--announce",
        "--announce-name", "far",
    )  # fmt: skip
    port = int((await line_matching(server, r"port (\d+), announced"))[1])

    # A forger on the left host: beacons every 0.5 s signed with another key.
    def info() -> ServerInfo:
        return ServerInfo(LEFT, 9, tls=False, token=False, clients=0)

    with in_netns(left):
        forger = Announcer(
            info, Announce(interface=LEFT, name="forged", key="salah", interval=0.5),
            server_host=None,
        )  # fmt: skip
        await forger.start()
    try:
        # An unkeyed listener on the right hears both: the forged beacons do cross.
        with in_netns(right):
            unkeyed = discover(interface=RIGHT)
            await unkeyed.open()
        started = time.monotonic()
        listing = await chatcast(
            netlab, right, "discover", "--interface", RIGHT, "--once", "--json",
            "--timeout", "3",
        )  # fmt: skip
        async with asyncio.timeout(timeout(15)):
            out, err = await listing.communicate()
        elapsed = time.monotonic() - started
        assert listing.returncode == 0, err.decode()
        servers = json.loads(out)
        assert [(s["name"], s["host"], s["port"]) for s in servers] == [("far", LEFT, port)]
        assert elapsed < 3 + timeout(3)  # the 3 s window, plus starting Python in a namespace
        assert {s.name for s in unkeyed.servers()} == {"far", "forged"}
        unkeyed.close()
        await unkeyed.wait_closed()
    finally:
        forger.close()
        await forger.wait_closed()

    client = await chatcast(netlab, right, "client", "--interface", RIGHT, "--name", "bob")
    assert client.stdin is not None
    await line_matching(client, r"you are bob in lobby")
    client.stdin.write(b"halo dari sebelah\n")
    await client.stdin.drain()
    await line_matching(server, r"bob: halo dari sebelah")
    client.stdin.close()
    async with asyncio.timeout(timeout(10)):
        assert await client.wait() == 0


async def test_client_says_how_when_nothing_found(netlab: NetLab) -> None:  # noqa: F811
    """With no server announcing, ``chatcast client`` says so and how to pass --host."""
    _, right = two_hosts(netlab)
    client = await chatcast(
        netlab, right, "client", "--interface", RIGHT, "--discover-timeout", "0.5"
    )
    async with asyncio.timeout(timeout(10)):
        _, err = await client.communicate()
    assert client.returncode == 1
    assert "no server announced itself on 192.0.2.2" in err.decode()
    assert "--host" in err.decode()
