"""The one request path of the front ends: from what a user asked for (a :class:`Request`) to a model with
FouriScale applied and a :class:`Ready` run (recipe, plan, pipelines), in the order that fails fastest.

1. :func:`check_request`, before any weights are read (diffusers folders, hub ids, tiny models: the UNet's config
   on the meta device): the size, steps and plan (the library's checks), the caller's own check (``compare``'s
   layout), the ControlNets against the model, that the strength leaves a step; warnings (far beyond the native
   size, pictures cropped or upscaled to fit) are returned as notes. With a memory budget, the settings that fit it
   (:func:`fit_budget` on the weightless pipeline), or the refusal.
2. :func:`load_model`: the model with its scheduler, LoRAs, dtype and placement (the CPU offload the budget chose).
3. :func:`get_ready`: the plan again on the loaded pipeline (and, for single files, the checks of step 1 and the
   budget's choice), FouriScale applied, the ControlNets loaded (kept in the caller's cache if it gives one), the
   recipe.

The command line (``generate``, ``upscale``, ``compare``, ``benchmark-quality``) and the web UI are adapters that
turn their inputs into a :class:`Request` and render the :class:`Ready` run's jobs (:mod:`.batch` or
:mod:`.render`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import fouriscale

from ..config import PAPER_PRESETS, FouriScaleConfig
from ..diffusers.describe import detect_profile
from ..memory import BudgetChoice
from ..profiles import FAMILIES
from ..two_pass import first_pass_size
from .controlnets import combine, load_controlnet
from .defaults import DEFAULT_ETA, DEFAULT_SCHEDULER, DEFAULT_STEPS, default_guidance, default_size
from .errors import UserError, user_errors
from .fields import CLI_NAMES
from .loading import LoadedModel, load_estimate_source, load_pipeline, load_plan_source, native_size, resolve_dtype
from .pipelines import Pipelines
from .recipe import Recipe
from .sources import Sources, check_steps_run, fit_warnings

__all__ = [
    "Size",
    "Request",
    "Prepared",
    "Ready",
    "check_request",
    "load_model",
    "get_ready",
    "plan_request",
    "fit_budget",
]


@dataclass(frozen=True)
class Size:
    """The size and steps asked for: explicit, a paper preset's, or (default) twice the native size, 50 steps."""

    height: int | None = None
    width: int | None = None
    preset: str | None = None
    steps: int | None = None

    def resolve(self, native: tuple[int, int], family: str, label: str = "--preset") -> tuple[int, int, int]:
        """``(height, width, steps)``; a preset of the other family (SD vs SDXL) is refused."""
        height, width, steps = self.height, self.width, self.steps
        if self.preset:
            preset = PAPER_PRESETS[self.preset]
            if FAMILIES[preset.family].bucketed != FAMILIES[family].bucketed:
                raise UserError(
                    f"{label} {self.preset} is for {FAMILIES[preset.family].label}; this model is "
                    f"{FAMILIES[family].label}"
                )
            height = preset.height if height is None else height
            width = preset.width if width is None else width
            steps = preset.num_inference_steps if steps is None else steps
        fallback = default_size(native)
        height = fallback[0] if height is None else height
        width = fallback[1] if width is None else width
        return height, width, DEFAULT_STEPS if steps is None else steps


@dataclass(frozen=True)
class Request:
    """One rendering request, its inputs already checked one by one (the pictures and ControlNets in ``sources``).

    ``config(steps)`` gives the run's FouriScale settings for its step count (a preset's start and stop steps are
    rescaled to it); ``guidance`` ``None``: the preset's, else the family's; ``labels``: how messages name the
    request's inputs (the CLI's options, or the web UI's fields), with the pictures' paths unless ``name_paths`` is
    false. ``max_memory``: a memory budget in bytes (the settings and CPU offload are chosen to fit it:
    :func:`fit_budget`), ``None`` for none.
    """

    model: str
    config: Callable[[int], FouriScaleConfig] = lambda steps: FouriScaleConfig()
    size: Size = Size()
    guidance: float | None = None
    negative: str | None = None
    scheduler: str = DEFAULT_SCHEDULER
    eta: float = DEFAULT_ETA
    sources: Sources = field(default_factory=Sources)
    loras: tuple[tuple[str, float], ...] = ()
    compare: bool = False
    model_config: str | None = None
    allow_pickle: bool = False
    dtype: str = "auto"
    offload: str = "none"
    max_memory: int | None = None
    labels: Mapping = field(default_factory=lambda: CLI_NAMES)
    name_paths: bool = True  # warnings about a picture name its file, not only its input


@dataclass(frozen=True)
class Prepared:
    """A request's size, steps, settings and plan, checked by the library, and what to tell the user first."""

    height: int
    width: int
    steps: int
    config: FouriScaleConfig
    plan: fouriscale.Plan
    notes: tuple[str, ...] = ()
    memory: BudgetChoice | None = None  # what the memory budget chose (already in ``config`` and ``plan``)


@dataclass(frozen=True)
class Ready:
    """A request ready to render: the loaded model, its pipelines (ControlNets included), the recipe and plan."""

    loaded: LoadedModel
    pipes: Pipelines
    recipe: Recipe
    plan: fouriscale.Plan
    notes: tuple[str, ...] = ()


def plan_request(
    request: Request,
    target,
    family: str,
    native: tuple[int, int],
    vae_scale_factor=None,
    vae=None,
    memory: BudgetChoice | None = None,
):
    """:class:`Prepared` for a pipeline or a (meta-device) UNet: size, steps and config resolved (with the settings
    a memory budget chose, ``memory``), the plan made by the library (a size or setting it cannot take is a
    :class:`UserError` with its message)."""
    height, width, steps = request.size.resolve(native, family)
    with user_errors(labels=request.labels):
        config = request.config(steps)
        if memory is not None:
            config = config.replace(**memory.overrides)
        plan = fouriscale.get_plan(target, height, width, steps, config, vae_scale_factor=vae_scale_factor, vae=vae)
    if memory is not None:
        plan = replace(plan, memory=memory)
    return Prepared(height, width, steps, config, plan, memory=memory)


def fit_budget(request: Request, prepared: Prepared, pipe, device: str) -> BudgetChoice:
    """The fastest settings and CPU offload whose estimated peak on ``device`` is within ``request.max_memory``
    (:func:`fouriscale.fit_memory` on ``pipe``, weightless or loaded, in the request's dtype; an ``--offload`` given
    is kept; the CPU has no offload). Nothing fits: a :class:`UserError` with the estimate and the budget."""
    offload = "none" if device == "cpu" else (None if request.offload == "none" else request.offload)
    guided = request.guidance is None or request.guidance > 1
    with user_errors(labels=request.labels):
        return fouriscale.fit_memory(
            pipe,
            prepared.height,
            prepared.width,
            prepared.steps,
            request.max_memory,
            prepared.config,
            dtype=resolve_dtype(request.dtype, device),
            device=device,
            offload=offload,
            guidance=guided,
        )


def _checked(request: Request, prepared: Prepared, unet, factor: int, check, inits, fit: bool) -> Prepared:
    """The checks that need the size and the model: the caller's ``check(height, width)``, the ControlNets against
    the UNet, a strength that leaves a step; the warnings to give (far beyond the native size, a low-pass filter that
    changes nothing at this size, and with ``fit`` the pictures cropped or upscaled to fit)."""
    if check is not None:
        check(prepared.height, prepared.width)
    request.sources.check_model(unet, factor)
    check_steps_run(request.sources.strength, prepared.steps, request.labels)
    plan = prepared.plan
    notes = [plan.far_beyond_native_text] if plan.far_beyond_native else []
    notes += [plan.low_pass_idle_text] if plan.low_pass_idle else []
    if fit:
        controls = [picture for _, picture, _ in request.sources.controls or ()]
        pictures = [p for p in inits if p is not None]
        notes += fit_warnings(prepared.height, prepared.width, pictures, controls, paths=request.name_paths)
    return replace(prepared, notes=tuple(notes))


def check_request(request: Request, *, check=None, inits=(), fit: bool = True, device: str = "cpu") -> Prepared | None:
    """Step 1, before the weights: ``None`` for single-file checkpoints (checked when loaded, in :func:`get_ready`).
    ``inits`` are the pictures whose fitting to the size is reported (with ``fit``); ``device``: where the run will
    be (what a memory budget is for)."""
    if Path(request.model).expanduser().is_file():
        return None
    unet, factor, vae = load_plan_source(request.model, request.model_config, request.labels)
    with user_errors(labels=request.labels):
        profile = detect_profile(unet, factor)
    family, native = profile.family.name, profile.native_size
    prepared = plan_request(request, unet, family, native, factor, vae)
    prepared = _checked(request, prepared, unet, factor, check, inits, fit)
    if request.max_memory is None:
        return prepared
    source = load_estimate_source(request.model, request.dtype, device, labels=request.labels)
    memory = fit_budget(request, prepared, source, device)
    return replace(plan_request(request, unet, family, native, factor, vae, memory), notes=prepared.notes)


def load_model(request: Request, device: str, early: Prepared | None = None) -> LoadedModel:
    """Step 2: the model, its scheduler, LoRAs, dtype and placement, with the CPU offload a memory budget chose in
    ``early`` (:func:`check_request`'s result) (``UserError`` for whatever the user can fix)."""
    memory = early.memory if early is not None else None
    return load_pipeline(
        request.model,
        dtype=request.dtype,
        device=device,
        offload=memory.offload if memory is not None else request.offload,
        scheduler=request.scheduler,
        loras=list(request.loras),
        allow_pickle=request.allow_pickle,
        config=request.model_config,
        labels=request.labels,
    )


def get_ready(
    loaded: LoadedModel,
    request: Request,
    early: Prepared | None = None,
    *,
    check=None,
    inits=(),
    fit: bool = True,
    controlnets: dict | None = None,
) -> Ready:
    """Step 3: the plan on the loaded pipeline, FouriScale applied, ControlNets loaded (from and into the
    ``controlnets`` cache, spec -> model, when given), the recipe. ``early``: :func:`check_request`'s result (its
    checks, and a memory budget's choice, are made here when it is ``None``)."""
    pipe = loaded.pipe
    memory = early.memory if early is not None else None
    prepared = plan_request(request, pipe, loaded.family, native_size(pipe), memory=memory)
    if early is None:
        prepared = _checked(request, prepared, pipe.unet, pipe.vae_scale_factor, check, inits, fit)
        if request.max_memory is not None:
            prepared = replace(_budget_loaded(loaded, request, prepared), notes=prepared.notes)
    with user_errors(labels=request.labels):
        fouriscale.apply_fouriscale(pipe, prepared.config)
    pipes = Pipelines(pipe, _controlnet(loaded, request, controlnets))
    return Ready(loaded, pipes, _recipe(loaded, request, prepared), prepared.plan, prepared.notes)


def _budget_loaded(loaded: LoadedModel, request: Request, prepared: Prepared) -> Prepared:
    """A memory budget's choice made on the loaded pipeline (single files: their configs come with the weights),
    with the model CPU offload it asks for enabled."""
    pipe = loaded.pipe
    device = str(getattr(pipe, "_execution_device", pipe.unet.device))
    memory = fit_budget(request, prepared, pipe, device)
    if memory.offload == "model" and request.offload == "none":
        pipe.enable_model_cpu_offload(device=device)
    return plan_request(request, pipe, loaded.family, native_size(pipe), memory=memory)


def _controlnet(loaded: LoadedModel, request: Request, cache: dict | None):
    """The request's ControlNet(s), loaded for the model (several combined); ``None`` without."""
    cache = {} if cache is None else cache
    nets = []
    for source, _, _ in request.sources.controls or ():
        if source.spec not in cache:
            cache[source.spec] = load_controlnet(source, loaded.pipe, request.allow_pickle)
        nets.append(cache[source.spec])
    return combine(nets) if nets else None


def _recipe(loaded: LoadedModel, request: Request, prepared: Prepared) -> Recipe:
    pipe, sources = loaded.pipe, request.sources
    guidance = request.guidance
    if guidance is None:
        preset = request.size.preset
        guidance = PAPER_PRESETS[preset].guidance_scale if preset else default_guidance(loaded.family)
    micro = None
    if sources.official:
        micro = fouriscale.official_controlnet_kwargs(pipe, prepared.height, prepared.width).get("original_size")
    first = first_pass_size(pipe, prepared.height, prepared.width, prepared.config) if sources.two_pass else None
    return Recipe(
        model=request.model,
        height=prepared.height,
        width=prepared.width,
        steps=prepared.steps,
        guidance_scale=guidance,
        negative_prompt=request.negative or None,
        scheduler=request.scheduler,
        eta=request.eta,
        dtype=str(pipe.unet.dtype).replace("torch.", ""),
        config=prepared.config,
        loras=tuple(request.loras),
        compare=request.compare,
        strength=sources.strength,
        init=sources.init,
        mask=sources.mask,
        controls=sources.control_objects(),
        two_pass=sources.two_pass,
        upscale=sources.upscale,
        first_size=first,
        micro_conditions=micro,
        memory=prepared.memory.to_dict() if prepared.memory is not None else None,
    )
