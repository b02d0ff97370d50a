"""``fouriscale ui``: a local Gradio app to generate with FouriScale and compare with direct inference.

The model is loaded once and kept; requests run one at a time through a bounded queue; every mistake is
shown as a message in the page, including typed API input that is not what the field holds (inputs reach
:meth:`Studio.generate` unprocessed and are checked there). Finished images are written like the CLI writes
them (PNG with the settings embedded, manifest line, same folder lock) and offered for download.

The size fields are the size that will be made: choosing a size in the dropdown fills them, editing them
switches the dropdown to "custom". Defaults are the CLI's (:mod:`..defaults`): 50 steps, seed 23, guidance
by family (7.5 SD, 5.0 SDXL) when the field is left empty.

Pictures in follow the CLI's rules (:mod:`..sources`): an input picture (img2img, with a strength), an optional
mask of the input picture's size (inpainting), a ControlNet with its conditioning picture, and the two-pass
switch; pictures of another size are fitted to the target size by :func:`fouriscale.images.fit_image`, and what
was done is said under the result. With an input picture the page also shows it, as FouriScale started from it
(for two-pass: the native-size first pass), next to the result or the direct/FouriScale slider.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import time

from ...profiles import FAMILIES
from ..defaults import (
    DEFAULT_CONTROL_SCALE,
    DEFAULT_INPAINT_STRENGTH,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    default_guidance,
    default_size,
)
from ..errors import UserError, one_line
from .studio import CUSTOM, MAX_UI_STEPS, NATIVE, SIZE_CHOICES, Studio

__all__ = ["build_app", "launch", "check_address", "QUEUE_SIZE", "FALLBACK_SIZE"]

QUEUE_SIZE = 8  # requests waiting behind the running one; more are turned away with a message
FALLBACK_SIZE = (1024, 1024)


def build_app(studio: Studio):
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    with gr.Blocks(title="FouriScale") as app:
        gr.Markdown(
            "# FouriScale\nTraining-free high-resolution images from Stable Diffusion (Huang et al., ECCV 2024)."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                fields = _request_fields(gr, studio)
                fields.update(_picture_fields(gr))
                fields["compare"] = gr.Checkbox(
                    value=False, label="Compare with direct inference (same seed)", elem_id="compare"
                )
                fields["run"] = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                fields.update(_result_fields(gr))
        _connect(gr, studio, fields)
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def _request_fields(gr, studio: Studio) -> dict:
    """Prompt, model, size, steps, guidance, seed and the FouriScale switches, filled for the default model."""
    start = studio.native(studio.default_model) if studio.default_model else None
    first_h, first_w = default_size(start[0]) if start else FALLBACK_SIZE
    guidance_label = "Guidance scale (the model's default: 7.5 SD / 5.0 SDXL; empty: the same)"
    f = {
        "prompt": gr.Textbox(label="Prompt", lines=3, elem_id="prompt"),
        "negative": gr.Textbox(label="Negative prompt", elem_id="negative"),
        "model": gr.Textbox(
            label="Model (hub id, diffusers folder, .safetensors or tiny:sd1)",
            value=studio.default_model or "",
            elem_id="model",
        ),
        "size": gr.Dropdown(
            SIZE_CHOICES, value=NATIVE if start else CUSTOM, label="Size (width x height)", elem_id="size"
        ),
    }
    with gr.Row():
        f["width"] = gr.Number(value=first_w, label="Width", precision=0, elem_id="width")
        f["height"] = gr.Number(value=first_h, label="Height", precision=0, elem_id="height")
    with gr.Row():
        f["steps"] = gr.Slider(1, MAX_UI_STEPS, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
        guidance = default_guidance(start[1] if start else "sd1")
        f["guidance"] = gr.Number(value=guidance, label=guidance_label, elem_id="guidance")
    with gr.Row():
        f["seed"] = gr.Number(value=DEFAULT_SEED, label="Seed", precision=0, elem_id="seed")
        f["dice"] = gr.Button("Random seed", elem_id="dice", scale=0)
    with gr.Accordion("FouriScale settings", open=False):
        f["freeu"] = gr.Checkbox(value=True, label="FreeU (as the paper applied it)")
        f["amp"] = gr.Checkbox(value=False, label="Amplified guidance before the start step (blurry SDXL)")
        f["low_pass"] = gr.Checkbox(value=True, label="Low-pass filter (structural consistency)")
        f["attention_guidance"] = gr.Checkbox(value=True, label="FouriScale guidance")
        f["pad_then_crop"] = gr.Checkbox(value=True, label="Pad-then-crop (any aspect ratio)")
        f["progressive"] = gr.Checkbox(value=True, label="Progressive dilation schedule")
        f["max_memory"] = gr.Textbox(
            label="Memory budget (e.g. 12GB or 11GiB; empty: none): the fastest settings whose estimated peak fits, "
            "said under the result",
            elem_id="max-memory",
        )
    return f


def _picture_fields(gr) -> dict:
    """The pictures a generation starts from: img2img, inpainting, ControlNet, two-pass."""
    f = {}
    with gr.Accordion("Pictures in: img2img, inpainting, ControlNet, two-pass", open=False, elem_id="pictures-in"):
        f["init_image"] = gr.Image(
            label="Input picture (img2img; fitted to the size)", type="filepath", elem_id="init-image"
        )
        f["strength"] = gr.Slider(
            0.01,
            1.0,
            value=DEFAULT_STRENGTH,
            step=0.01,
            label=f"Strength ({DEFAULT_STRENGTH:g}; {DEFAULT_INPAINT_STRENGTH:g} when a mask is given)",
            elem_id="strength",
        )
        f["mask"] = gr.Image(label="Mask (white: repaint; the input picture's size)", type="filepath", elem_id="mask")
        f["controlnet"] = gr.Textbox(
            label="ControlNet (hub id, diffusers folder, .safetensors or tiny)", elem_id="controlnet"
        )
        f["control_image"] = gr.Image(label="ControlNet picture", type="filepath", elem_id="control-image")
        f["control_scale"] = gr.Number(
            value=DEFAULT_CONTROL_SCALE, minimum=0, maximum=10, label="ControlNet scale", elem_id="control-scale"
        )
        f["two_pass"] = gr.Checkbox(
            value=False,
            label="Two-pass: the model's own picture at its native size first, then FouriScale img2img",
            elem_id="two-pass",
        )
    return f


def _result_fields(gr) -> dict:
    """The result (or the direct/FouriScale slider), the input as FouriScale started from it, notes, download."""
    return {
        "result": gr.Image(label="FouriScale", type="filepath", elem_id="result", interactive=False, height=640),
        "slider": gr.ImageSlider(
            label="Direct inference | FouriScale", type="filepath", visible=False, elem_id="slider", height=640
        ),
        "input_view": gr.Image(
            label="Input (as FouriScale started from it; two-pass: the first pass)",
            visible=False,
            elem_id="input-view",
            interactive=False,
            height=320,
        ),
        "info": gr.Markdown(elem_id="info"),
        "download": gr.File(label="Download (PNG with settings)", elem_id="download"),
    }


#: The fields :meth:`Studio.generate` takes, in its order.
GENERATE_INPUTS = (
    *("prompt", "negative", "model", "width", "height", "steps", "guidance", "seed"),
    *("freeu", "amp", "low_pass", "attention_guidance", "pad_then_crop", "progressive", "compare"),
    *("init_image", "strength", "mask", "controlnet", "control_image", "control_scale", "two_pass"),
    "max_memory",
)


def _connect(gr, studio: Studio, f: dict) -> None:
    """The page's events: the size dropdown and the model fill the fields, a mask moves the strength, Generate."""
    f["dice"].click(lambda: random.randint(0, 2**32 - 1), outputs=f["seed"])
    f["size"].change(lambda c, m: _size_update(gr, studio, c, m), inputs=[f["size"], f["model"]],
                     outputs=[f["width"], f["height"]])  # fmt: skip
    f["model"].blur(lambda c, m: _size_update(gr, studio, c, m), inputs=[f["size"], f["model"]],
                    outputs=[f["width"], f["height"]])  # fmt: skip
    f["model"].blur(lambda m, g: _guidance_update(gr, studio, m, g), inputs=[f["model"], f["guidance"]],
                    outputs=f["guidance"])  # fmt: skip
    f["mask"].change(lambda m, s: _strength_update(gr, m, s), inputs=[f["mask"], f["strength"]], outputs=f["strength"])
    f["width"].input(lambda: CUSTOM, outputs=f["size"])
    f["height"].input(lambda: CUSTOM, outputs=f["size"])

    def on_generate(*values, progress=gr.Progress()):
        return _generated(gr, studio, values, progress)

    f["run"].click(
        on_generate,
        inputs=[f[name] for name in GENERATE_INPUTS],
        outputs=[f[name] for name in ("result", "slider", "input_view", "download", "info")],
        concurrency_limit=1,
        preprocess=False,
        api_name="generate",
    )


def _generated(gr, studio: Studio, values, progress) -> tuple:
    """Generate and show the result: the image, or the direct/FouriScale slider; the input when there is one; a
    mistake or failure as a message in the page, never a crash."""
    try:
        result = studio.generate(*values, progress=progress)
    except UserError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    except Exception as exc:
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


def _size_update(gr, studio: Studio, choice, model):
    """The width and height a size choice stands for (unchanged for "custom" or an unknown model)."""
    size = studio.size_for(choice, model)
    if size is None:
        return gr.update(), gr.update()
    return gr.update(value=size[1]), gr.update(value=size[0])


def _guidance_update(gr, studio: Studio, model, guidance):
    """The family's guidance when the model changes, unless the field holds a value typed by the user."""
    native = studio.native(model)
    defaults = {None, *(default_guidance(name) for name in FAMILIES)}
    if native is None or guidance not in defaults:
        return gr.update()
    return gr.update(value=default_guidance(native[1]))


def _strength_update(gr, mask, strength):
    """A mask given: the inpainting strength (1.0); taken away: the img2img one (0.6); a moved slider stays."""
    if mask and strength == DEFAULT_STRENGTH:
        return gr.update(value=DEFAULT_INPAINT_STRENGTH)
    if not mask and strength == DEFAULT_INPAINT_STRENGTH:
        return gr.update(value=DEFAULT_STRENGTH)
    return gr.update()


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
    analytics stay off unless ``GRADIO_ANALYTICS_ENABLED`` says otherwise. Serves until interrupted (Ctrl+C: the
    server is closed and the ``KeyboardInterrupt`` goes on to the caller), or returns the app itself with
    ``block=False``. Start-up problems (port, host, output folder, model) are one :class:`UserError` each."""
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
        while True:  # serve until Ctrl+C, which reaches the caller as KeyboardInterrupt (the CLI: exit status 130)
            time.sleep(0.2)
    finally:
        app.close()
