"""Take docs/web.png: the chat page in headless Chromium, mid-conversation.

Run from the repository root: ``python docs/screenshot.py`` (needs chromium, chromium-driver
and ``pip install -e '.[test]'``). The same browser and helpers as ``tests/test_web_browser.py``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatcast import BroadcastClient, BroadcastServer  # noqa: E402
from chatcast.web import WebGateway  # noqa: E402
from tests.browser import Page, start_browser  # noqa: E402


async def main() -> None:
    driver, profile = start_browser()
    try:
        async with (
            BroadcastServer("127.0.0.1", 0, join_grace=0.05) as server,
            WebGateway(server, port=0) as gateway,
            BroadcastClient("127.0.0.1", server.port, name="budi") as budi,
        ):
            page = Page.new(driver, first=True)
            await asyncio.to_thread(driver.set_window_size, 980, 560)
            await asyncio.to_thread(page.open, gateway.url)
            await asyncio.to_thread(page.join, "ani")
            await asyncio.to_thread(page.wait_text, "status", "connected as ani")
            await budi.send("halo semua! is the lab server up?")
            await asyncio.to_thread(page.wait_line, "halo semua")
            await asyncio.to_thread(page.say, "yes: open http://10.0.0.5:8081/ in a browser")
            await budi.send("works on my phone too", to="ani")
            await asyncio.to_thread(page.wait_line, "my phone")
            await server.broadcast("lab ends at 15:00; save your work")
            await asyncio.to_thread(page.wait_line, "lab ends")
            await asyncio.to_thread(page.say, "<b>this stays text</b>")
            await asyncio.to_thread(page.wait_text, "who", "budi")
            out = ROOT / "docs" / "web.png"
            await asyncio.to_thread(driver.save_screenshot, str(out))
            print(f"wrote {out}")
    finally:
        driver.quit()
        profile.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
