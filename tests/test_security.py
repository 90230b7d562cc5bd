"""Who may talk: TLS, token authentication, flood control, connection limits."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from chatcast.client import BroadcastClient
from chatcast.exceptions import AuthenticationError, ConnectionClosed
from chatcast.message import ERROR, MESSAGE
from tests.conftest import TextPeer, receive_kind
from tests.helpers import wait_until

Factory = Callable[..., Any]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority made for this test run."""
    return trustme.CA()


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server TLS context with a certificate for 127.0.0.1 and localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client TLS context that trusts the test CA (and verifies hostnames)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# -- TLS ------------------------------------------------------------------------------------


async def test_tls_chat(
    start_server: Factory, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """Two JSON clients chat over TLS; a text-mode TLS peer sees the same room."""
    server = await start_server(ssl=server_context)
    alice = BroadcastClient("127.0.0.1", server.port, name="alice", ssl=client_context)
    bob = BroadcastClient("127.0.0.1", server.port, name="bob", ssl=client_context)
    await alice.connect()
    await bob.connect()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_context)
    peer = TextPeer(reader, writer)
    try:
        assert await peer.line() == server.welcome
        await alice.send("secret hello")
        assert (await receive_kind(bob, MESSAGE)).text == "secret hello"
        assert await peer.until(lambda line: line.startswith("alice")) == "alice: secret hello"
    finally:
        await peer.close()
        await alice.close()
        await bob.close()


async def test_client_verifies_certificates_by_default(
    start_server: Factory, server_context: ssl.SSLContext
) -> None:
    """ssl=True uses the system trust store: a private CA's certificate is refused."""
    server = await start_server(ssl=server_context)
    client = BroadcastClient("127.0.0.1", server.port, ssl=True)
    with pytest.raises(ssl.SSLCertVerificationError):
        await client.connect()


async def test_plain_client_on_tls_port_fails_fast(
    start_server: Factory, server_context: ssl.SSLContext
) -> None:
    """A plain-TCP client on a TLS port gets a quick, clear failure, not a hang."""
    server = await start_server(ssl=server_context)
    client = BroadcastClient("127.0.0.1", server.port, connect_timeout=10)
    started = time.monotonic()
    with pytest.raises(ConnectionClosed, match="server closed the connection"):
        await client.connect()
    assert time.monotonic() - started < 5
    assert server.is_serving


async def test_tls_client_on_plain_port_fails_fast(
    server: Any, client_context: ssl.SSLContext
) -> None:
    """A TLS client on a plain port fails with an SSL error at once."""
    client = BroadcastClient("127.0.0.1", server.port, ssl=client_context, connect_timeout=10)
    started = time.monotonic()
    with pytest.raises(ssl.SSLError):
        await client.connect()
    assert time.monotonic() - started < 5


async def test_garbage_instead_of_client_hello(
    start_server: Factory, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """Garbage on the TLS port is dropped quickly; the server keeps serving TLS clients."""
    server = await start_server(ssl=server_context)
    peer = await TextPeer.connect(server.port)
    peer.send(b"\x16\x03\x01\x00\x05garbage and more garbage\r\n\r\n")
    assert await peer.eof() == b""
    await peer.close()
    client = BroadcastClient("127.0.0.1", server.port, ssl=client_context)
    await client.connect()
    await client.close()


# -- tokens ---------------------------------------------------------------------------------


async def test_json_token(start_server: Factory) -> None:
    """Right token: in. Wrong or missing token: AuthenticationError, counted."""
    server = await start_server(token="s3cret")
    good = BroadcastClient("127.0.0.1", server.port, name="good", token="s3cret")
    await good.connect()
    with pytest.raises(AuthenticationError, match="authentication failed"):
        await BroadcastClient("127.0.0.1", server.port, token="wrong").connect()
    with pytest.raises(AuthenticationError, match="authentication failed"):
        await BroadcastClient("127.0.0.1", server.port).connect()
    assert server.statistics().auth_failures == 2
    assert server.who() == ["good"]
    await good.close()


async def test_text_auth_and_nothing_before_it(start_server: Factory) -> None:
    """Before /auth a text client receives nothing and its lines go nowhere."""
    server = await start_server(token="s3cret")
    member = BroadcastClient("127.0.0.1", server.port, name="member", token="s3cret")
    await member.connect()
    peer = await TextPeer.connect(server.port)
    try:
        assert await peer.line() == server.welcome
        peer.send("sneaky message\n")
        assert await peer.line() == "! authentication required: send /auth TOKEN first"
        await member.send("members only")
        peer.send("/auth s3cret\n")
        assert await peer.line() == "* authenticated"
        peer.send("now I am in\n")
        got = await receive_kind(member, MESSAGE)
        assert got.text == "now I am in"  # the sneaky message was never relayed
        # ...and "members only", sent before authentication, never reached the peer.
        await member.send("welcome")
        assert await peer.until(lambda line: line.startswith("member:")) == "member: welcome"
    finally:
        await peer.close()
        await member.close()


async def test_text_wrong_token_and_timeout(start_server: Factory) -> None:
    """A wrong token closes with a reason; silence past auth_timeout does too."""
    server = await start_server(token="s3cret", auth_timeout=0.3)
    wrong = await TextPeer.connect(server.port)
    await wrong.line()
    wrong.send("/auth guess\n")
    assert (await wrong.eof()).decode().splitlines() == ["! authentication failed"]
    late = await TextPeer.connect(server.port)
    await late.line()
    assert (await late.eof()).decode().splitlines() == ["! authentication timeout"]
    assert server.statistics().auth_failures == 2
    await wrong.close()
    await late.close()


# -- flood control --------------------------------------------------------------------------


async def test_rate_limit_drops_excess_and_others_unaffected(start_server: Factory) -> None:
    """Over the bucket: error once per run, excess dropped; a steady sender is unaffected."""
    server = await start_server(rate=5, burst=5)
    flooder = await TextPeer.connect(server.port)
    await flooder.line()
    alice = BroadcastClient("127.0.0.1", server.port, name="alice")
    bob = BroadcastClient("127.0.0.1", server.port, name="bob")
    await alice.connect()
    await bob.connect()
    try:
        flooder.send("".join(f"flood {n}\n" for n in range(15)))
        assert (await flooder.until(lambda line: line.startswith("!"))) == (
            "! rate limit (5/s) exceeded: message dropped"
        )
        await alice.send("normal")
        texts = []
        while "normal" not in texts:
            texts.append((await receive_kind(bob, MESSAGE)).text)
        assert texts == [f"flood {n}" for n in range(5)] + ["normal"]
        assert server.statistics().rate_limited == 10
    finally:
        await flooder.close()
        await alice.close()
        await bob.close()


async def test_persistent_flooding_disconnects(start_server: Factory) -> None:
    """A client that keeps flooding past the limit is disconnected with a reason."""
    server = await start_server(rate=2, burst=2)
    flooder = await TextPeer.connect(server.port)
    await flooder.line()
    flooder.send("".join(f"flood {n}\n" for n in range(100)))
    lines = (await flooder.eof()).decode().splitlines()
    assert lines[-1] == "! flooding: too many messages over the rate limit"
    await wait_until(lambda: server.statistics().clients == 0)
    await flooder.close()


async def test_rate_limit_json_error_frame(start_server: Factory) -> None:
    """A JSON client over the limit gets an error frame and keeps its connection."""
    server = await start_server(rate=1, burst=1)
    alice = BroadcastClient("127.0.0.1", server.port, name="alice")
    await alice.connect()
    await alice.send("one")
    await alice.send("two")
    error = await receive_kind(alice, ERROR)
    assert error.text == "rate limit (1/s) exceeded: message dropped"
    assert alice.connected
    await alice.close()


# -- connection limits ----------------------------------------------------------------------


async def test_per_address_limit(start_server: Factory) -> None:
    """The connection over max_per_address is refused; a slot frees when one leaves."""
    server = await start_server(max_per_address=2)
    first = await TextPeer.connect(server.port)
    second = await TextPeer.connect(server.port)
    third = await TextPeer.connect(server.port)
    assert await third.line() == "! too many connections from 127.0.0.1"
    assert await third.eof() == b""
    await first.close()
    await wait_until(lambda: server.statistics().clients == 1)
    fourth = await TextPeer.connect(server.port)
    assert await fourth.line() == server.welcome
    for peer in (second, third, fourth):
        await peer.close()


async def test_names_cannot_be_forged_or_spoofed(start_server: Factory) -> None:
    """Invalid names are refused; a JSON "from" is ignored; names with newlines are refused."""
    server = await start_server()
    with pytest.raises(ValueError, match="name"):
        BroadcastClient(name="evil\nname")
    raw = await TextPeer.connect(server.port)
    await raw.line()
    raw.send('{"type":"hello","name":"bad\\u001bname"}\n')
    reply = json.loads(await raw.until(lambda line: line.startswith("{")))
    reason = "name may hold only letters, digits, '_', '.' and '-'"
    assert reply == {"type": "error", "text": reason, "reason": reason}
    assert await raw.eof() == b""
    await raw.close()
    peer = await TextPeer.connect(server.port)
    await peer.line()
    peer.send("/nick server\n")
    assert await peer.until(lambda line: line.startswith("!")) == "! name 'server' is reserved"
    peer.send("/nick " + "x" * 40 + "\n")
    assert await peer.until(lambda line: line.startswith("!")) == (
        "! name is longer than 32 characters"
    )
    await peer.close()
