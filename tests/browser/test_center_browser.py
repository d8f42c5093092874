"""The preference center in a real browser (issue 13, item 8): headless
Chromium (Debian's package, driven through its ChromeDriver with selenium) opens
the link from an email the loopback SMTP server captured, switches a category
off, saves; the next email of that category is suppressed with the preference's
reason. The test saves a screenshot of the saved page (``TIDINGS_TEST_SCREENSHOT_DIR``,
else the test's temporary folder); docs/images/preference-center.png is one."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import pytest

from policy.types import UserProfile
from tests.integration.helpers import engine_config, send_email, serving

pytestmark = pytest.mark.integration

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SECRET = "browser-test-secret-0123456789"
PUBLIC = "https://notify.example.test"


def browser():
    """Headless Chromium, no network but loopback (the flags keep it from calling
    home); skipped where it is not installed, except under CI, where it must be."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed: install.sh installs Debian's chromium and chromium-driver")
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers on the internet
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=420,1100"):  # phone width: the page must work there
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


@pytest.fixture
async def engine(nats_url, database_url, ray_address, smtp, tmp_path):
    cfg = engine_config(nats_url, database_url, str(tmp_path / "home"), smtp_port=smtp.port, channels=("email",),
                        overrides={"engagement": {"opens": False, "clicks": False, "base_url": PUBLIC,
                                                  "secret": SECRET}})
    async with serving(cfg, database_url, [UserProfile(user_id="web-1", addresses={"email": "web-1@example.test"})]) \
            as eng:
        yield eng


async def send(engine, category: str) -> str:
    return await send_email(engine, "web-1", category, "New jobs", "Three new jobs")


def use_the_page(url: str, shot: Path) -> str:
    """What a person does: open the link, untick job alerts by email, save.
    Returns the text of the page the save answered."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(url)
        box = driver.find_element(By.ID, "on.job_alerts.email")
        label = box.find_element(By.XPATH, "./ancestor::label")  # the box inside its label
        assert box.is_selected() and label.text.strip() == "email"  # on, and named for a screen reader
        label.click()  # what a thumb taps: the label toggles its box
        assert not box.is_selected()
        driver.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
        # the answer to the post replaced the page; chromedriver may answer a check made while
        # the old document goes with an "inspector error" instead of "stale": look again then
        WebDriverWait(driver, 20, ignored_exceptions=(WebDriverException,)).until(ec.staleness_of(box))
        text = driver.find_element(By.TAG_NAME, "body").text
        assert not driver.find_element(By.ID, "on.job_alerts.email").is_selected()
        driver.save_screenshot(str(shot))
        return text
    finally:
        driver.quit()


async def test_a_person_turns_a_category_off_in_chromium_and_the_next_email_is_suppressed(engine, smtp, tmp_path):
    nid = await send(engine, "job_alerts")
    mail = next(m for m in smtp.messages if m.notification_id == nid)
    link = re.search(r"Manage your preferences: https://notify\.example\.test(/p/[A-Za-z0-9_-]+)", mail.text)
    assert link is not None, mail.text
    # the public base URL is the deployment's; here the engine answers on loopback
    shot_dir = Path(os.environ.get("TIDINGS_TEST_SCREENSHOT_DIR") or tmp_path)
    shot = shot_dir / "preference-center.png"
    text = await asyncio.get_running_loop().run_in_executor(None, use_the_page, engine.base_url + link.group(1),
                                                            shot)
    assert "Saved." in text
    assert shot.stat().st_size > 5000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    row = await engine.pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1",
                                     uuid.UUID(await send(engine, "job_alerts")))
    assert (row["status"], row["reason"]) == ("suppressed", "pref.category_off")
    actor = await engine.pool.fetchval("SELECT performed_by FROM preference_audit_log WHERE user_id = 'web-1' "
                                       "AND action LIKE 'preferences.%' ORDER BY id DESC LIMIT 1")
    assert actor == "user:web-1(center)"
