"""``fouriscale ui``: a local Gradio app to generate with FouriScale and compare with direct inference.

The model is loaded once and kept; requests run one at a time through a bounded queue; every mistake is
shown as a message in the page, including typed API input that is not what the field holds (inputs reach
:meth:`Studio.generate` unprocessed and are checked there). Finished images are written like the CLI writes
them (PNG with the settings embedded, manifest line, same folder lock) and offered for download.

The size fields are the size that will be made: choosing a size in the dropdown fills them, editing them
switches the dropdown to "custom". Defaults are the CLI's (:mod:`.params`): 50 steps, seed 23, guidance
by family (7.5 SD, 5.0 SDXL) when the field is left empty.

Pictures in follow the CLI's rules (:mod:`.sources`): an input picture (img2img, with a strength), an optional
mask of the input picture's size (inpainting), a ControlNet with its conditioning picture, and the two-pass
switch; pictures of another size are fitted to the target size by :func:`fouriscale.images.fit_image`, and what
was done is said under the result. With an input picture the page also shows it, as FouriScale started from it
(for two-pass: the native-size first pass), next to the result or the direct/FouriScale slider.
"""

from __future__ import annotations

import os
import random
import re
import socket
import sys
import threading
from pathlib import Path

from ..config import PAPER_PRESETS, FouriScaleConfig
from ..profiles import FAMILIES
from .errors import UserError, one_line, user_errors
from .jobs import Job, Recipe, finished_settings, output_name, render_images, save_image
from .loading import LoadedModel, load_pipeline, native_size
from .outputs import OutputFolder
from .params import (
    DEFAULT_CONTROL_SCALE,
    DEFAULT_ETA,
    DEFAULT_INPAINT_STRENGTH,
    DEFAULT_SCHEDULER,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    MAX_SEED,
    as_bool,
    as_int,
    check_control_scale,
    check_guidance,
    check_strength,
    default_guidance,
    default_size,
)

__all__ = ["Studio", "build_app", "launch", "SIZE_CHOICES", "NATIVE", "CUSTOM", "QUEUE_SIZE", "check_address"]

NATIVE = "2x native"
CUSTOM = "custom"
SIZE_CHOICES = [NATIVE] + sorted({f"{p.width}x{p.height}" for p in PAPER_PRESETS.values()}) + [CUSTOM]
QUEUE_SIZE = 8  # requests waiting behind the running one; more are turned away with a message
MAX_UI_STEPS = 150
FALLBACK_SIZE = (1024, 1024)


def _for_the_page(message: str) -> str:
    """Library messages without the hints that name CLI options or API arguments the UI does not have."""
    message = re.sub(r", or set an explicit base size \(.*\)\.?$", ".", message)
    message = re.sub(r", or lift the limit with size_limit=False \(--no-size-limit\)", "", message)
    message = (
        message.replace("--controlnet:", "the ControlNet:")
        .replace("--controlnet ", "the ControlNet ")
        .replace("--allow-pickle", "fouriscale ui --allow-pickle")
    )
    return message


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


class Studio:
    """The app's state and work, independent of Gradio: keeps one loaded model, renders one request at a time.

    ``out_dir`` (default ``outputs``) is checked when the studio is made: it must be (or become) a writable
    folder.
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
        from .loading import resolve_device

        self.folder = OutputFolder(out_dir).prepare()
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
            from ..diffusers.describe import detect_profile
            from .loading import load_unet_profile_source

            if Path(name).expanduser().is_file():
                return None
            try:
                unet, factor = load_unet_profile_source(name, self.model_config)
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

    def _claim_index(self, seed: int, prompt: str) -> Job:
        """The next free job index in the folder, claimed so that another UI or CLI run cannot take the name."""
        with self.folder.lock:
            indices = [int(m.group(1)) for p in self.out.glob("*.png") if (m := re.match(r"(\d+)-", p.name))]
            index = max(indices, default=-1) + 1
            while True:
                job = Job(index, prompt, seed)
                if not (self.out / output_name(job, "fouriscale")).exists() and self.folder.claim(
                    output_name(job, "fouriscale")
                ):
                    return job
                index += 1

    def pipelines(self, sources):
        """The loaded model's pipelines with the request's ControlNet (each ControlNet loaded once and kept)."""
        from .controlnets import load_controlnet
        from .pipelines import Pipelines

        controlnet = None
        for source, _, _ in sources.controls or ():
            if source.spec not in self._controlnets:
                self._controlnets[source.spec] = load_controlnet(source, self.loaded.pipe, self.allow_pickle)
            controlnet = self._controlnets[source.spec]
        return Pipelines(self.loaded.pipe, controlnet)

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
        progress=None,
    ) -> dict:
        """Render one request; returns ``{"image": path, "direct": path or None, "input": picture or None,
        "first": path or None, "info": text}``.

        Every input is checked by type first (whole numbers for sizes, steps and seed; a finite guidance from 0
        to 100, empty for the model's default; true/false for the switches; picture files or nothing; a strength
        in (0, 1] and a ControlNet scale from 0 to 10, empty for the defaults); ``UserError`` otherwise.
        """
        from .sources import UI_LABELS, check_sources, check_steps_run, fit_warnings

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
        flags = {name: as_bool(value, name.replace("_", " ")) for name, value in switches.items()}
        pictures = {
            name: _picture_path(value, UI_LABELS[name])
            for name, value in (("init", init_image), ("mask", mask), ("control_image", control_image))
        }
        spec = (controlnet or "").strip()
        # The page always sends its strength and scale fields: they count where they apply (a strength with an
        # input picture or two-pass, a scale with a ControlNet), as the fields sit under those inputs.
        if pictures["init"] is None and not flags["two_pass"]:
            strength = None
        if not spec:
            control_scale = None
        try:
            sources = check_sources(
                init=pictures["init"],
                mask=pictures["mask"],
                controlnets=[spec] if spec else [],
                control_images=[pictures["control_image"]] if pictures["control_image"] else [],
                control_scales=[control_scale] if control_scale is not None else [],
                strength=strength,
                two_pass=flags["two_pass"],
                allow_pickle=self.allow_pickle,
                labels=UI_LABELS,
            )
        except UserError as exc:
            raise UserError(_for_the_page(str(exc))) from None
        import fouriscale

        with self._lock:
            loaded = self.model(model)
            pipe = loaded.pipe
            config = FouriScaleConfig(
                freeu="paper" if flags["freeu"] else None,
                amp_guidance=flags["amp_guidance"],
                low_pass=flags["low_pass"],
                attention_guidance=flags["attention_guidance"],
                pad_then_crop=flags["pad_then_crop"],
                progressive=flags["progressive"],
            )
            try:
                with user_errors():
                    plan = fouriscale.get_plan(pipe, height, width, steps, config)
                sources.check_model(pipe.unet, pipe.vae_scale_factor)
                check_steps_run(sources.strength, steps, UI_LABELS)
            except UserError as exc:
                raise UserError(_for_the_page(str(exc))) from None
            inits = [sources.init] if sources.init else []
            controls = [picture for _, picture, _ in sources.controls]
            notes = fit_warnings(height, width, inits, controls, paths=False)
            try:
                pipes = self.pipelines(sources)
            except UserError as exc:
                raise UserError(_for_the_page(str(exc))) from None
            fouriscale.apply_fouriscale(pipe, config)
            first_size = None
            if sources.two_pass:
                from ..two_pass import first_pass_size

                first_size = first_pass_size(pipe, height, width, config)
            recipe = Recipe(
                model=loaded.source,
                height=height,
                width=width,
                steps=steps,
                guidance_scale=guidance if guidance is not None else default_guidance(loaded.family),
                negative_prompt=(negative or "").strip() or None,
                scheduler=DEFAULT_SCHEDULER,
                eta=DEFAULT_ETA,
                dtype=str(pipe.unet.dtype).replace("torch.", ""),
                config=config,
                compare=flags["compare"],
                strength=sources.strength,
                init=sources.init,
                mask=sources.mask,
                controls=sources.control_objects(),
                two_pass=sources.two_pass,
                first_size=first_size,
            )
            job = self._claim_index(seed, prompt.strip())
            try:
                methods = ["fouriscale"] + (["direct"] if flags["compare"] else [])
                paths, images = {}, {}
                calls = self._calls(recipe, methods)
                done = [0]

                def on_step(i, method="fouriscale"):
                    done[0] += 1
                    if progress is not None:
                        progress(min(done[0] / calls, 1.0), desc=f"{method}: step {i + 1}")

                for method in methods:
                    made = render_images(pipes, recipe, job, method, on_step=lambda i, m=method: on_step(i, m))
                    images.update(made)
                    for kind in made:
                        settings = finished_settings(recipe, job, kind, output_name(job, kind), plan)
                        save_image(made[kind], self.out, settings, folder=self.folder)
                        paths[kind] = str(self.out / settings["file"])
            finally:
                self.folder.release(output_name(job, "fouriscale"))
        shown_input = None
        if "first" in images:
            shown_input = images["first"]
        elif sources.init is not None:
            shown_input = sources.init.fitted(height, width)[0]
        elif controls:
            shown_input = controls[0].fitted(height, width)[0]
        info = (
            f"{width}x{height}, {steps} steps, seed {seed}, guidance {recipe.guidance_scale:g}: dilation "
            f"{plan.dilation}, base {plan.base_size[1]:g}x{plan.base_size[0]:g}"
            + (" (FouriScale is a no-op at this size)" if plan.noop else "")
            + (" (more than 8x the native size per side: expect broken structure)" if plan.far_beyond_native else "")
            + "".join(f"\n\nNote: {line}" for line in notes)
        )
        return {
            "image": paths["fouriscale"],
            "direct": paths.get("direct"),
            "first": paths.get("first"),
            "input": shown_input,
            "info": info,
        }

    @staticmethod
    def _calls(recipe: Recipe, methods: list[str]) -> int:
        """Denoising steps the request runs in all (for the progress bar)."""
        second = int(recipe.strength * recipe.steps) if recipe.strength is not None else recipe.steps
        per = {
            "fouriscale": recipe.steps + second if recipe.two_pass else second if recipe.init else recipe.steps,
            "direct": second if recipe.init else recipe.steps,
        }
        return max(1, sum(per[m] for m in methods))


def build_app(studio: Studio):
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    def on_generate(*values, progress=gr.Progress()):
        try:
            result = studio.generate(*values, progress=progress)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # never a crash: show it in the page
            raise gr.Error(f"{type(exc).__name__}: {one_line(exc)}", print_exception=False) from None
        comparing = result["direct"] is not None
        slider = (result["direct"], result["image"]) if comparing else None
        shown = result["input"] is not None
        return (
            gr.update(value=None if comparing else result["image"], visible=not comparing),
            gr.update(value=slider, visible=comparing),
            gr.update(value=result["input"], visible=shown),
            result["image"],
            result["info"],
        )

    def on_size(choice, model):
        size = studio.size_for(choice, model)
        if size is None:
            return gr.update(), gr.update()
        return gr.update(value=size[1]), gr.update(value=size[0])

    def on_model_guidance(model, guidance):
        """The family's guidance when the model changes, unless the field holds a value typed by the user."""
        native = studio.native(model)
        defaults = {None, *(default_guidance(name) for name in FAMILIES)}
        if native is None or guidance not in defaults:
            return gr.update()
        return gr.update(value=default_guidance(native[1]))

    def on_mask(mask, strength):
        """A mask given: the inpainting strength (1.0); taken away: the img2img one (0.6); a moved slider stays."""
        if mask and strength == DEFAULT_STRENGTH:
            return gr.update(value=DEFAULT_INPAINT_STRENGTH)
        if not mask and strength == DEFAULT_INPAINT_STRENGTH:
            return gr.update(value=DEFAULT_STRENGTH)
        return gr.update()

    start = studio.native(studio.default_model) if studio.default_model else None
    first_choice = NATIVE if start else CUSTOM
    first_h, first_w = default_size(start[0]) if start else FALLBACK_SIZE
    guidance_label = "Guidance scale (the model's default: 7.5 SD / 5.0 SDXL; empty: the same)"

    with gr.Blocks(title="FouriScale") as app:
        gr.Markdown(
            "# FouriScale\nTraining-free high-resolution images from Stable Diffusion (Huang et al., ECCV 2024)."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative")
                model = gr.Textbox(
                    label="Model (hub id, diffusers folder, .safetensors or tiny:sd1)",
                    value=studio.default_model or "",
                    elem_id="model",
                )
                size = gr.Dropdown(SIZE_CHOICES, value=first_choice, label="Size (width x height)", elem_id="size")
                with gr.Row():
                    width = gr.Number(value=first_w, label="Width", precision=0, elem_id="width")
                    height = gr.Number(value=first_h, label="Height", precision=0, elem_id="height")
                with gr.Row():
                    steps = gr.Slider(1, MAX_UI_STEPS, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Number(
                        value=default_guidance(start[1] if start else "sd1"), label=guidance_label, elem_id="guidance"
                    )
                with gr.Row():
                    seed = gr.Number(value=DEFAULT_SEED, label="Seed", precision=0, elem_id="seed")
                    dice = gr.Button("Random seed", elem_id="dice", scale=0)
                with gr.Accordion("FouriScale settings", open=False):
                    freeu = gr.Checkbox(value=True, label="FreeU (as the paper applied it)")
                    amp = gr.Checkbox(value=False, label="Amplified guidance before the start step (blurry SDXL)")
                    low_pass = gr.Checkbox(value=True, label="Low-pass filter (structural consistency)")
                    attention_guidance = gr.Checkbox(value=True, label="FouriScale guidance")
                    pad_then_crop = gr.Checkbox(value=True, label="Pad-then-crop (any aspect ratio)")
                    progressive = gr.Checkbox(value=True, label="Progressive dilation schedule")
                with gr.Accordion(
                    "Pictures in: img2img, inpainting, ControlNet, two-pass", open=False, elem_id="pictures-in"
                ):
                    init_image = gr.Image(
                        label="Input picture (img2img; fitted to the size)", type="filepath", elem_id="init-image"
                    )
                    strength = gr.Slider(
                        0.01,
                        1.0,
                        value=DEFAULT_STRENGTH,
                        step=0.01,
                        label=f"Strength ({DEFAULT_STRENGTH:g}; {DEFAULT_INPAINT_STRENGTH:g} when a mask is given)",
                        elem_id="strength",
                    )
                    mask = gr.Image(
                        label="Mask (white: repaint; the input picture's size)", type="filepath", elem_id="mask"
                    )
                    controlnet = gr.Textbox(
                        label="ControlNet (hub id, diffusers folder, .safetensors or tiny)", elem_id="controlnet"
                    )
                    control_image = gr.Image(label="ControlNet picture", type="filepath", elem_id="control-image")
                    control_scale = gr.Number(
                        value=DEFAULT_CONTROL_SCALE,
                        minimum=0,
                        maximum=10,
                        label="ControlNet scale",
                        elem_id="control-scale",
                    )
                    two_pass = gr.Checkbox(
                        value=False,
                        label="Two-pass: the model's own picture at its native size first, then FouriScale img2img",
                        elem_id="two-pass",
                    )
                compare = gr.Checkbox(value=False, label="Compare with direct inference (same seed)", elem_id="compare")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                result = gr.Image(label="FouriScale", type="filepath", elem_id="result", interactive=False, height=640)
                slider = gr.ImageSlider(
                    label="Direct inference | FouriScale", type="filepath", visible=False, elem_id="slider", height=640
                )
                input_view = gr.Image(
                    label="Input (as FouriScale started from it; two-pass: the first pass)",
                    visible=False,
                    elem_id="input-view",
                    interactive=False,
                    height=320,
                )
                info = gr.Markdown(elem_id="info")
                download = gr.File(label="Download (PNG with settings)", elem_id="download")
        texts, numbers = [prompt, negative, model], [width, height, steps, guidance, seed]
        switches = [freeu, amp, low_pass, attention_guidance, pad_then_crop, progressive, compare]
        pictures = [init_image, strength, mask, controlnet, control_image, control_scale, two_pass]
        dice.click(lambda: random.randint(0, 2**32 - 1), outputs=seed)
        size.change(on_size, inputs=[size, model], outputs=[width, height])
        model.blur(on_size, inputs=[size, model], outputs=[width, height])
        model.blur(on_model_guidance, inputs=[model, guidance], outputs=guidance)
        mask.change(on_mask, inputs=[mask, strength], outputs=strength)
        width.input(lambda: CUSTOM, outputs=size)
        height.input(lambda: CUSTOM, outputs=size)
        run.click(
            on_generate,
            inputs=texts + numbers + switches + pictures,
            outputs=[result, slider, input_view, download, info],
            concurrency_limit=1,
            preprocess=False,
            api_name="generate",
        )
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def check_address(host: str, port) -> None:
    """Refuse, in one line, a port outside 1..65535, a port in use and an address this machine cannot listen on."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError(f"--port {port}: choose a port from 1 to 65535 (default 7860)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            import errno

            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port}: already in use on {host}; choose another port with --port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host}: not an address of this machine; use 127.0.0.1 (or --public)") from None
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def launch(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
    dtype: str = "auto",
    model_config: str | None = None,
    out_dir: str = "outputs",
    block: bool = True,
    offload: str = "none",
    allow_pickle: bool = False,
):
    """Start the app on ``host:port`` (default 127.0.0.1:7860, this machine only) and print its URL. Gradio's
    analytics stay off unless ``GRADIO_ANALYTICS_ENABLED`` says otherwise. Returns 0 when the server stops (or
    the app itself with ``block=False``). Start-up problems (port, host, output folder, model) are one
    :class:`UserError` each."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs Gradio: pip install 'fouriscale[ui]'") from None
    check_address(host, port)
    studio = Studio(
        out_dir, device, dtype, model_config, default_model=model, offload=offload, allow_pickle=allow_pickle
    )
    if model:
        studio.model(model)  # load once, up front
    app = build_app(studio)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=True,
            quiet=True,
            show_error=True,
            allowed_paths=[str(studio.out.resolve())],
        )
    except OSError as exc:
        raise UserError(f"cannot start the web UI on {host}:{port} ({one_line(exc, 160)})") from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"fouriscale ui: serving on http://{shown}:{port} (Ctrl+C to stop)", flush=True)
    if not block:
        return app
    try:
        app.block_thread()
    finally:
        app.close()
    print("fouriscale ui: stopped", file=sys.stderr)
    return 0
