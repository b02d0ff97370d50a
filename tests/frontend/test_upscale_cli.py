"""Pictures in on the command line (frontend/cli.py, sources.py, inputs.py, controlnets.py, pipelines.py): ``upscale``,
``generate --init-image/--mask/--controlnet/--two-pass``, prompt files with pictures. Every path end to end in this
process and pixel-equal to the same generation through the public API (one subprocess smoke test for
``upscale``); resume and sharding; every refusal is one line, exit status 2, before any rendering, nothing written."""

import contextlib
import hashlib

import diffusers
import pytest
from PIL import Image

import fouriscale
from fouriscale.frontend.controlnets import tiny_controlnet
from fouriscale.frontend.files import image_name, read_settings
from fouriscale.frontend.folder import Manifest
from fouriscale.images import fit_image
from fouriscale.testing import tiny_pipeline
from support.frontend import (
    FAST,
    IDLE_LOW_PASS,
    api_render,
    as_array,
    cli,
    close,
    error_line,
    generator,
    pixels,
    run_cli,
    tiny_recipe,
    write_mask,
    write_picture,
)

SD = ["--model", "tiny:sd1"]


@pytest.fixture(scope="module")
def base():
    """The built-in tiny SD model with FouriScale applied through the public API (the CLI's default settings)."""
    pipe = tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    return fouriscale.apply_fouriscale(pipe)


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def fit(path, height=64, width=64, mask=False):
    with Image.open(path) as image:
        return fit_image(image.convert("L" if mask else "RGB"), height, width, mask=mask)[0]


def api(cls_name, base, prompt="a cat", steps=2, seed=23, controlnet=None, **call):
    """The image the public API makes: the diffusers class made from the patched pipeline with ``from_pipe``."""
    extra = {"controlnet": controlnet} if controlnet is not None else {}
    pipe = getattr(diffusers, cls_name).from_pipe(base, **extra)
    pipe.set_progress_bar_config(disable=True)
    call.setdefault("guidance_scale", 7.5)
    image = pipe(prompt, num_inference_steps=steps, eta=1.0, generator=generator(seed), **call).images[0]
    return as_array(image)


def only_line(capsys, prefix="fouriscale: warning: "):
    """The one stderr line beside the warning every 64x64 run on the tiny models gives (the idle low-pass)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if IDLE_LOW_PASS not in line]
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0]


# ------------------------------------------------------------------------------------------------- upscale


def test_smoke_upscale(tmp_path, base):
    src = write_picture(tmp_path / "src.png", 32, 32, settings={"prompt": "a cat"})
    out = tmp_path / "out"
    done = run_cli("upscale", src, *SD, "--scale", "2", "--steps", "2", "--out", out, "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{src}: prompt from its embedded fouriscale settings: 'a cat'" in done.stdout
    assert "1 image(s) written, 0 already done" in done.stdout
    expected = api("StableDiffusionImg2ImgPipeline", base, image=fit(src), strength=0.6)
    assert close(pixels(out / image_name(0, 23, "a cat")), expected)  # another process: up to round-off


def test_upscale_takes_the_prompt_the_picture_carries_and_equals_the_api(tmp_path, base, capsys):
    src = write_picture(tmp_path / "src.png", 32, 32, settings={"prompt": "a red cat", "negative_prompt": "blurry"})
    out = tmp_path / "out"
    assert cli("upscale", src, *SD, "--scale", "2", "--steps", "3", "--out", out, "--no-progress") == 0
    assert f"{src}: prompt from its embedded fouriscale settings: 'a red cat'" in capsys.readouterr().out
    name = image_name(0, 23, "a red cat")
    settings = read_settings(out / name)
    assert (settings["width"], settings["height"], settings["negative_prompt"]) == (64, 64, "blurry")
    assert settings["inputs"] == {"init_image": {"sha256": sha(src), "size": [32, 32]}, "strength": 0.6}
    assert settings["input_files"] == {"init_image": src} and settings["method"] == "fouriscale"
    assert "Denoising strength: 0.6" in Image.open(out / name).text["parameters"]
    expected = api(
        "StableDiffusionImg2ImgPipeline",
        base,
        "a red cat",
        steps=3,
        image=fit(src),
        strength=0.6,
        negative_prompt="blurry",
    )
    assert (pixels(out / name) == expected).all()


def test_upscale_prompts_from_a1111_parameters_or_the_option(tmp_path, capsys):
    a1111 = write_picture(
        tmp_path / "a1111.png", 32, 32, parameters="a dog, detailed\nNegative prompt: ugly\nSteps: 20, Seed: 1"
    )
    plain = write_picture(tmp_path / "plain.png", 32, 32, seed=3)
    out = tmp_path / "out"
    assert cli("upscale", a1111, plain, *SD, "--size", "64x64", "--out", out, *FAST) == 2
    assert "plain.png carries no prompt" in error_line(capsys)
    assert not list(tmp_path.rglob("0*.png"))
    assert cli("upscale", a1111, *SD, "--size", "64x64", "--out", out, *FAST) == 0
    assert "prompt from its A1111 parameters: 'a dog, detailed'" in capsys.readouterr().out
    assert read_settings(out / image_name(0, 23, "a dog, detailed"))["negative_prompt"] == "ugly"
    both = tmp_path / "both"
    assert cli("upscale", a1111, plain, "--prompt", "a cow", *SD, "--size", "64x64", "--out", both, *FAST) == 0
    assert sorted(p.name for p in both.glob("*.png")) == ["00000-23-a-cow.png", "00001-23-a-cow.png"]
    assert "prompt from --prompt" in capsys.readouterr().out


def test_upscale_pictures_of_several_sizes_and_resume(tmp_path, base, capsys):
    square = write_picture(tmp_path / "square.png", 32, 32, settings={"prompt": "a cat"})
    wide = write_picture(tmp_path / "wide.png", 48, 32, settings={"prompt": "a dog"}, seed=1)
    out = tmp_path / "out"
    args = ["upscale", square, wide, *SD, "--scale", "2", "--out", out, *FAST]
    assert cli(*args) == 0
    assert "2 image(s) written, 0 already done" in capsys.readouterr().out
    assert Image.open(out / image_name(0, 23, "a cat")).size == (64, 64)
    assert Image.open(out / image_name(1, 23, "a dog")).size == (96, 64)
    expected = api("StableDiffusionImg2ImgPipeline", base, "a dog", image=fit(wide, 64, 96), strength=0.6)
    assert (pixels(out / image_name(1, 23, "a dog")) == expected).all()
    assert cli(*args) == 0
    assert "0 image(s) written, 2 already done" in capsys.readouterr().out
    assert len(Manifest(out).entries()) == 2


# ------------------------------------------------------------------------------------------ generate from pictures


def test_img2img_equals_the_api_resumes_and_a_changed_picture_is_not_taken_for_done(tmp_path, base, capsys):
    init = write_picture(tmp_path / "init.png", 32, 32, seed=4)
    out = tmp_path / "out"
    args = ["generate", "a cat", *SD, "--size", "64x64", "--init-image", init, "--strength", "0.5", "--out", out, *FAST]
    assert cli(*args) == 0
    name = out / image_name(0, 23, "a cat")
    expected = api("StableDiffusionImg2ImgPipeline", base, image=fit(init), strength=0.5)
    assert (pixels(name) == expected).all()
    assert (pixels(name) != api_render(base)).any()  # the picture matters
    assert cli(*args) == 0
    assert "0 image(s) written, 1 already done" in capsys.readouterr().out
    before = name.read_bytes()
    write_picture(init, 32, 32, seed=5)  # the same path, another picture: another image, under the next number
    assert cli(*args) == 0
    assert "1 image(s) written, 0 already done" in capsys.readouterr().out
    assert name.read_bytes() == before
    changed = read_settings(out / image_name(1, 23, "a cat"))["inputs"]["init_image"]
    assert changed != read_settings(name)["inputs"]["init_image"]


def test_inpainting_equals_the_api(tmp_path, base):
    init, mask = write_picture(tmp_path / "i.png", 32, 32, seed=2), write_mask(tmp_path / "m.png", 32, 32)
    out = tmp_path / "out"
    assert (
        cli("generate", "a cat", *SD, "--size", "64x64", "--init-image", init, "--mask", mask, "--out", out, *FAST) == 0
    )
    settings = read_settings(out / image_name(0, 23, "a cat"))
    assert settings["inputs"]["strength"] == 1.0 and settings["inputs"]["mask"]["sha256"] == sha(mask)
    expected = api(
        "StableDiffusionInpaintPipeline",
        base,
        image=fit(init),
        mask_image=fit(mask, mask=True),
        strength=1.0,
        height=64,
        width=64,
    )
    assert (pixels(out / image_name(0, 23, "a cat")) == expected).all()


def test_controlnet_and_multi_controlnet_by_repeated_flags_equal_the_api(tmp_path, base):
    from diffusers.models.controlnets import MultiControlNetModel

    one, two = write_picture(tmp_path / "c1.png", 64, 64, seed=6), write_picture(tmp_path / "c2.png", 64, 64, seed=7)
    out = tmp_path / "one"
    flags = ["--controlnet", "tiny", "--control-image", one, "--control-scale", "0.7"]
    assert cli("generate", "a cat", *SD, "--size", "64x64", *flags, "--out", out, *FAST) == 0
    got = pixels(out / image_name(0, 23, "a cat"))
    controlnet = tiny_controlnet(base.unet, base.vae_scale_factor, 0)
    control = Image.open(one).convert("RGB")
    expected = api(
        "StableDiffusionControlNetPipeline",
        base,
        controlnet=controlnet,
        image=control,
        controlnet_conditioning_scale=0.7,
        height=64,
        width=64,
    )
    assert (got == expected).all() and (got != api_render(base)).any()  # the ControlNet acts
    out = tmp_path / "two"
    flags = ["--controlnet", "tiny", "--control-image", one, "--controlnet", "tiny:1", "--control-image", two]
    assert (
        cli(
            "generate",
            "a cat",
            *SD,
            "--size",
            "64x64",
            *flags,
            "--control-scale",
            "1",
            "--control-scale",
            "0.5",
            "--out",
            out,
            *FAST,
        )
        == 0
    )
    settings = read_settings(out / image_name(0, 23, "a cat"))
    assert [(c["model"], c["scale"], c["image"]["sha256"]) for c in settings["inputs"]["controlnets"]] == [
        ("tiny", 1.0, sha(one)),
        ("tiny:1", 0.5, sha(two)),
    ]
    multi = MultiControlNetModel([controlnet, tiny_controlnet(base.unet, base.vae_scale_factor, 1)])
    expected = api(
        "StableDiffusionControlNetPipeline",
        base,
        controlnet=multi,
        image=[control, Image.open(two).convert("RGB")],
        controlnet_conditioning_scale=[1.0, 0.5],
        height=64,
        width=64,
    )
    assert (pixels(out / image_name(0, 23, "a cat")) == expected).all()


@pytest.mark.parametrize("family, task", [("sd1", "img2img"), ("sdxl", "inpaint")])
def test_controlnet_with_a_picture_picks_the_controlnet_img2img_and_inpaint_pipelines(tmp_path, family, task):
    pipe = fouriscale.apply_fouriscale(tiny_pipeline(family))
    pipe.set_progress_bar_config(disable=True)
    init, control = write_picture(tmp_path / "i.png", 32, 32, seed=1), write_picture(tmp_path / "c.png", 64, 64)
    mask = write_mask(tmp_path / "m.png", 32, 32)
    flags = ["--init-image", init, "--controlnet", "tiny", "--control-image", control]
    flags += ["--mask", mask] if task == "inpaint" else []
    out = tmp_path / "out"
    assert cli("generate", "a cat", "--model", f"tiny:{family}", "--size", "64x64", *flags, "--out", out, *FAST) == 0
    xl = "XL" if family == "sdxl" else ""
    call = dict(image=fit(init), control_image=Image.open(control).convert("RGB"), height=64, width=64)
    if task == "inpaint":
        call.update(strength=1.0, mask_image=fit(mask, mask=True))
    else:
        call.update(strength=0.6)
    cls = f"StableDiffusion{xl}ControlNet{'Inpaint' if task == 'inpaint' else 'Img2Img'}Pipeline"
    call["guidance_scale"] = fouriscale.FAMILIES[family].guidance_scale
    controlnet = tiny_controlnet(pipe.unet, pipe.vae_scale_factor, 0)
    expected = api(cls, pipe, controlnet=controlnet, controlnet_conditioning_scale=1.0, **call)
    assert (pixels(out / image_name(0, 23, "a cat")) == expected).all()


def test_two_pass_saves_both_passes_and_their_settings(tmp_path, base, capsys):
    out = tmp_path / "out"
    assert (
        cli("generate", "a cat", *SD, "--size", "96x64", "--two-pass", "--steps", "3", "--out", out, "--no-progress")
        == 0
    )
    result = fouriscale.two_pass(
        base, "a cat", 64, 96, strength=0.6, seed=23, num_inference_steps=3, guidance_scale=7.5, eta=1.0
    )
    final, first = out / image_name(0, 23, "a cat"), out / image_name(0, 23, "a cat", "-first")
    assert (pixels(final) == as_array(result.image)).all() and (pixels(first) == as_array(result.first)).all()
    ours, native = read_settings(final), read_settings(first)
    assert ours["two_pass"] == dict(result.settings["two_pass"], first_file=first.name)
    assert ours["two_pass"]["first_pass"] == {"height": 32, "width": 32, "fouriscale": False}  # one 32 px unit
    assert native["two_pass"] == ours["two_pass"] and native["method"] == "first-pass" and "fouriscale" not in native
    assert (native["width"], native["height"], ours["width"], ours["height"]) == (32, 32, 96, 64)
    assert 'Two pass: "first 32x32, pixel upscale, strength 0.6"' in Image.open(final).text["parameters"]
    assert sorted(e["file"] for e in Manifest(out).entries()) == sorted([final.name, first.name])
    first.unlink()  # lost: the rerun makes it again, and keeps the final image
    assert cli("generate", "a cat", *SD, "--size", "96x64", "--two-pass", "--steps", "3", "--out", out, *FAST[2:]) == 0
    assert "1 image(s) written, 1 already done" in capsys.readouterr().out
    assert (pixels(first) == as_array(result.first)).all()
    latent = tmp_path / "latent"
    assert (
        cli("generate", "a cat", *SD, "--two-pass", "--upscale", "latent", "--strength", "1", "--out", latent, *FAST)
        == 0
    )
    assert read_settings(latent / image_name(0, 23, "a cat"))["two_pass"]["upscale"] == "latent"


def test_prompt_file_with_pictures_resumes(tmp_path, base, capsys):
    a = write_picture(tmp_path / "a.png", 32, 32, seed=8)
    b = write_picture(tmp_path / "b.png", 32, 32, seed=9)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a cat\ta.png\na dog\t{b}\n\na cow\n", encoding="utf-8")  # relative and absolute paths
    out = tmp_path / "out"
    args = ["generate", "--prompts", prompts, *SD, "--size", "64x64", "--out", out, *FAST]
    assert cli(*args) == 0
    assert "3 image(s) written" in capsys.readouterr().out
    cat, cow = read_settings(out / "00000-23-a-cat.png"), read_settings(out / "00002-23-a-cow.png")
    assert cat["inputs"]["init_image"]["sha256"] == sha(a) and cat["input_files"]["init_image"] == a
    assert "inputs" not in cow  # a line without a picture: text to image
    assert (
        pixels(out / "00000-23-a-cat.png") == api("StableDiffusionImg2ImgPipeline", base, image=fit(a), strength=0.6)
    ).all()
    assert (pixels(out / "00002-23-a-cow.png") == api_render(base, "a cow")).all()
    assert cli(*args) == 0
    assert "0 image(s) written, 3 already done" in capsys.readouterr().out


class _Shard:
    """What accelerate's PartialState offers run_batch: this process's share of the jobs."""

    def __init__(self, index, count=2):
        self.process_index, self.num_processes = index, count

    @contextlib.contextmanager
    def split_between_processes(self, items):
        per = -(-len(items) // self.num_processes)
        yield items[self.process_index * per : (self.process_index + 1) * per]


def test_picture_batches_shard_across_processes(tmp_path, base):
    from fouriscale.frontend.batch import run_batch
    from fouriscale.frontend.pictures import read_picture
    from fouriscale.frontend.recipe import make_jobs

    pictures = [read_picture(write_picture(tmp_path / f"{i}.png", 32, 32, seed=i)) for i in range(3)]
    recipe = tiny_recipe(strength=0.6)
    jobs = make_jobs(["a cat"] * 3, [23], pictures)
    out = tmp_path / "out"
    written = [run_batch(base, recipe, jobs, out, state=_Shard(i), progress=False).written for i in (0, 1)]
    assert sorted(written[0] + written[1]) == sorted(p.name for p in out.glob("*.png")) and len(written[0]) == 2
    assert sorted(e["rank"] for e in Manifest(out).entries()) == [0, 0, 1]
    expected = api("StableDiffusionImg2ImgPipeline", base, image=fit(pictures[2].path), strength=0.6)
    assert (pixels(out / "00002-23-a-cat.png") == expected).all()


# ------------------------------------------------------------------------------ ControlNet loading and the recipe


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """ControlNets on disk: the tiny one of tiny:sd1 as a folder and as one .safetensors file, one for SDXL, one
    whose conditioning embedding downsamples by 8 (the tiny VAE by 4), a pickle file and a corrupt file."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("controlnets")
    sd, xl = tiny_pipeline("sd1"), tiny_pipeline("sdxl")
    ours = tiny_controlnet(sd.unet, sd.vae_scale_factor, 0)
    ours.save_pretrained(root / "folder")
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(root / "file.safetensors"))
    tiny_controlnet(xl.unet, xl.vae_scale_factor, 0).save_pretrained(root / "xl")
    save_file(
        {k: v.contiguous() for k, v in tiny_controlnet(xl.unet, xl.vae_scale_factor, 0).state_dict().items()},
        str(root / "xl.safetensors"),
    )
    wide = ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    wide.save_pretrained(root / "wide")
    (root / "net.pth").write_bytes(b"not unpickled")
    (root / "broken.safetensors").write_bytes((root / "file.safetensors").read_bytes()[:200])
    return {name: str(root / name) for name in ("folder", "file.safetensors", "xl", "xl.safetensors", "wide")} | {
        "pickle": str(root / "net.pth"),
        "broken": str(root / "broken.safetensors"),
    }


def test_controlnets_load_from_a_folder_and_a_single_file_like_tiny(tmp_path, nets):
    control = write_picture(tmp_path / "c.png", 64, 64, seed=6)
    made = {}
    for spec in ("tiny", nets["folder"], nets["file.safetensors"]):
        out = tmp_path / str(len(made))
        flags = ["--controlnet", spec, "--control-image", control]
        assert cli("generate", "a cat", *SD, "--size", "64x64", *flags, "--out", out, *FAST) == 0
        made[spec] = pixels(out / image_name(0, 23, "a cat"))
    first = made.pop("tiny")
    assert all((image == first).all() for image in made.values())


def test_the_official_controlnet_recipe_on_the_command_line(tmp_path):
    pipe = tiny_pipeline("sdxl")
    pipe.set_progress_bar_config(disable=True)
    control = write_picture(tmp_path / "c.png", 96, 64, seed=3)
    out = tmp_path / "out"
    flags = ["--controlnet", "tiny", "--control-image", control, "--official-controlnet"]
    assert cli("generate", "a cat", "--model", "tiny:sdxl", "--size", "96x64", *flags, "--out", out, *FAST) == 0
    settings = read_settings(out / image_name(0, 23, "a cat"))
    assert settings["fouriscale"]["dilated_convs"] is False and settings["fouriscale"]["freeu"] is None
    assert settings["inputs"]["controlnets"][0]["scale"] == 0.5 and settings["inputs"]["micro_conditions"] == [26, 36]
    controlnet_pipe = diffusers.StableDiffusionXLControlNetPipeline.from_pipe(
        pipe, controlnet=tiny_controlnet(pipe.unet, pipe.vae_scale_factor)
    )
    controlnet_pipe.set_progress_bar_config(disable=True)
    fouriscale.apply_fouriscale(controlnet_pipe, fouriscale.OFFICIAL_CONTROLNET)
    expected = controlnet_pipe(
        "a cat",
        image=Image.open(control).convert("RGB"),
        height=64,
        width=96,
        num_inference_steps=2,
        guidance_scale=5.0,
        eta=1.0,
        generator=generator(23),
        **fouriscale.official_controlnet_kwargs(controlnet_pipe, 64, 96),
    ).images[0]
    assert (pixels(out / image_name(0, 23, "a cat")) == as_array(expected)).all()
    plain = tmp_path / "plain"
    assert cli("generate", "a cat", *SD, "--no-dilated-convs", "--out", plain, *FAST) == 0
    assert read_settings(plain / image_name(0, 23, "a cat"))["fouriscale"]["dilated_convs"] is False


# ------------------------------------------------------------------------------------------------ warnings


def test_a_picture_of_another_aspect_is_cropped_with_a_warning(tmp_path, base, capsys):
    init = write_picture(tmp_path / "wide.png", 48, 32, seed=2)
    out = tmp_path / "out"
    assert cli("generate", "a cat", *SD, "--size", "64x64", "--init-image", init, "--out", out, *FAST) == 0
    line = only_line(capsys)
    assert f"--init-image {init}: centre-cropped from 48x32 to 32x32" in line and "to fit 64x64" in line
    expected = api("StableDiffusionImg2ImgPipeline", base, image=fit(init), strength=0.6)
    assert (pixels(out / image_name(0, 23, "a cat")) == expected).all()


def test_a_small_control_picture_is_upscaled_with_a_warning(tmp_path, capsys):
    control = write_picture(tmp_path / "small.png", 32, 32, seed=2)
    out = tmp_path / "out"
    flags = ["--controlnet", "tiny", "--control-image", control]
    assert cli("generate", "a cat", *SD, "--size", "64x64", *flags, "--out", out, *FAST) == 0
    assert f"--control-image {control}: upscaled from 32x32 to 64x64 to fit 64x64" in only_line(capsys)


# -------------------------------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    good = write_picture(root / "good.png", 32, 32)
    data = open(good, "rb").read()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not a picture", encoding="utf-8")
    (root / "empty.png").write_bytes(b"")
    prompts = root / "prompts.txt"
    prompts.write_text("a cat\tmissing.png\n", encoding="utf-8")
    return {
        "good": good,
        "truncated": str(root / "truncated.png"),
        "text": str(root / "notes.txt"),
        "empty": str(root / "empty.png"),
        "mask": write_mask(root / "mask.png", 32, 32),
        "mask48": write_mask(root / "mask48.png", 48, 32),
        "control": write_picture(root / "control.png", 64, 64),
        "plain": write_picture(root / "plain.png", 32, 32, seed=1),
        "prompts": str(prompts),
        "root": root,
    }


def _fill(args, bad, nets):
    return [str(a).format(**bad, **{k.replace(".", "_"): v for k, v in nets.items()}) for a in args]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--init-image", "/no/such.png"], "--init-image /no/such.png: no such file"),
        (["--init-image", "{truncated}"], "the picture is truncated or corrupt"),
        (["--init-image", "{text}"], "not a picture this tool can read"),
        (["--init-image", "{empty}"], "the file is empty"),
        (["--init-image", "{root}"], "is a folder, not a picture"),
        (["--init-image", "{good}", "--mask", "{mask48}"], "is 48x32 but"),
        (["--mask", "{mask}"], "--mask needs --init-image"),
        (["--two-pass", "--init-image", "{good}"], "cannot start from --init-image"),
        (["--upscale", "latent"], "add --two-pass"),
        (["--strength", "0.5"], "--strength is for --init-image or --two-pass"),
        (["--init-image", "{good}", "--strength", "0"], "more than 0 and at most 1"),
        (["--init-image", "{good}", "--strength", "1.5"], "more than 0 and at most 1"),
        (["--init-image", "{good}", "--strength", "nan"], "finite number"),
        (["--init-image", "{good}", "--strength", "0.1"], "runs no denoising step"),
        (["--control-image", "{control}"], "--control-image needs --controlnet"),
        (["--controlnet", "tiny"], "--controlnet needs --control-image"),
        (["--controlnet", "tiny", "--controlnet", "tiny:1", "--control-image", "{control}"], "2 --controlnet but 1"),
        (["--control-scale", "0.5"], "--control-scale needs --controlnet"),
        (["--controlnet", "tiny", "--control-image", "{control}", "--control-scale", "-1"], "from 0 to 10"),
        (["--official-controlnet"], "is a ControlNet recipe"),
        (["--controlnet", "tiny:x", "--control-image", "{control}"], "tiny or tiny:SEED"),
        (["--controlnet", "/no/such/net", "--control-image", "{control}"], "no such file or folder"),
        (["--controlnet", "{pickle}", "--control-image", "{control}"], "pickle file"),
        (["--controlnet", "{broken}", "--control-image", "{control}"], "truncated or corrupt"),
        (["--controlnet", "someone/not-cached-net", "--control-image", "{control}"], "not in the local Hugging Face"),
        (["--controlnet", "{xl}", "--control-image", "{control}"], "is a ControlNet for SDXL; the model is Stable"),
        (
            ["--controlnet", "{xl_safetensors}", "--control-image", "{control}"],
            "is a ControlNet for SDXL; the model is Stable",
        ),
        (
            ["--controlnet", "{wide}", "--control-image", "{control}"],
            "conditioning image downsampling is 8, the model's 4",
        ),
        (["--controlnet", "tiny", "--control-image", "{text}"], "--control-image"),
        (["--prompts", "{prompts}"], "--prompts line 1:"),
    ],
)
def test_bad_pictures_and_combinations_are_refused_before_loading(
    tmp_path, capsys, monkeypatch, bad, nets, args, message
):
    import fouriscale.frontend.requests as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    args = _fill(args, bad, nets)
    argv = ["generate", *([] if "--prompts" in args else ["a cat"]), *SD, "--size", "64x64", "--out", tmp_path / "o"]
    assert cli(*argv, *args, *FAST) == 2
    assert message in error_line(capsys)
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["{good}"], "give the size to make: --size WxH, or --scale F"),
        (["{good}", "--scale", "2", "--size", "64x64"], "not both"),
        (["{good}", "--scale", "0.5", "--prompt", "a cat"], "from 1 to 16"),
        (["{plain}", "--scale", "2"], "plain.png carries no prompt"),
        (["/no/such.png", "--scale", "2"], "image /no/such.png: no such file"),
        (["{good}", "--scale", "2", "--prompt", " "], "--prompt is empty"),
        (["{good}", "--scale", "2", "--prompt", "a cat", "--strength", "0.1"], "runs no denoising step"),
    ],
)
def test_upscale_refusals(tmp_path, capsys, monkeypatch, bad, nets, args, message):
    import fouriscale.frontend.requests as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli("upscale", *_fill(args, bad, nets), *SD, "--out", tmp_path / "o", *FAST) == 2
    assert message in error_line(capsys)
    assert not list(tmp_path.rglob("*.png"))


def test_help_shows_the_new_options_with_defaults(capsys):
    from fouriscale.frontend.cli import main

    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--init-image", "--mask", "(default: 0.6; inpainting 1.0)", "--two-pass", "(default: pixel)"):
        assert words in text, words
    for words in (
        "--controlnet",
        "--control-scale",
        "--official-controlnet",
        "--no-dilated-convs",
        "PROMPT<TAB>PICTURE",
    ):
        assert words in text, words
    assert main(["upscale", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--scale" in text and "--prompt" in text and "--init-image" not in text
