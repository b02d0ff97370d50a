r"""The web UI's work, independent of Gradio: :class:`Studio` keeps one loaded model and renders one request at a
time through the request path (:mod:`fouriscale.frontend.requests`), saving like the command line.

Every input reaches :meth:`Studio.generate` as the page sent it and is checked by type there (a width of
``64.5``, a seed ``"abc"`` or a checkbox ``"no"`` are refused); mistakes are :class:`UserError`\ s worded with
the page's field names.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from PIL import Image

from ...config import PAPER_PRESETS, FouriScaleConfig
from ...diffusers.describe import detect_profile
from ...memory import parse_memory
from ..batch import Unit, live_runs, name_units
from ..defaults import (
    DEFAULT_ETA,
    DEFAULT_SCHEDULER,
    MAX_SEED,
    as_bool,
    as_int,
    check_control_scale,
    check_guidance,
    check_strength,
    default_size,
)
from ..errors import UserError, user_errors
from ..fields import UI_NAMES
from ..folder import OutputFolder
from ..loading import LoadedModel, load_pipeline, load_plan_source, native_size, resolve_device
from ..prompts import cut_prompts
from ..recipe import Job, Recipe
from ..render import render_images
from ..requests import Request, Size, get_ready
from ..sources import check_sources

__all__ = ["Studio", "SIZE_CHOICES", "NATIVE", "CUSTOM", "MAX_UI_STEPS"]

NATIVE = "2x native"
CUSTOM = "custom"
SIZE_CHOICES = [NATIVE] + sorted({f"{p.width}x{p.height}" for p in PAPER_PRESETS.values()}) + [CUSTOM]
MAX_UI_STEPS = 150
_WAIT_POLL = 0.5  # seconds between looks at a request another run is making


def _picture_path(value, label: str) -> str | None:
    """A picture input as a path: ``None``/``""`` (none), a path, or Gradio's file payload (``{"path": ...}``)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return value["path"]
    if isinstance(value, str):
        return value
    raise UserError(f"{label} must be a picture file, got {type(value).__name__}")


def _optional(value, check, name: str):
    """An optional number field: empty (``None`` or ``""``) or a value ``check`` accepts."""
    return None if value is None or value == "" else check(value, name)


def _budget(value) -> int | None:
    """The memory budget field: empty (``None`` or blank) or an amount such as ``12GB``, in bytes."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise UserError(f"the memory budget must be text such as 12GB, got {value!r}")
    with user_errors(labels=UI_NAMES):
        return parse_memory(value, "the memory budget")


class Studio:
    """The app's state and work, independent of Gradio: keeps one loaded model, renders one request at a time.

    ``out_dir`` (default ``outputs``) is checked when the studio is made: it must be (or become) a writable
    folder; it is created when the first image is saved.
    """

    def __init__(
        self,
        out_dir: str = "outputs",
        device: str = "auto",
        dtype: str = "auto",
        model_config: str | None = None,
        default_model: str | None = None,
        offload: str = "none",
        allow_pickle: bool = False,
    ) -> None:
        self.folder = OutputFolder(out_dir).check()  # made when the first image is saved
        self.out = self.folder.path
        self.device = resolve_device(device)
        self.dtype, self.model_config, self.offload, self.allow_pickle = dtype, model_config, offload, allow_pickle
        self.default_model = default_model
        self.loaded: LoadedModel | None = None
        self._controlnets: dict[str, object] = {}  # spec -> loaded ControlNet (for the loaded model)
        self._lock = threading.Lock()
        self._natives: dict[str, tuple[tuple[int, int], str]] = {}

    def model(self, name: str) -> LoadedModel:
        """The loaded model, loading ``name`` only when it differs from the one kept."""
        name = (name or "").strip()
        if not name:
            raise UserError("enter a model: a hub id, a diffusers folder, a .safetensors file or tiny:sd1")
        if self.loaded is None or self.loaded.source != name:
            self.loaded = None
            self._controlnets.clear()
            self.loaded = load_pipeline(
                name,
                device=self.device,
                dtype=self.dtype,
                config=self.model_config,
                offload=self.offload,
                allow_pickle=self.allow_pickle,
                labels=UI_NAMES,
            )
            self.loaded.pipe.set_progress_bar_config(disable=True)
        return self.loaded

    def native(self, name: str) -> tuple[tuple[int, int], str] | None:
        """``((height, width), family)`` of a model from its config (no weights read), or ``None`` if unknown."""
        name = (name or "").strip()
        if not name:
            return None
        if self.loaded is not None and self.loaded.source == name:
            return native_size(self.loaded.pipe), self.loaded.family
        if name not in self._natives:
            if Path(name).expanduser().is_file():
                return None
            try:
                unet, factor, _ = load_plan_source(name, self.model_config)
                profile = detect_profile(unet, factor)
            except (UserError, ValueError, TypeError, OSError):
                return None
            self._natives[name] = (profile.native_size, profile.family.name)
        return self._natives[name]

    def size_for(self, choice: str, model: str) -> tuple[int, int] | None:
        """``(height, width)`` a dropdown choice stands for (``None``: leave the fields as they are)."""
        if choice == NATIVE:
            native = self.native(model)
            return default_size(native[0]) if native else None
        if choice and re.fullmatch(r"\d+x\d+", choice):
            w, h = (int(v) for v in choice.split("x"))
            return h, w
        return None

    def _claim(self, ready, job: Job) -> Unit:
        """The request's files, named by identity as a batch names them (an image whose settings the folder holds
        keeps its file, a new one takes the next number), claimed so that no other UI or CLI run makes them
        meanwhile; while another run holds them, waits for it."""
        recipe = ready.recipe
        methods = ("fouriscale",) + (("first",) if recipe.two_pass else ()) + (("direct",) if recipe.compare else ())
        self.folder.prepare()
        while True:
            with self.folder.lock:
                unit = name_units(self.folder, recipe, [job], methods, ready.plan, live_runs(self.folder))[0]
                if self.folder.claim(unit.name):
                    return unit
            time.sleep(_WAIT_POLL)

    def generate(
        self,
        prompt,
        negative,
        model,
        width,
        height,
        steps,
        guidance,
        seed,
        freeu,
        amp_guidance,
        low_pass,
        attention_guidance,
        pad_then_crop,
        progressive,
        compare,
        init_image=None,
        strength=None,
        mask=None,
        controlnet=None,
        control_image=None,
        control_scale=None,
        two_pass=False,
        max_memory=None,
        progress=None,
    ) -> dict:
        """Render one request; returns ``{"image": path, "direct": path or None, "input": picture or None,
        "first": path or None, "info": text}``.

        Every input is checked by type first (whole numbers for sizes, steps and seed; a finite guidance from 0
        to 100, empty for the model's default; true/false for the switches; picture files or nothing; a strength
        in (0, 1] and a ControlNet scale from 0 to 10, empty for the defaults; a memory budget such as ``12GB``, empty
        for none); ``UserError`` otherwise.
        """
        switches = dict(
            freeu=freeu,
            amp_guidance=amp_guidance,
            low_pass=low_pass,
            attention_guidance=attention_guidance,
            pad_then_crop=pad_then_crop,
            progressive=progressive,
            compare=compare,
            two_pass=two_pass,
        )
        pictures = dict(init=init_image, mask=mask, control_image=control_image)
        request, seed = self._request(
            prompt, negative, model, width, height, steps, guidance, seed, switches, pictures, strength, controlnet,
            control_scale, max_memory,
        )  # fmt: skip
        with self._lock:
            loaded = self.model(request.model)
            ready = get_ready(loaded, request, inits=(request.sources.init,), controlnets=self._controlnets)
            cut = cut_prompts(loaded.pipe, [prompt.strip()])
            cut += cut_prompts(loaded.pipe, [request.negative or ""], "negative prompt")
            unit = self._claim(ready, Job(0, prompt.strip(), seed))
            try:
                paths, images, found = self._render(ready, unit, progress)
            finally:
                self.folder.release(unit.name)
        return {
            "image": paths["fouriscale"],
            "direct": paths.get("direct"),
            "first": paths.get("first"),
            "input": self._shown_input(ready.recipe, images),
            "info": _info(ready, seed, found, cut),
        }

    def _request(self, prompt, negative, model, width, height, steps, guidance, seed, switches, pictures, strength,
                 controlnet, control_scale, max_memory=None) -> tuple[Request, int]:  # fmt: skip
        """The :class:`Request` of the page's values, each checked by type, and the seed."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("enter a prompt")
        if negative is not None and not isinstance(negative, str):
            raise UserError("the negative prompt must be text")
        if not isinstance(model, str):
            raise UserError("the model must be text: a hub id, a folder, a .safetensors file or tiny:sd1")
        if controlnet is not None and not isinstance(controlnet, str):
            raise UserError("the ControlNet model must be text: a hub id, a folder, a .safetensors file or tiny")
        height, width = as_int(height, "height", 1), as_int(width, "width", 1)
        steps, seed = as_int(steps, "steps", 1, MAX_UI_STEPS), as_int(seed, "seed", 0, MAX_SEED)
        guidance = _optional(guidance, check_guidance, "guidance")
        strength = _optional(strength, check_strength, "strength")
        control_scale = _optional(control_scale, check_control_scale, "ControlNet scale")
        flags = {name: as_bool(value, name.replace("_", " ")) for name, value in switches.items()}
        budget = _budget(max_memory)
        paths = {name: _picture_path(value, UI_NAMES[name]) for name, value in pictures.items()}
        spec = (controlnet or "").strip()
        # The page always sends its strength and scale fields: they count where they apply (a strength with an
        # input picture or two-pass, a scale with a ControlNet), as the fields sit under those inputs.
        if paths["init"] is None and not flags["two_pass"]:
            strength = None
        if not spec:
            control_scale = None
        sources = check_sources(
            init=paths["init"],
            mask=paths["mask"],
            controlnets=[spec] if spec else [],
            control_images=[paths["control_image"]] if paths["control_image"] else [],
            control_scales=[control_scale] if control_scale is not None else [],
            strength=strength,
            two_pass=flags["two_pass"],
            allow_pickle=self.allow_pickle,
            labels=UI_NAMES,
        )
        config = FouriScaleConfig(
            freeu="paper" if flags["freeu"] else None,
            amp_guidance=flags["amp_guidance"],
            low_pass=flags["low_pass"],
            attention_guidance=flags["attention_guidance"],
            pad_then_crop=flags["pad_then_crop"],
            progressive=flags["progressive"],
        )
        request = Request(
            model=model.strip(),
            config=lambda steps: config,
            size=Size(height, width, steps=steps),
            guidance=guidance,
            negative=(negative or "").strip() or None,
            scheduler=DEFAULT_SCHEDULER,
            eta=DEFAULT_ETA,
            sources=sources,
            compare=flags["compare"],
            allow_pickle=self.allow_pickle,
            dtype=self.dtype,
            offload=self.offload,
            max_memory=budget,
            labels=UI_NAMES,
            name_paths=False,
        )
        return request, seed

    def _render(self, ready, unit: Unit, progress) -> tuple[dict, dict, list[str]]:
        """Render and save the request's images (FouriScale, its first pass, direct inference) that the folder does
        not hold yet; ``(paths, images, found)``: paths and images by kind, and the kinds found already made.
        ``progress(fraction, desc=...)`` follows every denoising step."""
        recipe = ready.recipe
        files = {kind: settings for kind, _, settings in unit.files}
        found = [kind for kind, settings in files.items() if self.folder.holds(settings)]
        paths = {kind: str(self.out / settings["file"]) for kind, settings in files.items()}
        images = {kind: _opened(paths[kind]) for kind in found}
        made_by = {"fouriscale": "fouriscale", "first": "fouriscale", "direct": "direct"}  # --two-pass makes both
        methods = list(dict.fromkeys(made_by[kind] for kind in files if kind not in found))
        calls = self._calls(recipe, methods)
        done = [0]

        def on_step(i, method="fouriscale"):
            done[0] += 1
            if progress is not None:
                progress(min(done[0] / calls, 1.0), desc=f"{method}: step {i + 1}")

        for method in methods:
            made = render_images(ready.pipes, recipe, unit.job, method, on_step=lambda i, m=method: on_step(i, m))
            for kind, image in made.items():
                if kind not in found:
                    self.folder.save(image, files[kind])
                images[kind] = image
        return paths, images, found

    @staticmethod
    def _shown_input(recipe: Recipe, images: dict):
        """The picture FouriScale started from, as it started from it (two-pass: the first pass)."""
        if "first" in images:
            return images["first"]
        if recipe.init is not None:
            return recipe.init.fitted(recipe.height, recipe.width)[0]
        if recipe.controls:
            return recipe.controls[0].image.fitted(recipe.height, recipe.width)[0]
        return None

    @staticmethod
    def _calls(recipe: Recipe, methods: list[str]) -> int:
        """Denoising steps the request runs in all (for the progress bar)."""
        second = int(recipe.strength * recipe.steps) if recipe.strength is not None else recipe.steps
        per = {
            "fouriscale": recipe.steps + second if recipe.two_pass else second if recipe.init else recipe.steps,
            "direct": second if recipe.init else recipe.steps,
        }
        return max(1, sum(per[m] for m in methods))


def _opened(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _info(ready, seed: int, found: list[str] = (), cut: list[str] = ()) -> str:
    """The text under the result: size, steps, seed, guidance, the plan's dilation and base size, and notes (the
    request's, what a memory budget chose, prompts the text encoder cuts, an image the folder already held)."""
    recipe, plan = ready.recipe, ready.plan
    again = ["the output folder already held this image (the same settings): shown, not rendered again"]
    budget = [f"memory {plan.memory.describe()}"] if plan.memory is not None else []
    if plan.memory is not None and plan.memory.offload == "model":
        budget[0] += " (model CPU offload stays on for this model until another one is loaded)"
    notes = [*ready.notes, *budget, *cut, *(again if "fouriscale" in found else [])]
    return (
        f"{recipe.width}x{recipe.height}, {recipe.steps} steps, seed {seed}, guidance {recipe.guidance_scale:g}: "
        f"dilation {plan.dilation}, base {plan.base_size[1]:g}x{plan.base_size[0]:g}"
        + (" (FouriScale is a no-op at this size)" if plan.noop else "")
        + "".join(f"\n\nNote: {line}" for line in notes)
    )
