"""Headless Chromium for the web tests and the docs' screenshot (selenium + chromedriver).

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Selenium is given
both paths, so it never tries to download a driver.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

__all__ = ["Page", "find_browser", "start_browser"]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Several windows chat with each other: none may be throttled as a background one.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--window-size=1000,700",
)


def find_browser() -> tuple[str, str] | None:
    """Paths of chromium and chromedriver, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_browser() -> tuple[webdriver.Chrome, tempfile.TemporaryDirectory[str]]:
    """A headless Chromium with a fresh profile (remove the directory after ``quit()``)."""
    found = find_browser()
    if found is None:
        raise RuntimeError("no chromium and chromedriver: apt-get install chromium chromium-driver")
    browser, driver = found
    profile = tempfile.TemporaryDirectory(prefix="chatcast-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile.name}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options), profile


class Page:
    """One browser window with the chat page; every call switches to it first."""

    def __init__(self, driver: WebDriver, handle: str) -> None:
        self.driver = driver
        self.handle = handle

    @classmethod
    def new(cls, driver: WebDriver, *, first: bool = False) -> Page:
        """The first window, or a new one."""
        if not first:
            driver.switch_to.new_window("window")
        return cls(driver, driver.current_window_handle)

    def _go(self) -> WebDriver:
        if self.driver.current_window_handle != self.handle:
            self.driver.switch_to.window(self.handle)
        return self.driver

    def open(self, url: str) -> None:
        self._go().get(url)
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete")

    def wait(self, condition: Callable[[WebDriver], Any], seconds: float = 10.0) -> Any:
        return WebDriverWait(self._go(), seconds, poll_frequency=0.05).until(condition)

    def type(self, *keys: str) -> None:
        """Type into whatever has the focus (as a keyboard-only user does)."""
        self._go().switch_to.active_element.send_keys(*keys)

    def focused(self) -> str:
        return str(self._go().switch_to.active_element.get_attribute("id"))

    def join(self, name: str, token: str | None = None) -> None:
        """Fill the form by keyboard: the name field has the focus; Enter submits."""
        self.wait(lambda d: self.focused() == "name")
        self.type(Keys.CONTROL, "a")
        if token is None:
            self.type(name, Keys.ENTER)
            return
        self.type(name, Keys.TAB, Keys.TAB)  # past the room, to the token
        self.wait(lambda d: self.focused() == "token")
        self.type(Keys.CONTROL, "a")
        self.type(token, Keys.ENTER)

    def say(self, text: str) -> None:
        """Type a line into the message box and press Enter."""
        box = self._go().find_element(By.ID, "text")
        box.send_keys(text, Keys.ENTER)

    def lines(self) -> list[str]:
        """The text of every line in the log."""
        return list(
            self._go().execute_script(
                "return [...document.querySelectorAll('#log li')].map(li => li.textContent)"
            )
        )

    def text(self, element_id: str) -> str:
        return str(
            self._go().execute_script(
                "return document.getElementById(arguments[0]).textContent", element_id
            )
        )

    def wait_line(self, part: str, seconds: float = 10.0) -> str:
        """The first log line containing ``part``, waiting for it."""
        found: list[str] = []

        def has(_: WebDriver) -> bool:
            found[:] = [line for line in self.lines() if part in line]
            return bool(found)

        try:
            self.wait(has, seconds)
        except Exception as exc:
            raise AssertionError(f"no line with {part!r} in {self.lines()!r}") from exc
        return found[0]

    def wait_text(self, element_id: str, part: str, seconds: float = 10.0) -> str:
        try:
            self.wait(lambda d: part in self.text(element_id), seconds)
        except Exception as exc:
            raise AssertionError(
                f"#{element_id} never had {part!r}: {self.text(element_id)!r}"
            ) from exc
        return self.text(element_id)

    def script(self, source: str, *args: Any) -> Any:
        return self._go().execute_script(source, *args)
