"""The API documentation page (``/docs``, issue 14 item 1) in headless Chromium:
Swagger UI, from the files the engine serves itself, renders one entry per
operation of ``/openapi.json``; the page asks for nothing from another origin."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.browser.test_center_browser import browser
from tests.integration.helpers import engine_config, serving

pytestmark = pytest.mark.integration


def render(url: str) -> tuple[int, list[str], list[str]]:
    """The number of operations the page shows, the resources it loaded and the browser's console errors."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(url + "/docs")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
        shown = len(driver.find_elements(By.CSS_SELECTOR, ".opblock"))
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        errors = [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        return shown, loaded, errors
    finally:
        driver.quit()


async def test_the_docs_page_renders_every_operation_in_chromium(nats_url, database_url, ray_address, tmp_path):
    # 127.0.0.2: on "localhost" or 127.0.0.1 Swagger UI would skip what it does
    # on any other host (asking validator.swagger.io about the document)
    cfg = engine_config(nats_url, database_url, str(tmp_path / "home"), channels=("webhook",),
                        overrides={"http": {"host": "127.0.0.2"}})
    async with serving(cfg, database_url) as engine:
        url = engine.base_url.replace("127.0.0.1", "127.0.0.2")
        async with aiohttp.ClientSession() as s, s.get(url + "/openapi.json") as r:
            doc = await r.json()
        operations = sum(len(ops) for ops in doc["paths"].values())
        shown, loaded, errors = await asyncio.get_running_loop().run_in_executor(None, render, url)
    assert shown == operations
    origin = urlsplit(url).netloc
    assert loaded and all(urlsplit(u).netloc == origin for u in loaded), loaded
    assert not errors, errors
