"""The web chat page in a real headless browser: Debian's chromium, driven by Selenium through Debian's
chromedriver, against a live server on 127.0.0.1 (a tiny random model: the page is plumbing). A person sends a
message, sees the reply and which adapter version wrote it, sends a follow-up, sees the sample counted, and sees
the reply marked as learned once the update is published.

Needs `scripts/install_test_browser.sh` (apt-get install chromium chromium-driver); without apt the test skips and
says so. Slow: a server and a browser."""

import shutil
import tempfile

import pytest

from sdpo_interactions.testing.live_server import API_KEY, LiveServer

pytestmark = pytest.mark.slow
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromedriver are not installed: run scripts/install_test_browser.sh "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -r "
                                    "requirements-dev.txt")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="sdpo-live-browser-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    yield session
    session.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    settings = ("--max_completion_tokens", "8", "--monitor_probe_tokens", "8", "--lora_r", "4", "--lora_alpha", "8",
                "--samples_per_update", "1", "--min_seconds_between_updates", "0",
                # a random model's answer lengths are noise: the length monitor must not reject the one update
                "--monitor_min_length_ratio", "0", "--monitor_max_length_ratio", "1e9")
    with LiveServer(tiny_model_dir, tmp_path / "data", tmp_path / "server.log",
                    *settings) as running:
        yield running


def test_a_person_chats_sees_the_version_and_sees_the_reply_learned(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    browser.get(server.url + "/")
    browser.find_element(By.ID, "key").send_keys(API_KEY)
    browser.find_element(By.ID, "user").send_keys("browser-person")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: "served by adapter shared v0" in d.find_element(By.ID, "stats").text)

    def send(text: str) -> None:
        box = browser.find_element(By.ID, "message")
        box.send_keys(text)
        browser.find_element(By.ID, "send").click()

    send("Hello! What can you do?")
    meta = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .meta"))
    assert "written by adapter shared v0" in meta[0].text
    reply = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[0].text
    assert reply.strip()
    send("Too long. Shorter, please.")
    wait.until(lambda d: d.find_element(By.ID, "stats").get_attribute("data-total") == "1")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2
    learned = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-sample-state='trained']"))
    assert "learned in version 1" in learned[0].text
    assert browser.find_element(By.ID, "stats").get_attribute("data-trained") == "1"
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None  # no error shown
