"""What a rendering starts from besides its prompt: init images, a mask, ControlNets with their pictures, two-pass
settings. One set of rules for the CLI and the web UI, checked before any model is loaded or anything rendered:

* ``--mask`` needs an init image, and must have its init image's size (it is fitted to the target size with it:
  a mask of another size is refused, not stretched, since it was drawn for its own picture);
* ``--two-pass`` makes its own first picture, so it does not take an init image;
* each ``--controlnet`` has one ``--control-image`` (paired in order) and one scale, or one scale for all;
* ``--strength`` is in (0, 1] and must leave at least one denoising step (``int(strength * steps) >= 1``);
  default 0.6 (img2img, ``upscale``, two-pass), 1.0 for inpainting.

Pictures whose size differs from the target are fitted by :func:`fouriscale.images.fit_image` (resized when the
aspect ratio matches within 1%, else centre-cropped to the target's aspect first); a crop, and a control
image that has to be upscaled (its edges blur), are reported as warnings before rendering.

Messages name the CLI's options, or the web UI's fields with ``labels=UI_NAMES``
(:mod:`~fouriscale.frontend.fields`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

from ..images import fit_image
from .controlnets import Control, ControlSource, check_fit, check_source
from .defaults import DEFAULT_CONTROL_SCALE, DEFAULT_INPAINT_STRENGTH, DEFAULT_STRENGTH
from .errors import UserError
from .fields import CLI_NAMES
from .pictures import Picture, read_picture

__all__ = [
    "Sources",
    "check_sources",
    "check_mask_sizes",
    "check_steps_run",
    "fit_warnings",
]


@dataclass
class Sources:
    """Checked inputs of one run (the pictures are checked files, not yet fitted to a size)."""

    init: Picture | None = None
    mask: Picture | None = None
    controls: list[tuple[ControlSource, Picture, float]] | None = None
    strength: float | None = None
    two_pass: bool = False
    upscale: str = "pixel"
    official: bool = False

    def control_objects(self) -> tuple[Control, ...]:
        return tuple(Control(source.spec, picture, scale) for source, picture, scale in self.controls or ())

    def check_model(self, unet, vae_scale_factor: int) -> None:
        """Every ControlNet fits this UNet (family, widths, channels, downsampling); ``UserError`` otherwise."""
        for source, _, _ in self.controls or ():
            check_fit(source, unet.config, vae_scale_factor)


def check_sources(
    *,
    init: str | None = None,
    mask: str | None = None,
    job_pictures: list[Picture | None] = (),
    controlnets: list[str] = (),
    control_images: list[str] = (),
    control_scales: list[float] = (),
    strength: float | None = None,
    two_pass: bool = False,
    upscale: str | None = None,
    official: bool = False,
    allow_pickle: bool = False,
    has_own_pictures: bool = False,
    labels: Mapping = CLI_NAMES,
) -> Sources:
    """Check the combination and every file (pictures decode, ControlNets found and readable); no weights are
    read. ``job_pictures``: the per-job init images (a prompts file's pictures); ``has_own_pictures``: every job
    has one (the ``upscale`` command)."""
    L = labels
    pictures = [p for p in job_pictures if p is not None]
    every_job = has_own_pictures or (job_pictures and all(p is not None for p in job_pictures))
    if two_pass and (init or pictures or has_own_pictures):
        raise UserError(
            f"{L['two_pass']} makes its own first picture and cannot start from {L['init']}; use one or the other"
        )
    if upscale is not None and not two_pass:
        raise UserError(f"{L['upscale']} is the upscale between the passes of {L['two_pass']}; add {L['two_pass']}")
    if mask and not (init or every_job):
        raise UserError(f"{L['mask']} needs {L['init']}: the picture to inpaint")
    if strength is not None and not (init or pictures or has_own_pictures or two_pass):
        raise UserError(
            f"{L['strength']} is for {L['init']} or {L['two_pass']}; without a picture to start from, remove it"
        )
    if control_images and not controlnets:
        raise UserError(f"{L['control_image']} needs {L['controlnet']} MODEL (one per picture, in order)")
    if controlnets and not control_images:
        raise UserError(f"{L['controlnet']} needs {L['control_image']} PATH (one per ControlNet, in order)")
    if len(controlnets) != len(control_images):
        raise UserError(
            f"{len(controlnets)} {L['controlnet']} but {len(control_images)} {L['control_image']}: give one picture "
            "per ControlNet, in order"
        )
    if control_scales and not controlnets:
        raise UserError(f"{L['control_scale']} needs {L['controlnet']}")
    if official and not controlnets:
        raise UserError(f"{L['official']} is a ControlNet recipe; add {L['controlnet']} and {L['control_image']}")
    if len(control_scales) not in (0, 1, len(controlnets)):
        raise UserError(
            f"{len(control_scales)} {L['control_scale']} for {len(controlnets)} ControlNets: give one for all or one "
            "each, in order"
        )
    init_picture = read_picture(init, L["init"]) if init else None
    mask_picture = read_picture(mask, L["mask"]) if mask else None
    if mask_picture is not None:
        check_mask_sizes(mask_picture, ([init_picture] if init_picture else []) + pictures, labels)
    sources = [check_source(spec, allow_pickle, labels) for spec in controlnets]
    images = [read_picture(path, L["control_image"]) for path in control_images]
    default = 0.5 if official else DEFAULT_CONTROL_SCALE
    scales = list(control_scales) or [default]
    scales = scales * len(controlnets) if len(scales) == 1 else scales
    if strength is None and (init or pictures or has_own_pictures or two_pass):
        strength = DEFAULT_INPAINT_STRENGTH if mask else DEFAULT_STRENGTH
    return Sources(
        init=init_picture,
        mask=mask_picture,
        controls=list(zip(sources, images, scales)),
        strength=strength,
        two_pass=two_pass,
        upscale=upscale or "pixel",
        official=official,
    )


def check_mask_sizes(mask: Picture, inits: list[Picture], labels: Mapping = CLI_NAMES) -> None:
    """A mask must have the size of the picture it is for (refused otherwise, not stretched)."""
    for init in inits:
        if init.size != mask.size:
            raise UserError(
                f"{labels['mask']} {mask.path} is {mask.width}x{mask.height} but {init.path} is "
                f"{init.width}x{init.height}: a mask must have the size of its picture"
            )


def check_steps_run(strength: float | None, steps: int, labels: Mapping = CLI_NAMES) -> None:
    """img2img runs ``int(strength * steps)`` steps: refuse a strength that leaves none."""
    if strength is not None and int(strength * steps) < 1:
        raise UserError(
            f"{labels['strength']} {strength:g} with {steps} steps runs no denoising step (int(strength x steps) = "
            f"0); raise {labels['strength']} or {labels['steps']}"
        )


def _note(size: tuple[int, int], height: int, width: int) -> str | None:
    """What :func:`fouriscale.images.fit_image` will do to a picture of ``size`` (w, h): its own note."""
    return fit_image(Image.new("L", size), height, width, mask=True)[1]


def fit_warnings(
    height: int, width: int, inits: list[Picture] = (), controls: list[Picture] = (), paths: bool = True
) -> list[str]:
    """Warning lines for fitting the pictures to ``width`` x ``height``: an init image that is cropped (its aspect
    ratio differs), a control image that is cropped or upscaled. Each picture is named once (its option and path,
    or with ``paths=False`` its option only)."""
    lines, seen = [], set()
    for picture, warn_upscale in [(p, False) for p in inits] + [(p, True) for p in controls]:
        if (picture.path, warn_upscale) in seen:
            continue
        seen.add((picture.path, warn_upscale))
        note = _note(picture.size, height, width)
        if note and ("cropped" in note or (warn_upscale and "upscaled" in note)):
            name = f"{picture.option} {picture.path}" if paths else picture.option
            lines.append(f"{name}: {note} to fit {width}x{height}")
    return lines
