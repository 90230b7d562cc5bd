"""The chat page in a real browser (headless Chromium): chat with TCP peers, restarts, tokens.

One browser for the module; each test opens its own windows. Skipped, with the reason, where
Chromium and chromedriver are not installed (``.ci/run`` installs them, so CI runs these).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("selenium", reason="needs selenium (pip install '.[test]')")

from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from chatcast import BroadcastClient, BroadcastServer, HistoryLimits
from chatcast._web_connection import WebConnection
from chatcast.web import WebGateway
from tests.browser import Page, find_browser, start_browser
from tests.conftest import receive_kind
from tests.helpers import timeout

NO_BROWSER = "no chromium/chromedriver (apt-get install chromium chromium-driver)"
if find_browser() is None and os.environ.get("CHATCAST_REQUIRE_BROWSER"):
    # CI sets it: there the browser tests must run, not skip.
    raise RuntimeError(f"CHATCAST_REQUIRE_BROWSER is set but there is {NO_BROWSER}")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_browser() is None, reason=NO_BROWSER)]


@pytest.fixture(scope="module")
def driver() -> Iterator[Chrome]:
    """One headless Chromium for the whole module (starting one takes about a second)."""
    browser, profile = start_browser()
    try:
        yield browser
    finally:
        browser.quit()
        profile.cleanup()


@pytest.fixture
def windows(driver: WebDriver) -> Iterator[list[Page]]:
    """Pages opened by a test; all but the first window are closed after it."""
    pages: list[Page] = []
    yield pages
    first = driver.window_handles[0]
    for handle in driver.window_handles[1:]:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(first)
    driver.get("about:blank")


def open_page(driver: WebDriver, pages: list[Page]) -> Page:
    page = Page.new(driver, first=not pages)
    pages.append(page)
    return page


async def run(function: Any, *args: Any) -> Any:
    """Selenium blocks: call it in a thread so the server keeps serving meanwhile."""
    return await asyncio.to_thread(function, *args)


async def test_pages_chat_with_each_other_nc_and_a_client(
    driver: Chrome, windows: list[Page]
) -> None:
    """Two pages, nc and a BroadcastClient all talk in one room; typed HTML stays text."""
    nc = shutil.which("nc")
    if nc is None:
        pytest.skip("needs nc (apt-get install netcat-openbsd)")
    async with (
        BroadcastServer("127.0.0.1", 0, join_grace=0.05) as server,
        WebGateway(server, port=0) as gateway,
    ):
        alice, bob = open_page(driver, windows), open_page(driver, windows)
        for page, name in ((alice, "alice"), (bob, "bob")):
            await run(page.open, gateway.url)
            await run(page.join, name)
            await run(page.wait_text, "status", f"connected as {name}")
            assert await run(page.focused) == "text"  # keyboard: straight to the message box
        process = await asyncio.create_subprocess_exec(
            nc, "-q", "1", "127.0.0.1", str(server.port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdin is not None
        assert process.stdout is not None
        stdout = process.stdout
        try:
            async with BroadcastClient("127.0.0.1", server.port, name="carol") as carol:

                async def nc_line(part: str) -> str:
                    async with asyncio.timeout(timeout(10)):
                        while True:
                            line = (await stdout.readline()).decode()
                            assert line, f"nc ended before {part!r}"
                            if part in line:
                                return line.strip()

                await run(alice.say, "hello from alice")
                assert "alice: hello from alice" in await run(bob.wait_line, "hello from alice")
                assert (await receive_kind(carol, "message")).text == "hello from alice"
                await nc_line("alice: hello from alice")

                process.stdin.write(b"hi from nc\n")
                assert ": hi from nc" in await run(alice.wait_line, "hi from nc")
                await run(bob.wait_line, "hi from nc")
                await carol.send("hi from carol")
                assert "carol: hi from carol" in await run(bob.wait_line, "hi from carol")
                await run(alice.wait_line, "carol: hi from carol")
                await nc_line("carol: hi from carol")

                hostile = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
                await run(bob.say, hostile)
                assert hostile in await run(alice.wait_line, "<script>")
                assert await run(alice.script, "return window.pwned") is None
                tags = "return document.querySelectorAll('#log img, #log script').length"
                assert await run(alice.script, tags) == 0
                await nc_line(hostile)

                # Who is here, and a private message chosen from that list.
                await run(alice.wait_text, "who", "carol")
                assert "alice (you)" in await run(alice.text, "who")
                await run(alice.say, "/msg bob psst")
                assert "[private] alice: psst" in await run(bob.wait_line, "psst")
                await carol.send("for bob only", to="bob")
                await run(bob.wait_line, "[private] carol: for bob only")
                await run(bob.say, "/msg nobody hello?")
                assert "! no such user: nobody" in await run(bob.wait_line, "no such user")

                # Room switching: bob goes to the kitchen by clicking a room after /join.
                await run(bob.say, "/join kitchen")
                await run(bob.wait_text, "room-title", "kitchen")
                await run(alice.wait_line, "bob left lobby")
                await run(alice.wait, lambda d: "bob" not in alice.text("who"))
                await run(bob.say, "anyone in the kitchen?")
                await carol.join("kitchen")
                await run(bob.wait_line, "carol joined kitchen")
                await carol.send("me")
                await run(bob.wait_line, "carol: me")
                await run(bob.wait_text, "rooms", "lobby")
                lobby = await run(
                    bob.wait, lambda d: d.find_element(By.CSS_SELECTOR, "#rooms [data-room=lobby]")
                )
                await run(lobby.send_keys, Keys.ENTER)  # a keyboard user's "click"
                await run(bob.wait_text, "room-title", "lobby")
                await run(alice.wait_line, "bob joined lobby")

                stats = server.statistics()
                assert stats.clients == 4  # two pages, nc, carol: members alike
                assert gateway.statistics().clients == 2

                # A phone's width: nothing wider than the screen.
                await run(driver.set_window_size, 375, 740)
                await run(alice.script, "window.dispatchEvent(new Event('resize'))")
                wide = await run(
                    alice.script,
                    "return document.documentElement.scrollWidth - window.innerWidth",
                )
                assert wide <= 0
                await run(driver.set_window_size, 1000, 700)
                logs = await run(driver.get_log, "browser")
                assert not [
                    entry for entry in logs if "Content Security Policy" in entry["message"]
                ]
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def test_a_page_survives_the_server_restarting(
    driver: WebDriver, windows: list[Page]
) -> None:
    """The page reconnects with backoff to the restarted server, under its name, and chats."""
    server = BroadcastServer("127.0.0.1", 0, join_grace=0.05)
    await server.start()
    gateway = WebGateway(server, port=0)
    await gateway.start()
    port = gateway.port
    page = open_page(driver, windows)
    try:
        await run(page.open, gateway.url)
        await run(page.join, "dora")
        await run(page.wait_text, "status", "connected as dora")
        await server.aclose("restarting")
        gateway.close()
        await gateway.wait_closed()
        await run(page.wait_text, "status", "reconnecting")
        await run(page.wait_line, "restarting")
        server = BroadcastServer("127.0.0.1", 0, join_grace=0.05)
        await server.start()
        gateway = WebGateway(server, port=port)
        await gateway.start()
        await run(page.wait_text, "status", "connected as dora", 15.0)
        async with BroadcastClient("127.0.0.1", server.port, name="eve") as eve:
            await run(page.say, "back again")
            message = await receive_kind(eve, "message")
            assert (message.sender, message.text) == ("dora", "back again")
    finally:
        gateway.close()
        await server.aclose()


async def test_the_page_asks_for_the_token(driver: WebDriver, windows: list[Page]) -> None:
    """With a token, the page asks for it; a wrong one is refused in plain words. Under
    flood control the page's own requests on joining stay within a small burst."""
    options: dict[str, Any] = {"token": "sesame", "rate": 0.5, "burst": 3.0}
    async with (
        BroadcastServer("127.0.0.1", 0, join_grace=0.05, **options) as server,
        WebGateway(server, port=0) as gateway,
    ):
        page = open_page(driver, windows)
        await run(page.open, gateway.url)
        await run(page.wait, lambda d: d.find_element(By.ID, "token").is_displayed())
        await run(page.join, "fred", "wrong")
        await run(page.wait_text, "join-error", "authentication failed")
        assert await run(page.script, "return document.getElementById('chat').hidden")
        assert server.statistics().auth_failures == 1
        await run(page.join, "fred", "sesame")
        await run(page.wait_text, "status", "connected as fred")
        await run(page.wait_text, "who", "fred (you)")  # asked for on joining
        await run(page.say, "/who kitchen")  # the third request of the burst
        await run(page.wait_line, "in kitchen: (nobody)")
        assert not [line for line in await run(page.lines) if "rate limit" in line]
        assert server.statistics().rate_limited == 0


async def test_a_dropped_page_resumes_and_shows_what_it_missed(
    driver: WebDriver, windows: list[Page]
) -> None:
    """History on joining; after a dropped link the page resumes its session, and what was
    said meanwhile is shown once, marked as earlier."""
    history = HistoryLimits(messages=3)
    async with (
        BroadcastServer("127.0.0.1", 0, join_grace=0.05, history=history) as server,
        WebGateway(server, port=0) as gateway,
        BroadcastClient("127.0.0.1", server.port, name="gus") as gus,
    ):
        await gus.send("before you came")
        page = open_page(driver, windows)
        await run(page.open, gateway.url)
        await run(page.join, "hana")
        await run(page.wait_text, "status", "connected as hana")
        await run(page.wait_line, "gus: before you came")
        earlier = (
            "return [...document.querySelectorAll('#log li.history')].map(li => li.textContent)"
        )
        assert any("before you came" in line for line in await run(page.script, earlier))
        # The link dies as a network's would: the server drops the connection.
        (web_peer,) = [peer for peer in server._hub.peers if isinstance(peer, WebConnection)]
        web_peer.raw.abort()
        await gus.send("while you were away")
        await run(page.wait_line, "what you missed follows")
        await run(page.wait_line, "gus: while you were away")
        lines = await run(page.lines)
        assert len([line for line in lines if "while you were away" in line]) == 1
        assert any("while you were away" in line for line in await run(page.script, earlier))
        assert await run(page.text, "status") == "connected as hana"
        await run(page.say, "back")
        message = await receive_kind(gus, "message")
        assert (message.sender, message.text) == ("hana", "back")
        # Away longer than the room's history: the page says how many are gone.
        (web_peer,) = [peer for peer in server._hub.peers if isinstance(peer, WebConnection)]
        web_peer.raw.abort()
        for n in range(5):
            await gus.send(f"missed {n}")
        await run(page.wait_line, "gus: missed 4")
        gap = await run(page.wait_line, "missed in lobby")
        assert "2 messages missed in lobby (no longer available)" in gap
        assert not [line for line in await run(page.lines) if "missed 1" in line]
        # A reload of the tab resumes too (the session is kept for this tab), where the
        # name would otherwise be held for its owner's return and refused.
        await run(driver.refresh)
        await gus.send("during the reload")
        await run(page.wait_line, "gus: during the reload")
        assert await run(page.text, "status") == "connected as hana"
        assert server.who() == ["gus", "hana"]
        await run(page.say, "/history 3")  # the room's last three: two not shown since
        await run(page.wait_line, "2 earlier messages above")
        lines = await run(page.lines)
        said = ("missed 3", "missed 4", "during the reload")
        order = [n for part in said for n, line in enumerate(lines) if part in line]
        assert len(order) == 3
        assert order == sorted(order)  # in the order they were said, not the order received
