"""A real Chromium, headless, driven by Selenium through Debian's chromedriver.

The browser and driver come from apt (`chromium`, `chromium-driver`, installed by
scripts/test.sh); their paths are given explicitly so Selenium Manager never tries
to download a browser or driver. The console is recorded: :meth:`Browser.console_errors`
returns what a test must fail on (every SEVERE entry, except HTTP errors the test
expects, e.g. the 422 of a deliberately bad form).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = os.environ.get("GPUFLEET_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GPUFLEET_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
T = TypeVar("T")


class BrowserMissing(RuntimeError):
    pass


def check_installed() -> None:
    """Fail (not skip) with how to install, when the Debian packages are missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() or shutil.which(p))]
    if missing:
        raise BrowserMissing(f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
                             "(scripts/test.sh does: apt-get install chromium chromium-driver)")


class Browser:
    def __init__(self, base_url: str, artifacts: Path, width: int = 1400, height: int = 1000) -> None:
        check_installed()
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--lang=en-US", "--disable-extensions",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)
        self.base_url = base_url.rstrip("/")
        self.artifacts = artifacts
        artifacts.mkdir(parents=True, exist_ok=True)
        self.console: list[dict[str, Any]] = []
        self.shots: list[Path] = []

    def close(self) -> None:
        self.driver.quit()

    # -- navigation and lookup
    def open(self, path: str = "/") -> None:
        self.driver.get(self.base_url + path)

    def find(self, css: str, timeout: float = 20) -> WebElement:
        return self.wait(lambda: self._visible(css), timeout, f"a visible {css}")

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def _visible(self, css: str) -> WebElement | None:
        for el in self.driver.find_elements(By.CSS_SELECTOR, css):
            try:
                if el.is_displayed():
                    return el
            except StaleElementReferenceException:
                continue
        return None

    def click(self, css: str, timeout: float = 20) -> None:
        def attempt() -> bool:
            el = self._visible(css)
            if el is None or not el.is_enabled():
                return False
            try:
                el.click()
            except (StaleElementReferenceException, WebDriverException):
                return False
            return True
        self.wait(attempt, timeout, f"clicking {css}")

    def type(self, css: str, text: str, clear: bool = True) -> None:
        el = self.find(css)
        if clear:
            el.clear()
        el.send_keys(text)

    def text(self, css: str) -> str:
        el = self._visible(css)
        return el.text if el is not None else ""

    def wait(self, predicate: Callable[[], T], timeout: float = 20, what: str = "condition",
             interval: float = 0.25) -> T:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except StaleElementReferenceException:
                last = None
            if last:
                return last
            time.sleep(interval)
        shot = self.screenshot(f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:40]}")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {last!r}; "
                             f"screenshot {shot}; console: {self.read_console()[-5:]}")

    def wait_text(self, css: str, pattern: str, timeout: float = 60) -> str:
        rx = re.compile(pattern)
        return self.wait(lambda: (t := self.text(css)) and rx.search(t) and t, timeout, f"{css} ~ /{pattern}/")

    # -- evidence
    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path

    def resize(self, width: int, height: int) -> None:
        self.driver.set_window_size(width, height)

    def read_console(self) -> list[dict[str, Any]]:
        self.console.extend(self.driver.get_log("browser"))
        return self.console

    def console_errors(self, expected_http: Iterable[tuple[str, int]] = ()) -> list[str]:
        """SEVERE console entries, less "Failed to load resource" for (path fragment, status)
        pairs the test provoked on purpose."""
        allowed = list(expected_http)
        errors = []
        for entry in self.read_console():
            if entry.get("level") != "SEVERE":
                continue
            msg = str(entry.get("message", ""))
            m = re.search(r"(\S+) - Failed to load resource: the server responded with a status of (\d+)", msg)
            if m and any(frag in m.group(1) and int(m.group(2)) == status for frag, status in allowed):
                continue
            errors.append(msg)
        return errors
