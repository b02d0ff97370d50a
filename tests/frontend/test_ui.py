"""The web UI (frontend/ui.py): its logic (Studio) directly, the running app through Gradio's API client (typed
input, start-up problems, its URL), a subprocess smoke test, and the real page in a headless Chromium."""

import os
import shutil
import signal
import socket
import subprocess
import urllib.request

import numpy as np
import pytest
from PIL import Image

import fouriscale
from fouriscale.frontend.cli.dispatch import INTERRUPTED
from fouriscale.frontend.errors import UserError
from fouriscale.frontend.files import read_settings
from fouriscale.frontend.folder import Manifest
from fouriscale.frontend.ui import CUSTOM, NATIVE, Studio, check_address
from fouriscale.testing import tiny_pipeline
from support.frontend import api_render, as_array, cli, error_line, generator, start_cli, write_mask, write_picture

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
    # the same request again: the image the folder holds (identity is the settings, as in a batch), not a copy
    same = _ask(studio, progress=lambda value, desc="": pytest.fail("rendered again"))
    assert same["image"] == result["image"] and "not rendered again" in same["info"]
    keys = [e["key"] for e in Manifest(studio.out).entries()]
    assert len(keys) == len(set(keys))


def test_guidance_defaults_by_family_as_in_the_cli(studio):
    result = _ask(studio, model="tiny:sdxl")
    assert read_settings(result["image"])["guidance_scale"] == fouriscale.FAMILIES["sdxl"].guidance_scale == 5.0
    assert read_settings(_ask(studio, model="tiny:sdxl", guidance=3)["image"])["guidance_scale"] == 3.0


def test_a_prompt_the_text_encoder_cuts_is_noted(studio):
    result = _ask(studio, prompt="a cat " * 20, seed=11)
    assert "is longer than the text encoder's 77 tokens and is cut after" in result["info"]


def test_progress_is_reported(studio):
    seen = []
    _ask(studio, seed=7, progress=lambda value, desc="": seen.append(value))
    assert len(seen) == 2 and seen[-1] == pytest.approx(1.0)


def test_size_choices_fill_the_fields(studio):
    assert studio.size_for(NATIVE, "tiny:sd1") == (64, 64)  # twice the tiny model's 32 px
    assert studio.size_for("2048x1024", "tiny:sd1") == (1024, 2048)
    assert studio.size_for(CUSTOM, "tiny:sd1") is None and studio.size_for(NATIVE, "/no/such/model") is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(width=65), "multiple of 8 pixels"),
        (dict(width=68), "multiple of 8 pixels"),
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
    import fouriscale.frontend.ui.studio as ui

    monkeypatch.setattr(ui, "render_images", lambda *a, **k: pytest.fail("rendered despite bad input"))
    with pytest.raises(UserError, match=message):
        _ask(studio, model=changes.pop("model", "tiny:sd1"), **changes)


def test_library_messages_name_no_setting_the_page_lacks(studio):
    """The library's remedies through settings the page does not offer (a base size, lifting the size limit) are
    left out; the rest of the message stays."""
    with pytest.raises(UserError) as info:
        _ask(studio, model="tiny:sdxl", width=512, height=32)
    message = str(info.value)
    assert message.endswith("choose a size closer to square") and "base" not in message
    with pytest.raises(UserError) as info:
        _ask(studio, width=20000, height=20000)
    message = str(info.value)
    assert message.endswith("choose a smaller size") and "lift" not in message and "size_limit" not in message


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
        good += [None, None, None, "", None, None, False, ""]  # no pictures in, no two-pass, no memory budget
        image, slider, shown, download, info = client.predict(*good, api_name="/generate")
        assert image["visible"] is True and slider["visible"] is False and "64x64, 2 steps, seed 5" in info
        assert shown["visible"] is False
        for index, value, message in (
            (3, "64.5", "width must be a whole number"),
            (7, "abc", "seed must be"),
            (8, "no", "freeu must be true or false"),
            (6, -5, "from 0 to 100"),
            (22, "12 parsecs", "the memory budget: '12 parsecs' has an unknown unit"),
            (22, 5.5, "the memory budget must be text such as 12GB"),
        ):
            args = list(good)
            args[index] = value
            with pytest.raises(Exception, match=message):
                client.predict(*args, api_name="/generate")
        comparing = good[:14] + [True] + good[15:]
        _, slider, _, _, _ = client.predict(*comparing, api_name="/generate")
        assert slider["visible"] is True and len(slider["value"]) == 2  # comparing: one view, the slider
        from gradio_client import handle_file

        picture = write_picture(tmp_path / "in.png", 32, 32, seed=1)
        with_picture = comparing[:15] + [handle_file(picture), 0.5] + comparing[17:]
        _, slider, shown, _, info = client.predict(*with_picture, api_name="/generate")
        assert slider["visible"] is True and shown["visible"] is True  # input, direct and FouriScale
        # the comparing request added a direct image beside the first request's (same settings); this one is new
        assert (tmp_path / "out" / "00000-5-a-cat-direct.png").is_file()
        settings = read_settings(next(p for p in (tmp_path / "out").glob("*.png") if p.name.startswith("00001-")))
        assert settings["inputs"]["strength"] == 0.5 and settings["inputs"]["init_image"]["size"] == [32, 32]
    finally:
        app.close()


def test_smoke_ui_prints_its_url_and_serves(tmp_path):
    port = _free_port()
    args = ["ui", "--model", "tiny:sd1", "--port", port, "--out", tmp_path / "out"]
    proc = start_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"fouriscale ui: serving on http://127.0.0.1:{port} (Ctrl+C to stop)", (
            line + proc.stderr.read() if proc.poll() is not None else line
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"FouriScale" in page.read()
        proc.send_signal(signal.SIGINT)  # Ctrl+C: one line and exit status 130, as every command (issue 24: was 0)
        assert proc.wait(timeout=60) == 130
        assert proc.stderr.read().strip().splitlines() == [INTERRUPTED["ui"]]
        assert not (tmp_path / "out").exists()  # nothing rendered: no folder made
    finally:
        if proc.poll() is None:
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
        wait.until(lambda b: "multiple of 8 pixels" in b.page_source)
        assert browser.find_elements(By.CSS_SELECTOR, "#generate")
        width = _field(browser, "width")
        width.send_keys(Keys.CONTROL, "a")
        width.send_keys("64", Keys.TAB)

        # pictures in: an uploaded input picture runs img2img, and the page shows the input beside the result
        picture = write_picture(tmp_path / "wide.png", 48, 32, seed=3)
        browser.find_element(By.CSS_SELECTOR, "#pictures-in .label-wrap").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#init-image input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#init-image input[type=file]").send_keys(picture)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#init-image img"))
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#input-view img"))
        wait.until(lambda b: "centre-cropped from 48x32" in b.page_source)
        made = [read_settings(p) for p in (tmp_path / "out").glob("*.png")]
        assert [(m["inputs"]["init_image"]["size"], m["inputs"]["strength"]) for m in made if "inputs" in m] == [
            ([48, 32], 0.6)
        ]
        # a mask moves the strength slider to the inpainting default; the ControlNet scale field shows its default
        strength = browser.find_element(By.CSS_SELECTOR, "#strength input[type=number]")
        assert strength.get_attribute("value") == "0.6"
        assert _field(browser, "control-scale").get_attribute("value") == "1"
        browser.find_element(By.CSS_SELECTOR, "#mask input[type=file]").send_keys(
            write_mask(tmp_path / "m.png", 48, 32)
        )
        wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, "#strength input[type=number]").get_attribute("value") == "1"
        )
        # another model family: the guidance field follows it (the user has not typed one)
        model = browser.find_element(By.CSS_SELECTOR, "#model textarea, #model input")
        model.send_keys(Keys.CONTROL, "a")
        model.send_keys("tiny:sdxl", Keys.TAB)
        wait.until(lambda b: _field(b, "guidance").get_attribute("value") == "5")
    finally:
        browser.quit()
        app.close()


@pytest.mark.skipif(not os.environ.get("FOURISCALE_UI_SCREENSHOT"), reason="only when asked for the README's picture")
def test_app_screenshot_in_a_headless_browser(tmp_path):
    """The README's picture of the page: ``FOURISCALE_UI_SCREENSHOT=docs/ui.png python -m pytest
    tests/frontend/test_ui.py -k screenshot`` renders a comparison on the tiny model at 96x96 in the real page and saves
    the whole page there."""
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
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#generate"))
        browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("an astronaut riding a horse, detailed")
        for elem_id, value in (("width", "96"), ("height", "96")):
            field = _field(browser, elem_id)
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(value, Keys.TAB)
        steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("4", Keys.TAB)
        browser.find_element(By.CSS_SELECTOR, "#compare input").click()
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#slider img")) == 2)
        wait.until(lambda b: "96x96, 4 steps, seed 23" in b.page_source)
        browser.execute_script("window.scrollTo(0, 0)")
        bottom = browser.execute_script("return document.querySelector('#generate').getBoundingClientRect().bottom")
        browser.set_window_size(1400, int(bottom) + 160)  # down to the Generate button, window frame included
        browser.save_screenshot(os.environ["FOURISCALE_UI_SCREENSHOT"])
    finally:
        browser.quit()
        app.close()


# ------------------------------------------------------------------------------------------------ pictures in


def _img2img(pipe, picture, strength, seed=5, steps=2):
    from diffusers import StableDiffusionImg2ImgPipeline

    from fouriscale.images import fit_image

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    init = fit_image(Image.open(picture).convert("RGB"), 64, 64)[0]
    out = img2img(
        "a red cat",
        image=init,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=7.5,
        eta=1.0,
        generator=generator(seed),
    )
    return as_array(out.images[0])


def test_an_input_picture_is_fitted_said_and_shown(studio, api_pipe, tmp_path):
    picture = write_picture(tmp_path / "wide.png", 48, 32, seed=1)
    result = _ask(studio, init_image=picture, strength=0.5)
    assert (np.asarray(Image.open(result["image"]).convert("RGB")) == _img2img(api_pipe, picture, 0.5)).all()
    assert result["input"].size == (64, 64) and result["direct"] is None
    assert "Note: the input picture: centre-cropped from 48x32 to 32x32" in result["info"]
    settings = read_settings(result["image"])
    assert settings["inputs"]["strength"] == 0.5 and settings["input_files"]["init_image"] == picture
    gradio_payload = {"path": picture, "meta": {"_type": "gradio.FileData"}}  # what the page sends
    assert read_settings(_ask(studio, init_image=gradio_payload, strength=0.5, seed=6)["image"])["inputs"]


def test_mask_controlnet_and_two_pass(studio, tmp_path):
    picture = write_picture(tmp_path / "in.png", 32, 32, seed=2)
    mask = write_mask(tmp_path / "mask.png", 32, 32)
    inpainted = _ask(studio, init_image=picture, mask=mask)
    assert read_settings(inpainted["image"])["inputs"]["strength"] == 1.0  # inpainting's default
    control = write_picture(tmp_path / "control.png", 64, 64, seed=3)
    guided = _ask(studio, controlnet="tiny", control_image=control, control_scale=0.5, compare=True)
    assert guided["direct"] is not None and guided["input"].size == (64, 64)  # input, direct and FouriScale
    assert read_settings(guided["image"])["inputs"]["controlnets"][0]["scale"] == 0.5
    assert read_settings(guided["direct"])["method"] == "direct"
    two = _ask(studio, two_pass=True, steps=3)
    first = read_settings(two["first"])
    assert first["method"] == "first-pass" and two["input"].size == (first["width"], first["height"])
    assert read_settings(two["image"])["two_pass"]["strength"] == 0.6


@pytest.fixture(scope="module")
def ui_pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-pictures")
    (root / "notes.txt").write_text("not a picture", encoding="utf-8")
    (root / "net.ckpt").write_bytes(b"not read")
    return {
        "picture": write_picture(root / "p.png", 32, 32),
        "mask": write_mask(root / "m.png", 32, 32),
        "mask48": write_mask(root / "m48.png", 48, 32),
        "control": write_picture(root / "c.png", 64, 64),
        "text": str(root / "notes.txt"),
        "ckpt": str(root / "net.ckpt"),
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(mask="mask"), "the mask needs the input picture"),
        (dict(two_pass=True, init_image="picture"), "two-pass makes its own first picture"),
        (dict(init_image="picture", strength=0), "more than 0 and at most 1"),
        (dict(init_image="picture", strength="abc"), "strength must be a finite number"),
        (dict(init_image="picture", strength=0.1), "runs no denoising step"),
        (dict(controlnet="tiny"), "the ControlNet model needs the ControlNet picture"),
        (dict(control_image="control"), "the ControlNet picture needs the ControlNet model"),
        (dict(controlnet="tiny", control_image="control", control_scale=-1), "from 0 to 10"),
        (dict(controlnet="/no/such/net", control_image="control"), "the ControlNet model /no/such/net: no such file"),
        (dict(controlnet="ckpt", control_image="control"), "the ControlNet model .*pass fouriscale ui --allow-pickle"),
        (dict(controlnet=5), "the ControlNet model must be text"),
        (dict(init_image=3), "the input picture must be a picture file"),
        (dict(init_image="/no/such.png"), "no such file"),
        (dict(init_image="text"), "not a picture this tool can read"),
        (dict(init_image="picture", mask="mask48"), "a mask must have the size of its picture"),
        (dict(two_pass="yes"), "two pass must be true or false"),
    ],
)
def test_bad_pictures_are_a_message(studio, ui_pictures, monkeypatch, changes, message):
    import fouriscale.frontend.ui.studio as ui

    monkeypatch.setattr(ui, "render_images", lambda *a, **k: pytest.fail("rendered despite bad input"))
    changes = {k: ui_pictures.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    with pytest.raises(UserError, match=message):
        _ask(studio, **changes)


def test_the_page_strength_and_scale_fields_count_only_with_their_inputs(studio):
    """The page always sends its strength slider and ControlNet scale: without an input picture (or two-pass) and
    without a ControlNet they change nothing, while a bad value is still refused."""
    plain = read_settings(_ask(studio, prompt="a field", seed=3)["image"])
    ignored = read_settings(_ask(studio, prompt="a field", seed=4, strength=0.5, control_scale=0.3)["image"])
    assert "inputs" not in ignored and {
        k: v for k, v in ignored.items() if k not in ("seed", "key", "file", "index")
    } == {k: v for k, v in plain.items() if k not in ("seed", "key", "file", "index")}
    with pytest.raises(UserError, match="more than 0 and at most 1"):
        _ask(studio, strength=0)
