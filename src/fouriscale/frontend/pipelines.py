"""The diffusers pipeline for each kind of job, made from the one loaded text-to-image pipeline with ``from_pipe``
(same UNet, VAE, text encoders and FouriScale patch; no weights copied), and the call arguments of each.

=============  ==========================================  ===============================================
task           without ControlNet                          with ``--controlnet``
=============  ==========================================  ===============================================
text2img       ``StableDiffusion(XL)Pipeline``             ``StableDiffusion(XL)ControlNetPipeline``
img2img        ``StableDiffusion(XL)Img2ImgPipeline``      ``StableDiffusion(XL)ControlNetImg2ImgPipeline``
inpaint        ``StableDiffusion(XL)InpaintPipeline``      ``StableDiffusion(XL)ControlNetInpaintPipeline``
=============  ==========================================  ===============================================

Several ControlNets run as diffusers' ``MultiControlNetModel``, their images and scales paired in order.
"""

from __future__ import annotations

import inspect

# diffusers' model and pipeline classes (and transformers' models) are imported where they are used: each adds
# 1-2 s and 300-500 modules to `import fouriscale` (docs/architecture.md, "Imports").
__all__ = ["TASKS", "Pipelines", "pipeline_class_name", "call_arguments"]

TASKS = ("text2img", "img2img", "inpaint")


def pipeline_class_name(xl: bool, controlnet: bool, task: str) -> str:
    """The diffusers class of a task: ``StableDiffusion[XL][ControlNet][Img2Img|Inpaint]Pipeline``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    suffix = {"text2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[task]
    return f"StableDiffusion{'XL' if xl else ''}{'ControlNet' if controlnet else ''}{suffix}Pipeline"


def _accepts(pipe, name: str) -> bool:
    return name in inspect.signature(type(pipe).__call__).parameters


class Pipelines:
    """The loaded pipeline (``base``) and the ones made from it for other tasks, each made once and kept."""

    def __init__(self, base, controlnet=None) -> None:
        self.base = base
        self.controlnet = controlnet
        self._made: dict[str, object] = {}

    @property
    def xl(self) -> bool:
        return self.base.unet.config.addition_embed_type == "text_time"

    def get(self, task: str = "text2img"):
        """The pipeline for ``task`` (``text2img``, ``img2img`` or ``inpaint``), with the ControlNet if any."""
        if task == "text2img" and self.controlnet is None:
            return self.base
        if task not in self._made:
            import diffusers

            cls = getattr(diffusers, pipeline_class_name(self.xl, self.controlnet is not None, task))
            extra = {"controlnet": self.controlnet} if self.controlnet is not None else {}
            pipe = cls.from_pipe(self.base, **extra)
            config = getattr(self.base, "_progress_bar_config", None)
            if config is not None:
                pipe.set_progress_bar_config(**config)
            self._made[task] = pipe
        return self._made[task]


def call_arguments(
    pipe, task: str, height: int, width: int, *, init=None, mask=None, controls=(), scales=(), strength=None
) -> dict:
    """Keyword arguments of one call of ``pipe`` for ``task``: the fitted pictures (``init``, ``mask``, the
    ``controls`` list with their ``scales``), ``strength`` and the size where the pipeline takes one."""
    kwargs: dict = {}
    if task in ("img2img", "inpaint"):
        kwargs.update(image=init, strength=strength)
    if task == "inpaint":
        kwargs["mask_image"] = mask
    if controls:
        control = list(controls) if len(controls) > 1 else controls[0]
        scale = [float(s) for s in scales] if len(scales) > 1 else float(scales[0])
        kwargs["image" if task == "text2img" else "control_image"] = control
        kwargs["controlnet_conditioning_scale"] = scale
    for name, value in (("height", height), ("width", width)):
        if _accepts(pipe, name):
            kwargs[name] = value
    return kwargs
