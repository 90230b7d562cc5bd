"""Who may talk: TLS, token authentication, flood control, connection limits."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from chatcast.client import BroadcastClient
from chatcast.exceptions import AuthenticationError, ConnectionClosed, Refused
from chatcast.message import MESSAGE, Message, render_text
from chatcast.server import BroadcastServer
from tests.conftest import TextPeer, receive_kind
from tests.helpers import timeout, wait_until

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


def test_tls_on_uvloop(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    """On uvloop (chatcast[speed]) TLS works too: there the TLS layer stays in the accept
    (uvloop reads before a protocol could hand the connection over)."""
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")

    async def chat() -> None:
        async with BroadcastServer("127.0.0.1", 0, ssl=server_context, join_grace=0.05) as hub:
            alice = BroadcastClient("127.0.0.1", hub.port, name="alice", ssl=client_context)
            bob = BroadcastClient("127.0.0.1", hub.port, name="bob", ssl=client_context)
            async with asyncio.timeout(timeout(10)), alice, bob:
                await alice.send("over uvloop")
                assert (await receive_kind(bob, MESSAGE)).text == "over uvloop"

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(chat())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_the_documented_certificate_recipe(start_server: Factory, tmp_path: Path) -> None:
    """docs/security.md's openssl recipe makes a CA and certificate that a strict verifier
    (Python 3.13's default, VERIFY_X509_STRICT) accepts."""
    doc = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    recipe = doc.split("### Making a certificate for a LAN", 1)[1].split("```sh\n", 1)[1]
    recipe = recipe.split("```", 1)[0].replace("10.0.0.5", "127.0.0.1")
    done = await asyncio.create_subprocess_shell(
        recipe, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, errors = await done.communicate()
    assert done.returncode == 0, errors.decode()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server = await start_server(ssl=server_context)
    strict = ssl.create_default_context(cafile=tmp_path / "ca.pem")
    strict.verify_flags |= ssl.VERIFY_X509_STRICT
    client = BroadcastClient(
        "127.0.0.1", server.port, name="student", ssl=strict, server_hostname="chat.lab"
    )
    await client.connect()
    await client.close()


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
    with pytest.raises(ConnectionClosed, match=r"does it expect TLS\?"):
        await client.connect()
    assert time.monotonic() - started < 5
    assert server.is_serving


async def test_tls_client_on_plain_port_fails_fast(
    server: Any, client_context: ssl.SSLContext
) -> None:
    """A TLS client on a plain port fails with an SSL error at once."""
    client = BroadcastClient("127.0.0.1", server.port, ssl=client_context, connect_timeout=10)
    started = time.monotonic()
    with pytest.raises(ssl.SSLError, match="does the server speak TLS on this port"):
        await client.connect()
    assert time.monotonic() - started < 5


async def test_a_silent_server_is_a_clear_timeout() -> None:
    """A port that accepts and never speaks: TimeoutError saying what did not come."""
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        client = BroadcastClient("127.0.0.1", port, connect_timeout=0.3)
        with pytest.raises(TimeoutError, match=f"no welcome from 127.0.0.1:{port} within 0.3 s"):
            await client.connect()
    finally:
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_tls_connections_count_from_the_accept(
    start_server: Factory, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """Silent connections to a TLS port count against the limits before any handshake, and
    no more than max_handshakes handshakes run at once; when they time out, all is free."""
    server = await start_server(
        ssl=server_context, max_per_address=12, max_handshakes=4, ssl_handshake_timeout=0.5
    )
    silent = [await TextPeer.connect(server.port) for _ in range(15)]
    try:
        await wait_until(lambda: server.statistics().rejected == 3)
        assert server.statistics().clients == 12
        assert server._handshakes == 4  # the other 8 wait, holding no TLS buffers
        for peer in silent[12:]:
            assert await peer.eof() == b""  # refused at once, without a word
        await wait_until(lambda: server.statistics().clients == 0, 10)
        assert server.statistics().auth_failures == 0
    finally:
        for peer in silent:
            await peer.close()
    client = BroadcastClient("127.0.0.1", server.port, ssl=client_context)
    await client.connect()
    await client.close()


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
    with pytest.raises(AuthenticationError, match="authentication required"):
        await BroadcastClient("127.0.0.1", server.port).connect()  # no token: says so
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


async def test_sending_something_does_not_stop_the_authentication_clock(
    start_server: Factory,
) -> None:
    """An unauthenticated connection that keeps talking still times out (from the welcome)."""
    server = await start_server(token="s3cret", auth_timeout=0.5)
    chatty = await TextPeer.connect(server.port)
    await chatty.line()

    async def trickle() -> None:
        while True:
            chatty.send(b"\n")  # an empty line: a sign of life, never an /auth
            await asyncio.sleep(0.1)  # pacing the attacker, not waiting for the server

    task = asyncio.create_task(trickle())
    try:
        lines = (await chatty.eof(seconds=5)).decode().splitlines()
    finally:
        task.cancel()
        await chatty.close()
    assert lines[-1] == "! authentication timeout"
    assert server.statistics().auth_failures == 1


async def test_a_lone_surrogate_token_is_refused_not_a_crash(start_server: Factory) -> None:
    """A hello whose token is "\\ud800" (not text) gets an error line, no traceback."""
    server = await start_server(token="s3cret")
    peer = await TextPeer.connect(server.port)
    await peer.line()
    peer.send('{"type":"hello","name":"sur","token":"\\ud800"}\n')
    line = await peer.until(lambda line: line.startswith("!"))
    assert line == "! authentication required: send /auth TOKEN first"
    assert server.is_serving
    await peer.close()


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
        flooder.send("".join(f"flood {n}\n" for n in range(15)) + "/who\n")
        assert (await flooder.until(lambda line: line.startswith("!"))) == (
            "! rate limit (5/s) exceeded: message dropped"
        )
        flooder.send("//after\n")  # still limited: a later frame of the same run
        await wait_until(lambda: server.statistics().rate_limited == 12)
        await alice.send("normal")
        texts = []
        while "normal" not in texts:
            texts.append((await receive_kind(bob, MESSAGE)).text)
        assert texts == [f"flood {n}" for n in range(5)] + ["normal"]
        flooder.send("/quit\n")  # free: ends the run, and the connection
        said = (await flooder.eof()).decode().splitlines()
        assert [line for line in said if line.startswith("!")] == []  # one error per run
    finally:
        await flooder.close()
        await alice.close()
        await bob.close()


async def test_commands_take_tokens_too(start_server: Factory) -> None:
    """/nick and /join are rate limited like chat: a storm of them is a storm of notices."""
    server = await start_server(rate=2, burst=2)
    watcher = BroadcastClient("127.0.0.1", server.port, name="watcher")
    await watcher.connect()
    flooder = await TextPeer.connect(server.port)
    await flooder.line()
    try:
        flooder.send("".join(f"/nick n{n}\n" for n in range(10)))
        assert (await flooder.until(lambda line: line.startswith("!"))) == (
            "! rate limit (2/s) exceeded: message dropped"
        )
        await wait_until(lambda: server.statistics().rate_limited == 8)
        assert sorted(server.who()) == ["n1", "watcher"]
    finally:
        await flooder.close()
        await watcher.close()


async def test_bidi_controls_are_refused_and_shown_escaped(start_server: Factory) -> None:
    """U+202E (right-to-left override) and kin are refused in chat and in leave reasons."""
    server = await start_server()
    alice = BroadcastClient("127.0.0.1", server.port, name="alice")
    bob = BroadcastClient("127.0.0.1", server.port, name="bob")
    await alice.connect()
    await bob.connect()
    peer = await TextPeer.connect(server.port)
    await peer.line()
    try:
        peer.send("cost: 100\u202e0001\n")  # the fast path's byte check
        assert await peer.until(lambda line: line.startswith("!")) == (
            "! invisible formatting character U+202E is not allowed"
        )
        await alice.send("fine")
        assert (await receive_kind(bob, MESSAGE)).text == "fine"
        with pytest.raises(ValueError, match=r"U\+2066"):
            await alice.send("x\u2066y")
        await alice.close("\x1b[2Jgone\u202e")  # a reason that breaks the rules: dropped
        left = await receive_kind(bob, "leave")
        assert (left.sender, left.text) == ("alice", "quit")
        assert render_text(Message("a\u202eb", sender="x")) == "x: a<U+202E>b"
    finally:
        await peer.close()
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
    """A JSON client over the limit is refused (send() raises the server's reason) and keeps
    its connection."""
    server = await start_server(rate=1, burst=1)
    alice = BroadcastClient("127.0.0.1", server.port, name="alice")
    await alice.connect()
    await alice.send("one")
    with pytest.raises(Refused, match=r"^rate limit \(1/s\) exceeded: message dropped$"):
        await alice.send("two")
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
