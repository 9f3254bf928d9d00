"""A real browser for the page tests: Debian's Chromium, headless, driven by Selenium.

``.ci/run`` installs ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``); nothing is downloaded at test time (Selenium Manager stays
offline: the driver and the browser are given by path). Without them the browser tests skip
with the remedy, except in CI (``CI`` set), where they fail.

Every page a test looks at can be kept as a PNG with :meth:`Browser.screenshot`: in
``build/screenshots/`` (git-ignored; ``OBDCR_SCREENSHOTS`` chooses another folder). The README
shows copies of three of them from ``docs/screenshots/``.

The sandbox's HTTPS servers present certificates of the sandbox CA, which this throwaway
browser profile does not trust: it runs with ``--ignore-certificate-errors`` (a presenter's
browser trusts ``instance/directory/ca-bundle.pem`` instead, or is told to go on once).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("OBDCR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("OBDCR_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = Path(
    os.environ.get("OBDCR_SCREENSHOTS")
    or Path(__file__).resolve().parent.parent / "build" / "screenshots"
)
#: how the environment probe starts Chromium on this kind of machine: no sandbox (root), no
#: GPU, and no background connection to Google's hosts (the network is closed)
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
    "--window-size=1280,1000",
)


def require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if not missing:
        return
    message = f"no {' nor '.join(missing)}: apt-get install chromium chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """A thin layer over a Selenium ``WebDriver``: what the page tests say, not how."""

    def __init__(self, driver) -> None:
        self.driver = driver

    def get(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return self.driver.current_url

    @property
    def title(self) -> str:
        return self.driver.title

    def text(self, selector: str = "body") -> str:
        """The visible text of the first element matching the CSS ``selector`` (found again if
        the page was replaced between finding and reading it)."""
        from selenium.common.exceptions import StaleElementReferenceException

        for attempt in range(3):
            try:
                return self.find(selector).text
            except StaleElementReferenceException:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def wait_for_text(self, selector: str, text: str, timeout: float = 10) -> str:
        """The text of ``selector`` once it contains ``text``. After a click, the element may
        still be the previous page's (a flash message of the same name): waiting for the
        element alone reads the old page, or an element the new page has just replaced."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        located = (By.CSS_SELECTOR, selector)
        try:
            WebDriverWait(self.driver, timeout).until(
                expected_conditions.text_to_be_present_in_element(located, text)
            )
        except TimeoutException:  # the caller's assertion shows what the page says instead
            pass
        return self.text(selector)

    def find(self, selector: str, timeout: float = 10):
        """The first element matching ``selector``, waiting for it (a click's page may still be
        loading: reading at once raced the next page in CI)."""
        return self.wait_for(selector, timeout)

    def find_all(self, selector: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def fill(self, selector: str, value: str) -> None:
        element = self.find(selector)
        element.clear()
        element.send_keys(value)

    def click(self, selector: str) -> None:
        self.find(selector).click()

    def wait_for(self, selector: str, timeout: float = 10):
        """The first element matching ``selector``, once it is there (the page may still be
        loading after a click)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector))
        )

    def wait_for_url(self, fragment: str, timeout: float = 10) -> str:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout).until(lambda d: fragment in d.current_url)
        return self.driver.current_url

    def screenshot(self, name: str) -> Path:
        """The whole page as ``<SCREENSHOTS>/<name>.png``; returns the path."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        # the full page, not only the window: as tall as the document
        height = self.driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
        )
        self.driver.set_window_size(1280, max(700, min(int(height) + 120, 4000)))
        self.driver.save_screenshot(os.fspath(path))
        return path


def start_browser() -> tuple[Browser, str]:
    """Chromium with a new empty profile; returns the browser and the profile folder."""
    require_chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="obdcr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return Browser(driver), profile


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A fresh headless Chromium (its own empty profile: no cookie from another test)."""
    session, profile = start_browser()
    try:
        yield session
    finally:
        session.driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
