"""Debian's Chromium, headless, driven through Playwright: the one way tests launch it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
from playwright.async_api import Browser, async_playwright

# Playwright is given this executable (executable_path); it never downloads a browser here.
CHROMIUM: Final = Path("/usr/bin/chromium")
# What a headless Chromium needs in a container, and nothing that phones home.
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

requires_chromium: Final = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: `make test` installs Debian's chromium package",
)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A running Chromium, closed when the block ends."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()
