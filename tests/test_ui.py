"""The web UI (frontend/ui.py): its logic (Studio) directly, the running app through Gradio's API client (typed
input, start-up problems, its URL), a subprocess smoke test, and the real page in a headless Chromium."""

import os
import shutil
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

import fouriscale
from fouriscale.frontend.errors import UserError
from fouriscale.frontend.outputs import Manifest, read_settings
from fouriscale.frontend.ui import CUSTOM, NATIVE, Studio, check_address
from fouriscale.testing import tiny_pipeline
from frontend_helpers import api_render, cli, env, error_line

DEFAULTS = dict(
    negative="",
    width=64,
    height=64,
    steps=2,
    guidance=None,
    seed=5,
    freeu=True,
    amp_guidance=False,
    low_pass=True,
    attention_guidance=True,
    pad_then_crop=True,
    progressive=True,
    compare=False,
)


def _ask(studio, model="tiny:sd1", **changes):
    return studio.generate(prompt=changes.pop("prompt", "a red cat"), model=model, **dict(DEFAULTS, **changes))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio(out_dir=str(tmp_path_factory.mktemp("ui-out")), device="cpu")


@pytest.fixture(scope="module")
def api_pipe():
    pipe = tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    return fouriscale.apply_fouriscale(pipe)


def test_generate_writes_the_cli_format_and_keeps_the_model(studio, api_pipe):
    result = _ask(studio)
    settings = read_settings(result["image"])
    assert (settings["seed"], settings["method"], settings["steps"], settings["guidance_scale"]) == (
        5,
        "fouriscale",
        2,
        7.5,
    )
    assert "parameters" in Image.open(result["image"]).text and result["direct"] is None
    assert (np.asarray(Image.open(result["image"]).convert("RGB")) == api_render(api_pipe, "a red cat", seed=5)).all()
    assert "dilation 2" in result["info"] and "guidance 7.5" in result["info"]
    loaded = studio.loaded
    again = _ask(studio, compare=True, seed=6)
    assert studio.loaded is loaded  # loaded once, kept
    assert read_settings(again["direct"])["method"] == "direct"
    with fouriscale.disabled(api_pipe):
        stock = api_render(api_pipe, "a red cat", seed=6)
    assert (np.asarray(Image.open(again["direct"]).convert("RGB")) == stock).all()
    assert sorted(e["file"] for e in Manifest(studio.out).entries()) == sorted(p.name for p in studio.out.glob("*.png"))


def test_guidance_defaults_by_family_as_in_the_cli(studio):
    result = _ask(studio, model="tiny:sdxl")
    assert read_settings(result["image"])["guidance_scale"] == fouriscale.FAMILIES["sdxl"].guidance_scale == 5.0
    assert read_settings(_ask(studio, model="tiny:sdxl", guidance=3)["image"])["guidance_scale"] == 3.0


def test_progress_is_reported(studio):
    seen = []
    _ask(studio, progress=lambda value, desc="": seen.append(value))
    assert len(seen) == 2 and seen[-1] == pytest.approx(1.0)


def test_size_choices_fill_the_fields(studio):
    assert studio.size_for(NATIVE, "tiny:sd1") == (64, 64)  # twice the tiny model's 32 px
    assert studio.size_for("2048x1024", "tiny:sd1") == (1024, 2048)
    assert studio.size_for(CUSTOM, "tiny:sd1") is None and studio.size_for(NATIVE, "/no/such/model") is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(width=65), "multiple of 2 pixels"),
        (dict(width=64.5), "width must be a whole number, got 64.5"),
        (dict(width="wide"), "width must be a whole number"),
        (dict(width=None), "width must be a whole number"),
        (dict(height=True), "height must be a whole number"),
        (dict(width=20000, height=20000), "size limit"),
        (dict(steps=0), "from 1 to 150"),
        (dict(seed=1.5), "seed must be a whole number"),
        (dict(seed="abc"), "seed must be a whole number"),
        (dict(seed=-1), "from 0 to"),
        (dict(guidance=-5), "from 0 to 100"),
        (dict(guidance=1e308), "from 0 to 100"),
        (dict(guidance="inf"), "finite number"),
        (dict(freeu="no"), "freeu must be true or false"),
        (dict(compare=1), "compare must be true or false"),
        (dict(prompt="  "), "enter a prompt"),
        (dict(prompt=None), "enter a prompt"),
        (dict(model=""), "enter a model"),
        (dict(model=3), "must be text"),
        (dict(model="/no/such/model"), "no such file"),
    ],
)
def test_bad_input_is_a_message(studio, changes, message, monkeypatch):
    import fouriscale.frontend.ui as ui

    monkeypatch.setattr(ui, "render", lambda *a, **k: pytest.fail("rendered despite bad input"))
    with pytest.raises(UserError, match=message):
        _ask(studio, model=changes.pop("model", "tiny:sd1"), **changes)


def test_the_sdxl_aspect_message_names_no_cli_option(studio):
    with pytest.raises(UserError) as info:
        _ask(studio, model="tiny:sdxl", width=512, height=32)
    assert "aspect ratios SDXL was trained on" in str(info.value) and "--base-size" not in str(info.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "0"], "--port 0: choose a port from 1 to 65535"),
        (["--port", "70000"], "from 1 to 65535"),
        (["--host", "10.255.255.1"], "not an address of this machine"),
        (["--host", "no-such-host.invalid"], "not an address of this machine"),
        (["--public", "--host", "192.168.0.1"], "not both"),
    ],
)
def test_start_up_problems_are_one_line(tmp_path, capsys, args, message):
    assert cli("ui", "--out", tmp_path, *args) == 2
    assert message in error_line(capsys)


def test_port_in_use_and_out_not_a_folder(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli("ui", "--port", port, "--out", tmp_path) == 2
        assert f"--port {port}: already in use" in error_line(capsys)
    file = tmp_path / "file"
    file.write_text("x")
    assert cli("ui", "--port", _free_port(), "--out", file) == 2
    assert "is a file, not a folder" in error_line(capsys)
    with pytest.raises(UserError):
        check_address("127.0.0.1", True)


def test_the_api_refuses_typed_input_with_a_message(tmp_path, capsys, monkeypatch):
    """Gradio's own API client: wrong types reach our checks (not Gradio's generic error)."""
    pytest.importorskip("gradio")
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    from gradio_client import Client

    from fouriscale.frontend.ui import launch

    port = _free_port()
    app = launch(model="tiny:sd1", port=port, device="cpu", out_dir=str(tmp_path / "out"), block=False)
    try:
        assert f"serving on http://127.0.0.1:{port}" in capsys.readouterr().out
        assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"  # analytics off unless asked for
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        good = ["a cat", "", "tiny:sd1", 64, 64, 2, None, 5, True, False, True, True, True, True, False]
        image, slider, download, info = client.predict(*good, api_name="/generate")
        assert image["visible"] is True and slider["visible"] is False and "64x64, 2 steps, seed 5" in info
        for index, value, message in (
            (3, "64.5", "width must be a whole number"),
            (7, "abc", "seed must be"),
            (8, "no", "freeu must be true or false"),
            (6, -5, "from 0 to 100"),
        ):
            args = list(good)
            args[index] = value
            with pytest.raises(Exception, match=message):
                client.predict(*args, api_name="/generate")
        _, slider, _, _ = client.predict(*good[:-1], True, api_name="/generate")
        assert slider["visible"] is True and len(slider["value"]) == 2  # comparing: one view, the slider
    finally:
        app.close()


def test_smoke_ui_prints_its_url_and_serves(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fouriscale",
            "ui",
            "--model",
            "tiny:sd1",
            "--port",
            str(port),
            "--out",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"fouriscale ui: serving on http://127.0.0.1:{port} (Ctrl+C to stop)", (
            line + proc.stderr.read() if proc.poll() is not None else line
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"FouriScale" in page.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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


def _field(browser, elem_id):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")


def test_app_in_a_headless_browser(tmp_path):
    pytest.importorskip("gradio")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from fouriscale.frontend.ui import launch

    port = _free_port()
    browser = _browser()
    app = launch(model="tiny:sd1", port=port, device="cpu", out_dir=str(tmp_path / "out"), block=False)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(browser, 90)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#generate"))
        assert browser.title == "FouriScale"
        # the size fields show the size that will be made: 2x native of the tiny model
        assert (_field(browser, "width").get_attribute("value"), _field(browser, "height").get_attribute("value")) == (
            "64",
            "64",
        )
        browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a red cat")
        steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("2", Keys.TAB)
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#result img"))
        wait.until(lambda b: list((tmp_path / "out").glob("*.png")))
        assert not browser.find_elements(By.CSS_SELECTOR, "#slider img")  # one view: the image

        # editing a size field switches the dropdown to "custom"; an invalid size is a message in the page
        width = _field(browser, "width")
        width.send_keys(Keys.CONTROL, "a")
        width.send_keys("65", Keys.TAB)
        wait.until(lambda b: _field(b, "size").get_attribute("value") == CUSTOM)
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda b: "multiple of 2 pixels" in b.page_source)
        assert browser.find_elements(By.CSS_SELECTOR, "#generate")
    finally:
        browser.quit()
        app.close()
