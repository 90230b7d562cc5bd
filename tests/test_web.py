"""chatcast.web over real sockets, with the websockets client: the page's HTTP, the WebSocket
as a hub member, and its limits (origin, size, hello, token, per-address, slow consumer, TLS)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("websockets", reason="needs websockets (pip install '.[web]')")

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chatcast import BroadcastClient, BroadcastServer
from chatcast.web import CONTENT_SECURITY_POLICY, WebGateway
from tests.conftest import TextPeer, receive_kind
from tests.helpers import timeout, wait_until


@pytest.fixture
async def chat() -> AsyncIterator[Any]:
    """Factory: ``server, gateway = await chat(**server_options)``; both closed after."""
    made: list[tuple[BroadcastServer, WebGateway]] = []

    async def make(**options: Any) -> tuple[BroadcastServer, WebGateway]:
        options.setdefault("join_grace", 0.05)
        gateway_options = options.pop("gateway", {})
        server = BroadcastServer("127.0.0.1", 0, **options)
        await server.start()
        gateway = WebGateway(server, port=0, **gateway_options)
        await gateway.start()
        made.append((server, gateway))
        return server, gateway

    yield make
    for server, gateway in made:
        gateway.close()
        await server.aclose()
        await gateway.wait_closed()


def ws_url(gateway: WebGateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}/ws"


async def frame(ws: ClientConnection, kind: str | None = None) -> dict[str, Any]:
    """The next JSON frame (of ``kind``, skipping others)."""
    async with asyncio.timeout(timeout(5)):
        while True:
            received = json.loads(await ws.recv())
            assert isinstance(received, dict)
            if kind is None or received["type"] == kind:
                return received


async def hello(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", **fields}))
    return await frame(ws, "welcome")


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""

    async def drain() -> None:
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(drain(), timeout(5))
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason


async def http_get(port: int, path: str) -> tuple[str, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET: status line, headers (lower-case names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    async with asyncio.timeout(timeout(5)):
        raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


async def test_the_page_is_served_with_a_strict_policy(chat: Any) -> None:
    """/ is the page (CSP: script from itself only), its files have their types, 404 else."""
    _, gateway = await chat()
    status, headers, body = await http_get(gateway.port, "/")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff"
    assert b'<script src="chat.js"' in body
    assert b"<script>" not in body  # no inline script: the policy would block it
    assert b"http://" not in body  # nothing from elsewhere
    assert b"https://" not in body
    status, headers, body = await http_get(gateway.port, "/chat.js")
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"innerHTML" not in body
    _, headers, _ = await http_get(gateway.port, "/chat.css")
    assert headers["content-type"] == "text/css; charset=utf-8"
    status, _, _ = await http_get(gateway.port, "/../etc/passwd")
    assert status == "HTTP/1.1 404 Not Found"
    _, _, info = await http_get(gateway.port, "/info.json")
    assert json.loads(info) == {"token": False, "room": "lobby", "max_message_bytes": 65536}


async def test_a_websocket_is_a_member_like_a_tcp_client(chat: Any) -> None:
    """One frame per message both ways; rooms, who, privates; counted in the statistics."""
    server, gateway = await chat()
    async with (
        connect(ws_url(gateway)) as ws,
        BroadcastClient("127.0.0.1", server.port, name="bob") as bob,
    ):
        welcome = await hello(ws, name="alice")
        assert (welcome["name"], welcome["room"]) == ("alice", "lobby")
        await ws.send(json.dumps({"type": "message", "text": "hi bob"}))
        message = await receive_kind(bob, "message")
        assert (message.sender, message.text) == ("alice", "hi bob")
        await bob.send("one\ntwo")
        await bob.send("three")
        first = await frame(ws, "message")
        assert (first["from"], first["text"]) == ("bob", "one\ntwo")
        assert (await frame(ws, "message"))["text"] == "three"
        await ws.send('{"type": "who",\n "room": "lobby"}')  # pretty JSON: still one frame
        assert (await frame(ws, "who"))["names"] == ["alice", "bob"]
        await bob.send("psst", to="alice")
        assert (await frame(ws, "private"))["text"] == "psst"
        await ws.send(json.dumps({"type": "join", "room": "kitchen"}))
        assert (await frame(ws, "join"))["room"] == "kitchen"
        assert server.who("kitchen") == ["alice"]
        stats = server.statistics()
        assert (stats.clients, stats.messages_in) == (2, 4)
        assert gateway.statistics().clients == 1
    await wait_until(lambda: server.statistics().clients == 0)


async def test_first_message_must_be_a_hello(chat: Any) -> None:
    """Anything else first is refused with a reason and close code 1008."""
    _, gateway = await chat()
    async with connect(ws_url(gateway)) as ws:
        await ws.send("hello there")
        error = await frame(ws, "error")
        assert "first message must be a hello" in error["reason"]
        code, _ = await closed(ws)
        assert code == 1008


async def test_an_oversized_message_closes_with_1009(chat: Any) -> None:
    """A message over max_message_bytes closes the connection with 1009 and a reason."""
    _, gateway = await chat(gateway={"max_message_bytes": 1000})
    async with connect(ws_url(gateway), max_size=None) as ws:
        await hello(ws, name="big")
        await ws.send(json.dumps({"type": "message", "text": "x" * 995}))
        code, reason = await closed(ws)
        assert code == 1009
        assert reason is not None
        assert "1000" in reason


async def test_origin_must_be_the_page_or_listed(chat: Any) -> None:
    """Another site's page cannot open the socket; the page's own origin and listed ones can."""
    _, gateway = await chat(gateway={"origins": ["https://chat.example.org"]})
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(gateway), origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    for origin in (f"http://127.0.0.1:{gateway.port}", "https://chat.example.org"):
        async with connect(ws_url(gateway), origin=origin) as ws:  # type: ignore[arg-type]
            await hello(ws)
    assert gateway.statistics().bad_origin == 1


async def test_token_is_checked_as_for_tcp(chat: Any) -> None:
    """A wrong token is an error frame and close 1008; the right one is welcomed."""
    server, gateway = await chat(token="sesame")
    async with connect(ws_url(gateway)) as ws:
        await ws.send(json.dumps({"type": "hello", "name": "x", "token": "nope"}))
        assert (await frame(ws, "error"))["reason"] == "authentication failed"
        assert await closed(ws) == (1008, "authentication failed")
    async with connect(ws_url(gateway)) as ws:
        await hello(ws, name="x", token="sesame")
    assert server.statistics().auth_failures == 1


async def test_per_address_limit_counts_both_doors(chat: Any) -> None:
    """max_per_address counts TCP and WebSocket clients together; the refusal says why."""
    server, gateway = await chat(max_per_address=1)
    peer = await TextPeer.connect(server.port)
    await peer.line()  # welcomed: counted
    async with connect(ws_url(gateway)) as ws:
        error = await frame(ws, "error")
        assert error["reason"] == "too many connections from 127.0.0.1"
        assert (await closed(ws))[0] == 1013
    await peer.close()
    await wait_until(lambda: server.statistics().clients == 0)
    async with connect(ws_url(gateway)) as ws:
        await hello(ws, name="later")
    assert server.statistics().rejected == 1


async def test_no_hello_in_time_is_dropped(chat: Any) -> None:
    """A socket that never says hello is closed after auth_timeout (1008), uncounted after."""
    _, gateway = await chat(auth_timeout=0.2)
    async with connect(ws_url(gateway)) as ws:
        code, reason = await closed(ws)
    assert (code, reason) == (1008, "no hello in time")
    assert gateway.statistics().timeouts == 1


async def test_a_silent_connection_cannot_hold_an_opening_slot(chat: Any) -> None:
    """Connections still opening are bounded in number and time (ssl_handshake_timeout)."""
    _, gateway = await chat(max_clients=1, ssl_handshake_timeout=0.3)
    silent = await TextPeer.connect(gateway.port)
    refused = await TextPeer.connect(gateway.port)
    assert await refused.eof() == b""
    assert await silent.eof(seconds=5) == b""  # dropped at the timeout
    await silent.close()
    await refused.close()
    async with connect(ws_url(gateway)) as ws:
        await hello(ws)
    stats = gateway.statistics()
    assert (stats.refused, stats.timeouts) == (1, 1)


async def test_a_slow_websocket_consumer_is_dropped(chat: Any) -> None:
    """A socket that does not read is a slow consumer: counted, told, closed; others go on."""
    server, gateway = await chat(max_buffer_bytes=64 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills soon
    sock.connect(("127.0.0.1", gateway.port))
    async with (
        connect(ws_url(gateway), max_queue=1, sock=sock, close_timeout=0.5) as slow,
        BroadcastClient("127.0.0.1", server.port, name="talker") as talker,
    ):
        await hello(slow, name="slow")
        text = "y" * 60_000
        async with asyncio.timeout(timeout(10)):
            while not server.statistics().slow_consumers:
                for _ in range(5):
                    await talker.send(text)
                await asyncio.sleep(0.001)  # let the hub write
        assert server.statistics().slow_consumers == 1
        await wait_until(lambda: server.statistics().clients == 1)


async def test_server_close_tells_websockets(chat: Any) -> None:
    """Closing the server sends the closing frame, then close code 1001 with the reason."""
    server, gateway = await chat()
    async with connect(ws_url(gateway)) as ws:
        await hello(ws, name="z")
        server.close("bye now")
        assert (await frame(ws, "closing"))["reason"] == "bye now"
        assert await closed(ws) == (1001, "bye now")


async def test_wss_with_the_servers_certificate(chat: Any) -> None:
    """With TLS the page is https and the socket wss, with the server's certificate."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    _, gateway = await chat(ssl=server_context)
    assert gateway.url.startswith("https://")
    url = f"wss://127.0.0.1:{gateway.port}/ws"
    async with connect(url, ssl=client_context, origin=gateway.url.rstrip("/")) as ws:
        assert (await hello(ws, name="secure"))["name"] == "secure"


async def test_tls_handshakes_are_bounded_as_for_tcp(chat: Any) -> None:
    """With TLS, at most max_handshakes run at once, as on the TCP port: while a silent
    connection holds the only slot the next gets no ServerHello; then it gets its turn."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    _, gateway = await chat(ssl=server_context, max_handshakes=1, ssl_handshake_timeout=3)
    silent = await TextPeer.connect(gateway.port)
    url = f"wss://127.0.0.1:{gateway.port}/ws"
    origin: Any = gateway.url.rstrip("/")

    async def open_socket() -> ClientConnection:
        return await connect(url, ssl=client_context, origin=origin, open_timeout=5)

    waiting = asyncio.create_task(open_socket())
    done, _ = await asyncio.wait([waiting], timeout=0.3)
    assert not done  # no handshake for it while the slot is held
    await silent.close()  # the silent one's handshake fails at its EOF: the slot is free
    async with asyncio.timeout(timeout(5)):
        ws = await waiting
    async with ws:
        assert (await hello(ws, name="patient"))["name"] == "patient"


def _six(hex_colour: str) -> str:
    """``#rgb`` or ``#rrggbb`` as six hex digits."""
    digits = hex_colour.lstrip("#")
    return "".join(d * 2 for d in digits) if len(digits) == 3 else digits


def _luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of ``#rrggbb`` (or ``#rgb``)."""
    digits = _six(hex_colour)
    channels = [int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_page_text_has_readable_contrast() -> None:
    """Every text colour of the page's style sheet is at least 4.5:1 on its backgrounds
    (WCAG AA), and nothing is faded with opacity."""
    import importlib.resources
    import re

    css = (importlib.resources.files("chatcast") / "static" / "chat.css").read_text()
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{3,6});", css))
    assert "opacity" not in css
    pairs = [
        (text, background)
        for text in ("fg", "muted", "accent", "error", "notice", "private", "server")
        for background in ("bg", "panel")
    ]
    pairs += [("error", "error-bg")]
    for text, background in pairs:
        light, dark = sorted(
            (_luminance(colours[text]), _luminance(colours[background])), reverse=True
        )
        ratio = (light + 0.05) / (dark + 0.05)
        assert ratio >= 4.5, f"{text} on {background}: {ratio:.2f}:1"
    button = (_luminance("#ffffff") + 0.05) / (_luminance(colours["accent"]) + 0.05)
    assert button >= 4.5  # white on the accent colour


async def test_flood_control_applies_to_websockets(chat: Any) -> None:
    """The server's rate limit holds for a WebSocket client: excess dropped, with an error."""
    server, gateway = await chat(rate=1.0, burst=1.0)
    async with connect(ws_url(gateway)) as ws:
        await hello(ws, name="fast")
        for n in range(3):
            await ws.send(json.dumps({"type": "message", "text": f"m{n}"}))
        assert "rate limit" in (await frame(ws, "error"))["reason"]
    assert server.statistics().rate_limited >= 1


async def test_fragmented_messages_are_reassembled(chat: Any) -> None:
    """A message sent in fragments (even one byte each) is one frame for the hub."""
    server, gateway = await chat()
    async with (
        connect(ws_url(gateway)) as ws,
        BroadcastClient("127.0.0.1", server.port, name="reader") as reader,
    ):
        await ws.send(iter(['{"type":"hel', 'lo","name":"frag"}']))
        await frame(ws, "welcome")
        text = json.dumps({"type": "message", "text": "pieces " * 300})
        await ws.send(iter(text))  # one fragment per character
        message = await receive_kind(reader, "message")
        assert (message.sender, message.text) == ("frag", "pieces " * 300)


async def test_chatcast_server_web_port() -> None:
    """`chatcast server --web-port`: the banner names the page; a socket chats, hears the
    operator's announcements, and is told when SIGTERM closes the server."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatcast", "server", "--port", "0", "--web-port", "0",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout(10)):
            banner = (await process.stdout.readline()).decode()
        assert "chat page at http://127.0.0.1:" in banner, banner
        url = banner.split("chat page at ")[1].split()[0]
        async with connect(url.replace("http://", "ws://") + "ws") as ws:
            await hello(ws, name="cli")
            process.stdin.write(b"halo semua\n")
            assert (await frame(ws, "announcement"))["text"] == "halo semua"
            process.send_signal(signal.SIGTERM)
            assert (await frame(ws, "closing"))["reason"] == "server shutting down"
            assert (await closed(ws))[0] == 1001
        async with asyncio.timeout(timeout(10)):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
