"""The settings embedded in pictures (fouriscale/embedded.py): one reader for upscale, eval and benchmark-quality.
A prompt that looks like A1111 settings survives generate -> upscale and reaches eval's CLIP score exactly."""

import numpy as np
from PIL import Image

from fouriscale.evaluation import evaluate
from fouriscale.frontend.files import read_settings
from support.frontend import FAST, cli, write_picture

# A prompt with what an A1111 reader could take for its own structure: a newline, a negative prompt line and a
# settings line.
TRICKY = 'Steps: 20, Sampler: x\nNegative prompt: not the negative\na red "house", at night'


def test_a_prompt_that_looks_like_a1111_settings_survives_upscale_and_reaches_clip(tmp_path, tiny_clip, capsys):  # noqa: F811
    first, up = tmp_path / "first", tmp_path / "up"
    model = ["--model", "tiny:sd1"]
    assert cli("generate", TRICKY, *model, "--size", "32x32", "--seed", "1,2", "--out", first, *FAST) == 0
    pictures = sorted(first.glob("*.png"))
    assert len(pictures) == 2 and all(read_settings(p)["prompt"] == TRICKY for p in pictures)
    assert cli("upscale", *pictures, *model, "--size", "64x64", "--out", up, *FAST) == 0
    upscaled = sorted(up.glob("*.png"))
    assert len(upscaled) == 2 and all(read_settings(p)["prompt"] == TRICKY for p in upscaled)
    capsys.readouterr()

    def clip_score(prompts=None) -> float:
        return evaluate(first, up, metrics=["clip"], clip_model=tiny_clip, prompts=prompts)["clip_score"]

    embedded = clip_score()
    assert embedded == clip_score({p.name: TRICKY for p in upscaled})
    assert embedded != clip_score({p.name: TRICKY.split("\n")[-1] for p in upscaled})  # the score tells prompts apart


def test_embedded_prompt_readers(tmp_path):
    from fouriscale.embedded import parse_a1111, read_embedded_prompt

    assert parse_a1111("a cat,\nsitting\nNegative prompt: dark\nSteps: 20, Sampler: Euler") == (
        "a cat,\nsitting",
        "dark",
    )
    assert parse_a1111("just a prompt") == ("just a prompt", "")
    exif_path = tmp_path / "a1111.jpg"
    image = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "a fox\nSteps: 20".encode("utf-16-be")
    image.save(exif_path, exif=exif)
    assert read_embedded_prompt(str(exif_path)) == ("a fox", "", "its A1111 parameters (EXIF)")
    assert read_embedded_prompt(write_picture(tmp_path / "p.png")) is None
