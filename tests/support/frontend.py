"""Helpers shared by the front-end tests (not a test module)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fouriscale.frontend.cli import main
from support import forkserver

TESTS = Path(__file__).parents[1]  # tests/, where ``support`` is a package
FAST = ["--steps", "2", "--no-progress"]
#: The warning every run at 64x64 on the tiny models gives (feature maps too small for the low-pass to act).
IDLE_LOW_PASS = "at 64x64 the low-pass filter changes nothing"


def cli(*args) -> int:
    """``fouriscale ARGS`` in this process; returns the exit status."""
    return main([str(a) for a in args])


def error_line(capsys, after: tuple[str, ...] = ()) -> str:
    """The one stderr line of a failed command (asserted to be exactly one, with no traceback); ``after``: warnings
    the run gave before it failed (beginnings of the lines), asserted to be the lines before it."""
    err = capsys.readouterr().err.strip().splitlines()
    warned, err = err[: len(after)], err[len(after) :]
    assert len(warned) == len(after) and all(w.startswith(f"fouriscale: warning: {a}") for w, a in zip(warned, after))
    assert len(err) == 1 and err[0].startswith("fouriscale: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def env(**extra) -> dict:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        **extra,
    )


def run_cli(*args, timeout: float = 300, fresh: bool = False) -> subprocess.CompletedProcess:
    """``python -m fouriscale ARGS`` in its own process (offline); returns the finished process.

    The process is forked from the fork server (``forkserver.py``: imports paid once), or with ``fresh``
    started as a new interpreter, as a user's shell would.
    """
    if fresh:
        command = [sys.executable, "-m", "fouriscale", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, env=env(), timeout=timeout)
    return forkserver.run(args, env(), timeout=timeout)


def start_cli(*args, stdout=None, stderr=None) -> forkserver.Started:
    """``python -m fouriscale ARGS`` forked from the fork server, running; a ``subprocess.Popen`` look-alike."""
    return forkserver.Started(args, env(), stdout=stdout, stderr=stderr)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def close(a: np.ndarray, b: np.ndarray, tolerance: int = 1) -> bool:
    """Same image up to ``tolerance`` per 8-bit channel (float round-off in another process, other thread count)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tolerance


def api_render(pipe, prompt="a cat", seed=23, height=64, width=64, steps=2, guidance=7.5, **call) -> np.ndarray:
    """The image the public API makes with the CLI's recipe (DDIM, eta 1.0, CPU generator seeded with ``seed``)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    image = pipe(
        prompt,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        eta=1.0,
        generator=generator,
        **call,
    ).images[0]
    return np.asarray(image.convert("RGB"))


def write_picture(path, width: int = 32, height: int = 32, seed: int = 0, settings: dict | None = None, **text) -> str:
    """A smooth seeded test picture saved as PNG at ``path`` (with ``settings`` embedded as this tool does, or other
    PNG text chunks such as A1111's ``parameters``); returns the path as text."""
    from PIL import PngImagePlugin

    from fouriscale.frontend.files import write_png

    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    if settings is not None:
        write_png(image, path, settings)
    else:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
        image.save(path, pnginfo=info)
    return str(path)


def write_mask(path, width: int = 32, height: int = 32) -> str:
    """A binary mask (white centred rectangle: repaint) saved as PNG."""
    a = np.zeros((height, width), dtype=np.uint8)
    a[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    Image.fromarray(a, "L").save(path)
    return str(path)


def generator(seed: int = 23) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def as_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def tiny_recipe(**changes):
    """The CLI's default recipe for ``tiny:sd1`` at 64x64 and 2 steps, with ``changes``."""
    import fouriscale
    from fouriscale.frontend.recipe import Recipe

    base = dict(
        model="tiny:sd1",
        height=64,
        width=64,
        steps=2,
        guidance_scale=7.5,
        negative_prompt=None,
        scheduler="ddim",
        eta=1.0,
        dtype="float32",
        config=fouriscale.FouriScaleConfig(),
    )
    return Recipe(**dict(base, **changes))
