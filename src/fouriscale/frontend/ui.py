"""``fouriscale ui``: a local Gradio app to generate with FouriScale and compare with direct inference.

The model is loaded once and kept; requests run one at a time through a bounded queue; every mistake is
shown as a message in the page. Finished images are written like the CLI writes them (PNG with the
settings embedded, manifest line) and offered for download.
"""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path

from ..config import PAPER_PRESETS, FouriScaleConfig
from .jobs import Job, Recipe, finished_settings, output_name, render, save_image
from .loading import LoadedModel, UserError, load_pipeline, native_size

__all__ = ["Studio", "build_app", "launch", "SIZE_CHOICES", "QUEUE_SIZE"]

CUSTOM = "custom"
SIZE_CHOICES = ["2x native"] + sorted({f"{p.width}x{p.height}" for p in PAPER_PRESETS.values()}) + [CUSTOM]
QUEUE_SIZE = 8  # requests waiting behind the running one; more are turned away with a message


class Studio:
    """The app's state and work, independent of Gradio: keeps one loaded model, renders one request at a time."""

    def __init__(self, out_dir: str = "outputs", device: str = "auto", dtype: str = "auto",
                 model_config: str | None = None, default_model: str | None = None) -> None:  # fmt: skip
        self.out = Path(out_dir)
        self.device, self.dtype, self.model_config = device, dtype, model_config
        self.default_model = default_model
        self.loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def model(self, name: str) -> LoadedModel:
        """The loaded model, loading ``name`` only when it differs from the one kept."""
        name = (name or "").strip()
        if not name:
            raise UserError("enter a model: a hub id, a diffusers folder or a .safetensors file")
        if self.loaded is None or self.loaded.source != name:
            self.loaded = None
            self.loaded = load_pipeline(name, device=self.device, dtype=self.dtype, config=self.model_config)
            self.loaded.pipe.set_progress_bar_config(disable=True)
        return self.loaded

    def _next_index(self) -> int:
        indices = [int(m.group(1)) for p in self.out.glob("*.png") if (m := re.match(r"(\d+)-", p.name))]
        return max(indices, default=-1) + 1

    def generate(self, prompt: str, negative: str, model: str, size: str, width, height, steps, guidance, seed,
                 freeu: bool, amp_guidance: bool, low_pass: bool, attention_guidance: bool, pad_then_crop: bool,
                 progressive: bool, compare: bool, progress=None) -> dict:  # fmt: skip
        """Render one request; returns ``{"image": path, "direct": path or None, "info": text}``."""
        if not (prompt or "").strip():
            raise UserError("enter a prompt")
        steps, seed = _int(steps, "steps", 1, 1000), _int(seed, "seed", 0, 2**63 - 1)
        guidance = _float(guidance, "guidance")
        with self._lock:
            loaded = self.model(model)
            pipe = loaded.pipe
            height, width = self._size(loaded, size, width, height)
            config = FouriScaleConfig(freeu="paper" if freeu else None, amp_guidance=bool(amp_guidance),
                                      low_pass=bool(low_pass), attention_guidance=bool(attention_guidance),
                                      pad_then_crop=bool(pad_then_crop), progressive=bool(progressive))  # fmt: skip
            import fouriscale

            fouriscale.apply_fouriscale(pipe, config)
            try:
                plan = fouriscale.get_plan(pipe, height, width, steps)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            recipe = Recipe(model=loaded.source, height=height, width=width, steps=steps, guidance_scale=guidance,
                            negative_prompt=(negative or "").strip() or None, scheduler="ddim", eta=1.0,
                            dtype=str(pipe.unet.dtype).replace("torch.", ""), config=config, compare=bool(compare))  # fmt: skip
            self.out.mkdir(parents=True, exist_ok=True)
            job = Job(self._next_index(), prompt.strip(), seed)
            methods = ["fouriscale"] + (["direct"] if compare else [])
            paths = {}
            for n, method in enumerate(methods):
                on_step = None
                if progress is not None:

                    def on_step(i, n=n, method=method):
                        done = (n * steps + i + 1) / (len(methods) * steps)
                        progress(done, desc=f"{method}: step {i + 1}/{steps}")

                image = render(pipe, recipe, job, method, on_step=on_step)
                settings = finished_settings(recipe, job, method, output_name(job, method), plan)
                save_image(image, self.out, settings)
                paths[method] = str(self.out / settings["file"])
        info = (f"{width}x{height}, {steps} steps, seed {seed}: dilation {plan.dilation}, base "
                f"{plan.base_size[1]:g}x{plan.base_size[0]:g}" + (" (FouriScale is a no-op at this size)" if plan.noop else ""))  # fmt: skip
        return {"image": paths["fouriscale"], "direct": paths.get("direct"), "info": info}

    @staticmethod
    def _size(loaded: LoadedModel, size: str, width, height) -> tuple[int, int]:
        if size == CUSTOM:
            h, w = _int(height, "height", 1, 16384), _int(width, "width", 1, 16384)
        elif size == SIZE_CHOICES[0] or not size:
            h, w = (2 * v for v in native_size(loaded.pipe))
        else:
            w, h = (int(v) for v in size.split("x"))
        for name, value in (("height", h), ("width", w)):
            if value % 8:
                raise UserError(f"{name} {value} is not a multiple of 8 pixels")
        return h, w


def _int(value, name: str, lo: int, hi: int) -> int:
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a whole number") from None
    if float(value) != number or not lo <= number <= hi:
        raise UserError(f"{name} must be a whole number between {lo} and {hi}")
    return number


def _float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number") from None


def build_app(studio: Studio):
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    def on_generate(prompt, negative, model, size, width, height, steps, guidance, seed, freeu, amp, low_pass,
                    attention_guidance, pad_then_crop, progressive, compare, progress=gr.Progress()):  # fmt: skip
        try:
            result = studio.generate(prompt, negative, model, size, width, height, steps, guidance, seed, freeu, amp,
                                     low_pass, attention_guidance, pad_then_crop, progressive, compare,
                                     progress=progress)  # fmt: skip
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # never a crash: show it in the page
            raise gr.Error(f"{type(exc).__name__}: {exc}", print_exception=False) from None
        slider = (result["direct"], result["image"]) if result["direct"] else None
        return result["image"], result["image"], gr.update(value=slider, visible=slider is not None), result["info"]

    with gr.Blocks(title="FouriScale") as app:
        gr.Markdown("# FouriScale\nTraining-free high-resolution images from Stable Diffusion (Huang et al., ECCV 2024).")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative")
                model = gr.Textbox(label="Model (hub id, diffusers folder or .safetensors)", value=studio.default_model or "",
                                   elem_id="model")  # fmt: skip
                size = gr.Dropdown(SIZE_CHOICES, value=SIZE_CHOICES[0], label="Size (width x height)", elem_id="size")
                with gr.Row():
                    width = gr.Number(value=2048, label="Width (custom)", precision=0, elem_id="width")
                    height = gr.Number(value=2048, label="Height (custom)", precision=0, elem_id="height")
                with gr.Row():
                    steps = gr.Slider(1, 150, value=50, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Number(value=7.5, label="Guidance scale", elem_id="guidance")
                with gr.Row():
                    seed = gr.Number(value=23, label="Seed", precision=0, elem_id="seed")
                    dice = gr.Button("Random seed", elem_id="dice", scale=0)
                with gr.Accordion("FouriScale settings", open=False):
                    freeu = gr.Checkbox(value=True, label="FreeU (as the paper applied it)")
                    amp = gr.Checkbox(value=False, label="Amplified guidance before the start step (blurry SDXL)")
                    low_pass = gr.Checkbox(value=True, label="Low-pass filter (structural consistency)")
                    attention_guidance = gr.Checkbox(value=True, label="FouriScale guidance")
                    pad_then_crop = gr.Checkbox(value=True, label="Pad-then-crop (any aspect ratio)")
                    progressive = gr.Checkbox(value=True, label="Progressive dilation schedule")
                compare = gr.Checkbox(value=False, label="Compare with direct inference (same seed)", elem_id="compare")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                result = gr.Image(label="FouriScale", type="filepath", elem_id="result", interactive=False)
                slider = gr.ImageSlider(label="Direct inference | FouriScale", type="filepath", visible=False,
                                        elem_id="slider")  # fmt: skip
                download = gr.File(label="Download (PNG with settings)", elem_id="download")
                info = gr.Markdown(elem_id="info")
        dice.click(lambda: random.randint(0, 2**31 - 1), outputs=seed)
        run.click(on_generate, inputs=[prompt, negative, model, size, width, height, steps, guidance, seed, freeu, amp,
                                       low_pass, attention_guidance, pad_then_crop, progressive, compare],
                  outputs=[result, download, slider, info], concurrency_limit=1)  # fmt: skip
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def launch(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
           dtype: str = "auto", model_config: str | None = None, out_dir: str = "outputs", block: bool = True):  # fmt: skip
    """Start the app on ``host:port`` (local only by default). Returns 0 when the server stops (or the app
    itself with ``block=False``)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs Gradio: pip install 'fouriscale[ui]'") from None
    studio = Studio(out_dir=out_dir, device=device, dtype=dtype, model_config=model_config, default_model=model)
    if model:
        studio.model(model)  # load once, up front
    app = build_app(studio)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
               quiet=True, allowed_paths=[str(Path(out_dir).resolve())])  # fmt: skip
    return app if not block else 0
