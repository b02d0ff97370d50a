"""The web UI: its logic (Studio) directly, then the real app in a headless Chromium."""

import os
import shutil
import socket
import time

import pytest
from PIL import Image

from fouriscale.frontend.loading import UserError
from fouriscale.frontend.outputs import Manifest, read_settings
from fouriscale.frontend.ui import CUSTOM, SIZE_CHOICES, Studio

DEFAULTS = dict(negative="", size=SIZE_CHOICES[0], width=64, height=64, steps=3, guidance=7.5, seed=5, freeu=True,
                amp_guidance=False, low_pass=True, attention_guidance=True, pad_then_crop=True, progressive=True,
                compare=False)  # fmt: skip


def _ask(studio, model, **changes):
    return studio.generate(prompt=changes.pop("prompt", "a red cat"), model=model, **dict(DEFAULTS, **changes))


@pytest.fixture(scope="module")
def studio(tiny_dirs, tmp_path_factory):
    return Studio(out_dir=str(tmp_path_factory.mktemp("ui-out")), device="cpu")


def test_generate_writes_the_cli_format_and_keeps_the_model(studio, tiny_dirs):
    result = _ask(studio, tiny_dirs["sd1"])
    settings = read_settings(result["image"])
    assert Image.open(result["image"]).size == (64, 64) and result["direct"] is None
    assert (settings["seed"], settings["method"], settings["steps"]) == (5, "fouriscale", 3)
    assert "parameters" in Image.open(result["image"]).text
    assert "dilation 2" in result["info"]
    loaded = studio.loaded
    again = _ask(studio, tiny_dirs["sd1"], compare=True, seed=6)
    assert studio.loaded is loaded  # loaded once, kept
    assert read_settings(again["direct"])["method"] == "direct"
    assert Image.open(again["direct"]).tobytes() != Image.open(again["image"]).tobytes()
    assert len(Manifest(studio.out).entries()) == 3


def test_progress_is_reported(studio, tiny_dirs):
    seen = []
    studio.generate("a cat", model=tiny_dirs["sd1"], progress=lambda value, desc="": seen.append(value),
                    **DEFAULTS)  # fmt: skip
    assert len(seen) == 3 and seen[-1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(size=CUSTOM, width=65), "multiple of 8"),
        (dict(size=CUSTOM, width="wide"), "whole number"),
        (dict(steps=0), "between 1 and"),
        (dict(seed=-1), "between 0 and"),
        (dict(prompt="  "), "enter a prompt"),
        (dict(model=""), "enter a model"),
        (dict(model="/no/such/model"), "no such file"),
    ],
)
def test_bad_input_is_a_message(studio, tiny_dirs, changes, message):
    model = changes.pop("model", tiny_dirs["sd1"])
    with pytest.raises(UserError, match=message):
        _ask(studio, model, **changes)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        if os.environ.get("FOURISCALE_REQUIRE_BROWSER"):
            pytest.fail("headless browser test needs chromium, chromedriver and selenium")
        pytest.skip("chromium, chromedriver or selenium not installed")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = chromium
    return webdriver.Chrome(service=Service(driver), options=options)


def test_app_in_a_headless_browser(tiny_dirs, tmp_path):
    pytest.importorskip("gradio")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from fouriscale.frontend.ui import launch

    port = _free_port()
    browser = _browser()
    app = launch(model=tiny_dirs["sd1"], port=port, device="cpu", out_dir=str(tmp_path / "out"), block=False)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(browser, 90)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#generate"))
        assert browser.title == "FouriScale"
        browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a red cat")
        steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("3", Keys.TAB)
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#result img"))
        assert browser.find_element(By.CSS_SELECTOR, "#result img").get_attribute("src")
        wait.until(lambda b: list((tmp_path / "out").glob("*.png")))

        # an invalid custom size is reported in the page, and the app keeps serving
        size = browser.find_element(By.CSS_SELECTOR, "#size input")
        size.click()
        size.send_keys(Keys.CONTROL, "a")
        size.send_keys(CUSTOM, Keys.ENTER)
        width = browser.find_element(By.CSS_SELECTOR, "#width input")
        width.send_keys(Keys.CONTROL, "a")
        width.send_keys("65", Keys.TAB)
        time.sleep(0.5)
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda b: "not a multiple of 8" in b.page_source)
        assert browser.find_elements(By.CSS_SELECTOR, "#generate")
    finally:
        browser.quit()
        app.close()
