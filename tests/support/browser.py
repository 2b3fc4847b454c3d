"""Headless Chromium for the console's browser tests (Debian's chromium and
chromium-driver), and the mark that skips those tests where it is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             "/usr/bin/chromium") if p and Path(p).exists()), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver")
                     if p and Path(p).exists()), None)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")
WAIT_S = 20.0
"""Longest a page is waited for."""

requires_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (Debian packages chromium and chromium-driver: "
    "/usr/bin/chromium, /usr/bin/chromedriver)")


def open_browser(profile: Path) -> WebDriver:
    """A fresh headless Chromium with its own profile folder."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def browser_fixture(tmp_path: Path) -> Iterator[WebDriver]:
    """Body of the ``browser`` fixture: a fresh browser, quit at teardown."""
    driver = open_browser(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def screenshots_folder(tmp_path: Path) -> Path:
    """Where a test's screenshots go: ``$EDGECLOUD_SCREENSHOTS``, else the test's
    ``tmp_path/screenshots`` (printed, so a failing run says where to look)."""
    folder = Path(os.environ.get("EDGECLOUD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


class ConsolePage:
    """The console in the browser: what every page test does with it. Every method
    blocks (run it in a thread)."""

    def __init__(self, driver: WebDriver, url: str, screenshots: Path) -> None:
        self.driver = driver
        self.url = url
        self.screenshots = screenshots

    def wait(self, condition, what: str):
        """Wait until ``condition(driver)`` is truthy (pages are redrawn as they poll)."""
        return WebDriverWait(self.driver, WAIT_S, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(
            condition, f"timed out waiting for {what}")

    def submit_token(self, token: str) -> None:
        """Type ``token`` into the login form and send it."""
        field = self.wait(lambda d: d.find_element(By.ID, "token"), "the login form")
        field.clear()
        field.send_keys(token)
        self.driver.find_element(By.ID, "login-button").click()

    def log_out(self) -> None:
        self.driver.find_element(By.ID, "logout").click()
        self.wait(lambda d: d.find_element(By.ID, "login").is_displayed(), "the login form")

    def shot(self, name: str) -> None:
        """A screenshot of the page, ``NAME.png`` in the screenshots folder."""
        assert self.driver.save_screenshot(str(self.screenshots / f"{name}.png"))
