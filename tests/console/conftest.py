"""The browser fixtures of the console tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import browser_fixture, screenshots_folder
from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """A fresh headless Chromium (its own profile folder), quit at teardown."""
    yield from browser_fixture(tmp_path)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the screenshots go."""
    return screenshots_folder(tmp_path)
