"""Memory estimates and the memory budget on the diffusers host (layer 3).

:func:`estimate_memory` runs the pipeline's own components (the UNet with FouriScale's hooks, the VAE's decode, the
text encoders) on tensors without data and counts the bytes of the tensors alive as the calls run:

* **Weightless.** Every parameter and buffer is swapped, for the duration, for a tensor of the same shape and dtype
  on PyTorch's *meta* device, and the inputs are made there too: each operation runs its shape function only (no
  arithmetic, no memory). A pipeline whose weights already live on the meta device (:func:`~.meta.meta_pipeline`,
  built from configs in seconds) runs the same way. accelerate's offload hooks are set aside meanwhile.
* **Counting.** A ``TorchDispatchMode`` (:class:`LiveBytes`) sees every operation below autograd: each output whose
  storage is new (not one of its inputs' storages: views and in-place results are not allocations) adds its
  storage's bytes; a weak reference on the storage subtracts them when the last tensor using it dies. The running
  total is the live activation memory of the caching allocator's ``memory_allocated`` (without its rounding to
  512-byte blocks), its maximum the phase's peak; global module hooks name the module running at that moment.
* **Why meta tensors, not ``FakeTensorMode``.** ``FakeTensorMode`` wraps the same meta kernels; here the real
  modules run as they are (LoRA layers, fused projections, custom processors, FouriScale's hooks), and a meta
  pipeline needs no conversion. The one operation whose meta kernel differs from what a GPU does is PyTorch's
  ``scaled_dot_product_attention`` (on meta it falls back to its math form), so it is replaced under a
  ``TorchFunctionMode`` by the kernel the ``attention`` assumption names: ``"sdpa"`` (flash / memory-efficient
  attention: output and a float32 log-sum-exp, no N x N matrix; CPUs run the same flash kernel) or ``"math"`` (the
  math backend: the N x N scores of every head, in float32 for half precision as PyTorch upcasts them).

Weights are counted from the parameters and buffers (each storage once) of the components on the device in each
phase: all of them without offload; with diffusers' ``enable_model_cpu_offload`` the component that runs (and the
safety checker, which that offload leaves on the device); with sequential offload the largest module's own weights.

:func:`fit_memory` picks the fastest settings that fit a budget (:func:`fouriscale.memory.choose_settings`);
:func:`apply_budget` does it inside a pipeline call for ``FouriScaleConfig.max_memory``.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .. import spectral
from ..config import FouriScaleConfig
from ..errors import SettingError
from ..memory import (
    DECODE,
    FOURISCALE_STEP,
    OFFLOADS,
    STOCK_STEP,
    TEXT,
    BudgetChoice,
    MemoryEstimate,
    PhaseEstimate,
    Rung,
    choose_settings,
    format_bytes,
    parse_memory,
)
from .patch import (
    _structure,
    _unet_of,
    apply_fouriscale,
    denoising_step,
    disabled,
    get_config,
    get_plan,
    patch_of,
    remove_fouriscale,
)
from .step_source import calling_pipeline
from .vae_tiling import decode_plan

__all__ = [
    "LiveBytes",
    "estimate_memory",
    "measure_memory",
    "fit_memory",
    "apply_budget",
    "MemoryBudgetError",
    "ATTENTION",
]

logger = logging.getLogger("fouriscale")

#: Attention assumptions of the estimate.
ATTENTION = ("sdpa", "math")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_STEP_COMPONENTS = ("unet", "controlnet", "adapter")
_ALWAYS_RESIDENT = ("safety_checker",)  # diffusers' offload leaves it on the device (_exclude_from_cpu_offload)
#: Tile sizes (latent pixels) the budget tries for the tiled decode, largest (fastest) first.
BUDGET_TILES = (128, 96, 64)


class MemoryBudgetError(SettingError):
    """Nothing fits the memory budget (the setting ``max_memory``; ``value``: the budget in bytes, ``bound``: the lowest
    estimate); ``choice`` holds the lowest estimate found."""

    def __init__(self, problem: str, choice: BudgetChoice) -> None:
        super().__init__("max_memory", problem, value=choice.budget, bound=choice.peak)
        self.choice = choice


# -- counting live bytes ---------------------------------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created while it is active and still alive: ``current``, ``peak`` and ``where``
    (the innermost named module and the operation at the peak). ``names`` maps ``id(module)`` to a name; modules
    not in it are not reported. Works on real tensors too (the validation counts a real run with it)."""

    def __init__(self, names: dict[int, str] | None = None, meta: bool = False) -> None:
        super().__init__()
        self.names = names or {}
        self.meta = meta  # every tensor is on the meta device: reuse the outputs' layout of repeated operations
        # With `snapshot=[]` given after construction: at the peak, (bytes, made by) of every live storage, largest
        # first (for looking into a peak; slower).
        self.snapshot: list | None = None
        self.current = 0
        self.peak = 0
        self.where = "(inputs)"
        self._live: dict[int, list] = {}  # id(storage) -> [weak reference, bytes]
        self._stack: list[str | None] = []
        self._handles: list = []

    def __enter__(self):
        if self.names:
            self._handles = [
                register_module_forward_pre_hook(self._enter_module),
                register_module_forward_hook(self._leave_module, always_call=True),
            ]
        return super().__enter__()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return super().__exit__(*exc)

    def _enter_module(self, module, args):
        self._stack.append(self.names.get(id(module)))

    def _leave_module(self, module, args, output):
        if self._stack:
            self._stack.pop()
        return output

    def _release(self, key: int, ref) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] is ref:
            del self._live[key]
            self.current -= entry[1]

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage as allocated now (for tensors made outside the mode)."""
        self._add(tensor.untyped_storage(), None, "input")

    def _add(self, storage, inputs, op) -> None:
        key, size = id(storage), storage.nbytes()
        entry = self._live.get(key)
        if entry is None:
            if inputs is not None and key in inputs:
                return  # a view or an in-place result of an input: no new memory
            ref = weakref.ref(storage, partial(self._release, key))
            self._live[key] = [ref, size] if self.snapshot is None else [ref, size, self._made_by(op)]
            self.current += size
        elif entry[1] != size:  # resized in place
            self.current += size - entry[1]
            entry[1] = size
        else:
            return
        if self.current > self.peak:
            self.peak = self.current
            self.where = self._made_by(op)
            if self.snapshot is not None:
                self.snapshot = sorted(((e[1], e[2]) for e in self._live.values()), reverse=True)

    def _made_by(self, op) -> str:
        module = next((name for name in reversed(self._stack) if name), None)
        op = op if isinstance(op, str) else op.overloadpacket.__name__
        return f"{module} ({op})" if module else f"({op})"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = _meta_outputs.run(func, args, kwargs) if self.meta else func(*args, **kwargs)
        # A functional operation's outputs are new storages; any other's may be its inputs' (views, in place).
        inputs = () if _meta_outputs.is_functional(func) else None
        for t in _tensors_in(out):
            if inputs is None:
                inputs = {id(x.untyped_storage()) for x in _tensors_in((args, kwargs))}
            self._add(t.untyped_storage(), inputs, func)
        return out


class _MetaOutputs:
    """Outputs of operations on meta tensors, made from the layout an earlier call with the same inputs gave.

    On the meta device an operation's outputs depend on nothing but its inputs' shapes, strides and dtypes and its
    other arguments, and many of its shape functions are Python (PyTorch's reference implementations): slow. A
    UNet repeats its blocks and a tiled decode its tiles with identical inputs, so the layouts are remembered per
    (operation, input layouts, arguments) and new outputs made with ``empty_strided``: the same tensors, without
    running the shape function again. Only functional operations whose outputs are all fresh, dense tensors are
    remembered; views, in-place and ``out=`` operations always run.
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self.layouts: dict = {}
        self._functional: dict = {}

    def is_functional(self, func) -> bool:
        """``func`` returns new tensors only: no view or alias of an input, no input changed in place."""
        known = self._functional.get(func)
        if known is None:
            schema = func._schema
            known = not schema.is_mutable and all(r.alias_info is None for r in schema.returns)
            self._functional[func] = known
        return known

    @staticmethod
    def _key(value):
        if isinstance(value, torch.Tensor):
            return ("T", tuple(value.shape), value.stride(), value.dtype, value.storage_offset(), value.device.type)
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, *(_MetaOutputs._key(v) for v in value))
        if isinstance(value, dict):
            return ("D", *((k, _MetaOutputs._key(v)) for k, v in sorted(value.items())))
        if isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format)):
            return value
        if isinstance(value, torch.layout):
            return str(value)
        raise TypeError  # anything else: not remembered

    def run(self, func, args, kwargs):
        if not self.is_functional(func):
            return func(*args, **kwargs)
        try:
            key = (func, self._key(args), self._key(kwargs))
            hash(key)
        except TypeError:
            return func(*args, **kwargs)
        layout = self.layouts.get(key)
        if layout is not None:
            outs = [torch.empty_strided(size, stride, dtype=dtype, device="meta") for size, stride, dtype in layout[1]]
            return outs[0] if layout[0] else tuple(outs)
        out = func(*args, **kwargs)
        single = isinstance(out, torch.Tensor)
        outs = (out,) if single else out
        if (
            isinstance(outs, (tuple, list))
            and len(self.layouts) < self.size
            and all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in outs)
            and len({id(t.untyped_storage()) for t in outs}) == len(outs)
            and all(t.storage_offset() == 0 and _dense_bytes(t) == t.untyped_storage().nbytes() for t in outs)
        ):
            self.layouts[key] = (single, [(tuple(t.shape), t.stride(), t.dtype) for t in outs])
        return out


def _tensors_in(obj):
    """The tensors nested in ``obj`` (tuples, lists, dicts), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors_in(item)


def _dense_bytes(t: torch.Tensor) -> int:
    """Bytes ``empty_strided`` gives a tensor of ``t``'s shape and strides."""
    if t.numel() == 0:
        return 0
    return (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * t.element_size()


_meta_outputs = _MetaOutputs()


class _Attention(TorchFunctionMode):
    """``scaled_dot_product_attention`` as the device runs it (see the module docstring), on meta tensors."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._C._nn.scaled_dot_product_attention:
            return _attention(self.kind, *args, **kwargs)
        return func(*args, **kwargs)


def _attention(kind, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeats, -3), value.repeat_interleave(repeats, -3)
    if kind == "math":
        dtype = query.dtype
        if dtype in (torch.float16, torch.bfloat16):
            query, key, value = query.float(), key.float(), value.float()
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = attn_mask.float()
        out = torch.ops.aten._scaled_dot_product_attention_math(
            query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale
        )[0]
        return out.to(dtype)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
    )[0]


# -- weightless components -------------------------------------------------------------------------------------------
@contextmanager
def _weightless(modules: dict[str, nn.Module], dtypes: dict[str, torch.dtype | None]):
    """Every parameter and buffer of ``modules`` swapped for an empty meta tensor (floating ones in ``dtypes[name]``
    when given); yields ``{name: bytes of its weights}`` (each storage once)."""
    swapped, memo, sizes = [], {}, {}
    try:
        for name, module in modules.items():
            dtype, seen, total = dtypes.get(name), set(), 0
            for sub in module.modules():
                for table in (sub._parameters, sub._buffers):
                    for key, tensor in list(table.items()):
                        if tensor is None:
                            continue
                        if id(tensor) not in memo:
                            target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
                            fake = torch.empty(tensor.shape, dtype=target, device="meta")
                            if isinstance(tensor, nn.Parameter):
                                fake = nn.Parameter(fake, requires_grad=False)
                            memo[id(tensor)] = (fake, tensor)  # keeps the original alive: ids stay unique
                        fake = memo[id(tensor)][0]
                        table[key] = fake
                        swapped.append((table, key, tensor))
                        if id(fake) not in seen:
                            seen.add(id(fake))
                            total += fake.numel() * fake.element_size()
            sizes[name] = total
        yield sizes
    finally:
        for table, key, tensor in reversed(swapped):
            table[key] = tensor


@contextmanager
def _offload_hooks_set_aside(modules):
    """accelerate's hooks (model or sequential CPU offload) do nothing inside the block (they would move weights)."""
    from accelerate.hooks import ModelHook

    swapped = []
    try:
        for module in modules:
            for sub in module.modules():
                hook = sub.__dict__.get("_hf_hook")
                if hook is not None:
                    sub._hf_hook = ModelHook()
                    swapped.append((sub, hook))
        yield
    finally:
        for sub, hook in reversed(swapped):
            sub._hf_hook = hook


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


def _offload_of(pipe) -> str:
    """The pipeline's own offload: ``"model"`` (``enable_model_cpu_offload``), ``"sequential"`` or ``"none"``."""
    for component in pipe.components.values():
        if not isinstance(component, nn.Module):
            continue
        for module in component.modules():
            hook = module.__dict__.get("_hf_hook")
            if hook is None:
                continue
            hooks = getattr(hook, "hooks", (hook,))
            for h in hooks:
                kind = type(h).__name__
                if kind == "CpuOffload":
                    return "model"
                if kind == "AlignDevicesHook" and getattr(h, "offload", False):
                    return "sequential"
    return "none"


def _modules(pipe) -> dict[str, nn.Module]:
    return {name: _structure(c) for name, c in pipe.components.items() if isinstance(c, nn.Module)}


def _names(modules: dict[str, nn.Module]) -> dict[int, str]:
    names = {}
    for component, module in modules.items():
        for name, sub in module.named_modules():
            names.setdefault(id(sub), f"{component}.{name}" if name else component)
    return names


def _largest_module(module: nn.Module, dtype) -> int:
    """Bytes of the largest set of weights one module holds directly (what sequential offload brings in at once)."""
    best = 0
    for sub in module.modules():
        size = 0
        for tensor in list(sub._parameters.values()) + list(sub._buffers.values()):
            if tensor is not None:
                itemsize = (
                    torch.empty((), dtype=dtype).element_size()
                    if tensor.is_floating_point() and dtype
                    else (tensor.element_size())
                )
                size += tensor.numel() * itemsize
        best = max(best, size)
    return best


# -- the phases ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Context:
    """What every phase of one estimate needs."""

    pipe: object
    modules: dict
    names: dict
    height: int
    width: int
    num_steps: int
    rows: int
    cfg: bool
    dtype: torch.dtype
    attention: str
    upcast_vae: bool  # SDXL pipelines decode in float32 when the VAE is float16 and asks for it (force_upcast)
    device: str = "meta"  # "meta" for estimates; a real device to run the same phase on real tensors (validation)


def _run_phase(ctx: _Context, body) -> tuple[int, str]:
    """``(peak live bytes, where)`` of ``body()`` run under the counter and the attention kernel of the estimate.

    The filter masks FouriScale caches are dropped first, so every phase makes (and counts) its own, as the first
    step of a generation does: the count does not depend on what ran before.
    """
    spectral.clear_caches()
    live = LiveBytes(ctx.names, meta=ctx.device == "meta")
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if ctx.device == "meta":
            stack.enter_context(_Attention(ctx.attention))
        stack.enter_context(live)
        body()
    return live.peak, live.where


def _text_phase(ctx: _Context) -> tuple[int, str]:
    encoders = [ctx.modules[n] for n in ("text_encoder", "text_encoder_2") if n in ctx.modules]

    def body():
        kept = []
        for _ in range(2 if ctx.cfg else 1):  # prompt, negative prompt
            for encoder in encoders:
                ids = torch.zeros(ctx.rows, 77, dtype=torch.long, device=ctx.device)
                out = encoder(ids, output_hidden_states=True)
                kept.append(out.hidden_states[-2])
                del out

    return _run_phase(ctx, body)


def _text_dims(pipe, unet) -> tuple[int, int | None, int | None]:
    """``(cross-attention width, text-embeds width, time ids)`` of the UNet's conditioning."""
    config = unet.config
    cross = config.cross_attention_dim
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    if getattr(config, "addition_embed_type", None) != "text_time":
        return int(cross), None, None
    encoder = getattr(pipe, "text_encoder_2", None)
    per_id = config.addition_time_embed_dim
    text = getattr(getattr(encoder, "config", None), "projection_dim", None)
    if text is None:
        text = config.projection_class_embeddings_input_dim - 6 * per_id
    return int(cross), int(text), int((config.projection_class_embeddings_input_dim - text) // per_id)


def _step_phase(ctx: _Context, step: int | None, guidance_scale: float = 5.0) -> tuple[int, str]:
    """One guided UNet call of denoising step ``step`` with FouriScale (``None``: stock, FouriScale disabled), with
    what the pipeline's loop holds meanwhile (latents, the CFG batch, the prompt embeddings)."""
    pipe, unet = ctx.pipe, ctx.modules["unet"]
    f = pipe.vae_scale_factor
    h, w = ctx.height // f, ctx.width // f
    cross, text, ids = _text_dims(pipe, unet)
    n = 2 if ctx.cfg else 1

    def body():
        latents = torch.empty(ctx.rows, unet.config.in_channels, h, w, dtype=ctx.dtype, device=ctx.device)
        model_input = torch.cat([latents] * n) if n > 1 else latents
        embeds = [torch.empty(ctx.rows, 77, cross, dtype=ctx.dtype, device=ctx.device) for _ in range(n)]
        prompt_embeds = torch.cat(embeds) if n > 1 else embeds[0]
        kwargs = {}
        if text is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.empty(n * ctx.rows, text, dtype=ctx.dtype, device=ctx.device),
                "time_ids": torch.empty(n * ctx.rows, ids, dtype=ctx.dtype, device=ctx.device),
            }
        t = torch.empty((), dtype=torch.float32, device=ctx.device)
        with ExitStack() as stack:
            stack.enter_context(disabled(pipe) if step is None else denoising_step(pipe, step, ctx.num_steps, ctx.cfg))
            noise = unet(model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False, **kwargs)[0]
        if n > 1:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        latents = latents[:, : noise.shape[1]] - noise  # the scheduler's update, one latent-sized result
        del latents

    return _run_phase(ctx, body)


def _decode_phase(ctx: _Context, fouriscale: bool) -> tuple[int, str]:
    """The pipeline's decode (FouriScale's tiled decode where it stands in, else the VAE's own), the image's
    denormalisation on the device, and the safety checker's look at it."""
    pipe, vae = ctx.pipe, ctx.modules["vae"]
    f = pipe.vae_scale_factor
    h, w = ctx.height // f, ctx.width // f
    checker = ctx.modules.get("safety_checker")

    def body():
        latents = torch.empty(ctx.rows, vae.config.latent_channels, h, w, dtype=ctx.dtype, device=ctx.device)
        if ctx.upcast_vae:
            latents = latents.to(torch.float32)
        latents = latents / vae.config.scaling_factor
        with ExitStack() as stack:
            if not fouriscale:
                stack.enter_context(disabled(pipe))
            image = pipe.vae.decode(latents, return_dict=False)[0]
        image = (image / 2 + 0.5).clamp(0, 1)  # the image processor's denormalisation, before the copy to the host
        if checker is not None:
            pixels = torch.empty(ctx.rows, 3, 224, 224, dtype=ctx.dtype, device=ctx.device)
            embeds = checker.visual_projection(checker.vision_model(pixels)[1])
            del embeds
        del image

    return _run_phase(ctx, body)


def _step_classes(plan) -> dict[tuple, int]:
    """The first step of each kind whose memory differs: ``(three branches, active, detail dilation differs)``."""
    classes = {}
    for i in range(plan.num_steps):
        s = plan.step(i)
        key = (plan.three_branch(s), s.active, s.active and s.detail_conv_dilation != s.conv_dilation)
        classes.setdefault(key, i)
    return classes


def _describe_step(plan, i: int) -> str:
    s = plan.step(i)
    branches = "3 branches" if plan.three_branch(s) else "2 branches"
    if plan.three_branch(s) and (plan.sequential_uncond or plan.sequential_uncond_all):
        branches += " (uncond alone)"
    dil = f"conv dilation {s.conv_dilation}" + (
        f" (detail {s.detail_conv_dilation})" if s.detail_conv_dilation != s.conv_dilation else ""
    )
    return f"step {i} of {plan.num_steps}: {branches}, {dil}"


# -- the estimate ----------------------------------------------------------------------------------------------------
def _dtype_of(dtype, pipe) -> torch.dtype:
    if dtype is None:
        unet = _structure(pipe.unet)
        return next((p.dtype for p in unet.parameters() if p.is_floating_point()), torch.float32)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: choose fp32, fp16 or bf16 (or a torch dtype)")
        return _DTYPES[dtype]
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r}: choose torch.float32, torch.float16 or torch.bfloat16")
    return dtype


def _lever_free(config: FouriScaleConfig) -> FouriScaleConfig:
    """``config`` with the memory settings at their defaults: what decides where the hooks go."""
    return config.replace(
        sequential_uncond=None,
        feed_forward_pieces=None,
        vae_tiling=False if config.vae_tiling is False else None,
        vae_tiling_threshold=FouriScaleConfig.vae_tiling_threshold,
        vae_tile_size=None,
        sequential_uncond_all_steps=None,
        filter_pieces=None,
        resnet_pieces=None,
        max_memory=None,
    )


@contextmanager
def _patched(pipe, config: FouriScaleConfig):
    """The pipeline patched with ``config`` inside the block: the applied patch overriding its memory settings when
    it has the same structure, else ``config`` applied for the block and the previous state restored after."""
    patch = patch_of(pipe)
    if patch is not None and _lever_free(patch.config) == _lever_free(config):
        with patch.overriding(config):
            yield patch
        return
    previous = patch.config if patch is not None else None
    apply_fouriscale(pipe, config)
    try:
        patch = patch_of(pipe)
        with patch.overriding(config):
            yield patch
    finally:
        if previous is None:
            remove_fouriscale(pipe)
        else:
            apply_fouriscale(pipe, previous)


class _Estimator:
    """One pipeline, size and set of assumptions; measures phases (cached) under any memory settings."""

    def __init__(
        self,
        pipe,
        height,
        width,
        num_steps,
        config,
        dtype,
        device,
        attention,
        offload,
        batch_size,
        guidance,
        real=False,
    ):
        _unet_of(pipe)  # a diffusers pipeline with a UNet
        if attention not in ATTENTION:
            raise ValueError(f"attention {attention!r}: choose 'sdpa' (flash / memory-efficient) or 'math'")
        if offload is not None and offload not in OFFLOADS:
            raise ValueError(f"offload {offload!r}: choose None (the pipeline's own), 'none', 'model' or 'sequential'")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.pipe = pipe
        self.height, self.width, self.num_steps = height, width, num_steps
        self.dtype = _dtype_of(dtype, pipe)
        self.device = str(device)
        self.attention = attention
        self.own_offload = _offload_of(pipe)
        self.offload = offload or self.own_offload
        self.rows = batch_size
        self.cfg = bool(guidance)
        self.config = config.replace(max_memory=None)
        self.plan = get_plan(pipe, height, width, num_steps, self.config)  # raises for sizes the model cannot take
        self.modules = _modules(pipe)
        self.names = _names(self.modules)
        vae = self.modules.get("vae")
        self.upcast_vae = bool(
            vae is not None
            and hasattr(pipe, "upcast_vae")
            and self.dtype == torch.float16
            and getattr(vae.config, "force_upcast", False)
        )
        self.real = real  # run the phases on the pipeline's own weights and device, with real tensors
        self._cache: dict = {}
        self.sizes: dict[str, int] = {}
        self.vae_fp32 = 0
        self.notes: list[str] = []

    @contextmanager
    def running(self):
        """Weightless components with accelerate's hooks set aside, for the block (as they are when ``real``)."""
        if self.real:
            self.sizes = {
                name: sum(t.numel() * t.element_size() for t in {id(t): t for t in _tensors(module)}.values())
                for name, module in self.modules.items()
            }
            self.vae_fp32 = self.sizes.get("vae", 0)
            yield self
            return
        dtypes = {name: self.dtype for name in self.modules}
        with _offload_hooks_set_aside(self.modules.values()), _weightless(self.modules, dtypes) as sizes:
            self.sizes = dict(sizes)
            if "vae" in self.modules:
                vae = self.modules["vae"]
                self.vae_fp32 = sum(
                    t.numel() * (4 if t.is_floating_point() else t.element_size())
                    for t in {id(t): t for t in list(vae.parameters()) + list(vae.buffers())}.values()
                )
            yield self

    @contextmanager
    def _vae_upcast(self):
        """The VAE's weights in float32 for the block when the pipeline upcasts it to decode."""
        if not self.upcast_vae:
            yield
            return
        if self.real:
            vae = self.modules["vae"]
            vae.to(torch.float32)
            try:
                yield
            finally:
                vae.to(torch.float16)
            return
        with _weightless({"vae": self.modules["vae"]}, {"vae": torch.float32}):
            yield

    def context(self) -> _Context:
        return _Context(
            self.pipe,
            self.modules,
            self.names,
            self.height,
            self.width,
            self.num_steps,
            self.rows,
            self.cfg,
            self.dtype,
            self.attention,
            self.upcast_vae,
            str(next(iter(self.modules["unet"].parameters())).device) if self.real else "meta",
        )

    def plan_for(self, config: FouriScaleConfig):
        return get_plan(self.pipe, self.height, self.width, self.num_steps, config)

    def measure(self, phase: str, config: FouriScaleConfig | None) -> tuple[int, str, str]:
        """``(activation peak, where, detail)`` of ``phase`` under ``config`` (``None``: direct inference)."""
        plan = self.plan_for(config) if config is not None else None
        if phase == TEXT:
            key = (phase,)
        elif phase == STOCK_STEP:
            key = (
                (phase, None)
                if config is None
                else (phase, plan.sequential_uncond_all, plan.filter_pieces, plan.feed_forward_tokens)
            )
        elif phase == FOURISCALE_STEP:
            split = plan.sequential_uncond or plan.sequential_uncond_all
            key = (
                phase,
                split,
                plan.feed_forward_pieces,
                plan.filter_pieces,
                plan.feed_forward_tokens,
                plan.resnet_pieces,
            )
        else:
            decode = None if config is None else _decode_key(config, plan)
            key = (phase, decode)
        if key in self._cache:
            return self._cache[key]
        ctx = self.context()
        if phase == TEXT:
            if not any(n in self.modules for n in ("text_encoder", "text_encoder_2")):
                result = (0, "(no text encoder)", "")
            else:
                try:
                    result = (*_text_phase(ctx), "")
                except Exception as exc:  # a text encoder whose code needs numbers: count its weights only
                    self.notes.append(
                        f"text encoders not run ({type(exc).__name__}): their activations are not counted"
                    )
                    result = (0, "(not run)", "")
        elif phase == STOCK_STEP:
            if config is None:
                result = (*_step_phase(ctx, None), "direct inference")
            else:
                inactive = [i for i in range(plan.num_steps) if not plan.step(i).active] if not plan.noop else [0]
                with _patched(self.pipe, config):
                    result = (*_step_phase(ctx, inactive[0]), f"step {inactive[0]} of {plan.num_steps}: plain convs")
        elif phase == FOURISCALE_STEP:
            best = None
            with _patched(self.pipe, config):
                for klass, i in _step_classes(plan).items():
                    if not klass[1]:
                        continue
                    peak, where = _step_phase(ctx, i)
                    if best is None or peak > best[0]:
                        best = (peak, where, _describe_step(plan, i))
            result = best
        else:
            if config is None:
                with self._vae_upcast():
                    result = (*_decode_phase(ctx, False), "the VAE's own decode")
            else:
                with _patched(self.pipe, config), self._vae_upcast():
                    result = (*_decode_phase(ctx, True), _decode_text(config, plan))
        self._cache[key] = result
        return result

    # -- weights on the device per phase and offload mode --
    def resident(self, offload: str, phase: str) -> tuple[int, tuple[str, ...]]:
        sizes = dict(self.sizes)
        if phase == DECODE and self.upcast_vae and "vae" in sizes:
            sizes["vae"] = self.vae_fp32
        if offload == "none":
            names = tuple(sizes)
        else:
            if phase == TEXT:
                running = [n for n in sizes if n.startswith("text_encoder") or n == "image_encoder"]
                if offload == "model" and running:
                    running = [max(running, key=lambda n: sizes[n])]  # one encoder at a time
            elif phase == DECODE:
                running = ["vae"] + [n for n in sizes if n in ("controlnet", "adapter")]
            else:
                running = [n for n in sizes if n in _STEP_COMPONENTS]
            stay = [n for n in sizes if n in _ALWAYS_RESIDENT]
            if offload == "sequential":
                largest = max(
                    (
                        _largest_module(self.modules[n], torch.float32 if phase == DECODE and self.upcast_vae else None)
                        for n in running
                        if n in self.modules
                    ),
                    default=0,
                )
                return largest + sum(sizes[n] for n in stay), tuple(running + stay)
            names = tuple(n for n in sizes if n in running or n in stay)
        return sum(sizes[n] for n in names), names

    def estimate(self, phases: dict[str, FouriScaleConfig | None], offload: str, label: str) -> MemoryEstimate:
        out = []
        for phase, config in phases.items():
            activations, where, detail = self.measure(phase, config)
            weights, names = self.resident(offload, phase)
            out.append(PhaseEstimate(phase, weights, activations, where, detail, names))
        settings = []
        fs = [c for p, c in phases.items() if p == FOURISCALE_STEP and c is not None]
        if fs:
            settings.append(self.plan_for(fs[0]).memory_text())
        dec = phases.get(DECODE)
        if DECODE in phases:
            settings.append("VAE decode: " + (_decode_text(dec, self.plan_for(dec)) if dec else "the VAE's own"))
        if self.upcast_vae:
            settings.append("VAE upcast to float32 for the decode (the SDXL pipeline does it: force_upcast)")
        return MemoryEstimate(
            label=label,
            height=self.height,
            width=self.width,
            num_steps=self.num_steps,
            dtype=_DTYPE_NAMES.get(self.dtype, str(self.dtype)),
            device=self.device,
            attention=self.attention,
            offload=offload,
            phases=tuple(out),
            components=tuple(self.sizes.items()),
            settings=tuple(settings),
            assumptions=self.assumptions(offload),
        )

    def assumptions(self, offload: str) -> tuple[str, ...]:
        attention = (
            "attention through SDPA's flash / memory-efficient kernels: no N x N matrix"
            if self.attention == "sdpa"
            else "attention through the math backend: N x N scores per head (float32 for half precision)"
        )
        offload_text = {
            "none": "every component on the device throughout",
            "model": "model CPU offload: the running component on the device (the safety checker stays)",
            "sequential": "sequential CPU offload: one module's weights on the device at a time",
        }[offload]
        return (
            attention,
            offload_text,
            f"batch of {self.rows} image(s)" + (", classifier-free guidance" if self.cfg else ", no guidance"),
            "not included: the CUDA context, the allocator's rounding, caching and fragmentation, convolution "
            "workspaces (cuDNN; oneDNN's on CPUs), ControlNet / adapter inputs, img2img's encode of its picture",
            "GB = 10^9 bytes",
            *self.notes,
        )

    def label(self, fouriscale: bool) -> str:
        family = self.plan.profile.family.label
        what = "FouriScale" if fouriscale else "direct inference"
        return f"{family} at {self.width}x{self.height}, {self.num_steps} steps, {what}"


def _decode_key(config: FouriScaleConfig, plan) -> tuple:
    decode = plan.vae_decode
    if decode is None or not decode.tiled:
        return (False, 0)
    return (True, config.tile_size)


def _decode_text(config: FouriScaleConfig, plan) -> str:
    decode = plan.vae_decode
    if decode is None:
        return "no VAE"
    if decode.tiled:
        return f"tiled, tiles of {config.tile_size} latent px"
    return "untiled" if decode.patched else decode.text


def estimate_memory(
    pipe,
    height: int,
    width: int,
    num_inference_steps: int = 50,
    config: FouriScaleConfig | None = None,
    *,
    dtype=None,
    device: str = "cuda",
    attention: str = "sdpa",
    offload: str | None = None,
    batch_size: int = 1,
    guidance: bool = True,
    direct: bool = False,
) -> MemoryEstimate:
    """Peak device memory of generating a ``height`` x ``width`` image with ``pipe``, without running it.

    Runs one guided UNet call of each kind of step (a stock step; each kind of FouriScale step: the one with the
    highest peak is reported) and the decode through the pipeline's own components and FouriScale's hooks, on
    weightless meta tensors (no weights read, no arithmetic; a pipeline on the meta device works as well), counting
    live tensor bytes (see the module docstring). The pipeline is left as it was.

    Args:
        pipe: a diffusers SD 1.x/2.x or SDXL pipeline, patched or not, with real or meta weights.
        config: the FouriScale settings (default: the applied ones, else the paper's). With a ``max_memory`` it is
            the estimate of the settings the budget chooses (:func:`fit_memory`; raises its one-line
            ``ValueError`` when nothing fits).
        dtype: ``"fp16"``, ``"bf16"``, ``"fp32"`` or a torch dtype; default: the UNet's.
        device: the device the estimate is for (named in the report).
        attention: ``"sdpa"`` (flash / memory-efficient: no N x N matrix) or ``"math"``.
        offload: ``"none"``, ``"model"`` (``enable_model_cpu_offload``), ``"sequential"``; default: the pipeline's.
        batch_size: images per call; ``guidance``: classifier-free guidance (two branches).
        direct: estimate direct inference (the stock pipeline: FouriScale off, the VAE's own decode) instead.

    Returns a :class:`~fouriscale.memory.MemoryEstimate` (``peak`` in bytes; ``print()`` it).
    """
    config = config if config is not None else (get_config(pipe) or FouriScaleConfig())
    if not isinstance(config, FouriScaleConfig):
        raise TypeError(f"config must be a FouriScaleConfig or None, got {type(config).__name__}")
    if config.max_memory is not None and not direct:
        return fit_memory(
            pipe,
            height,
            width,
            num_inference_steps,
            config.max_memory,
            config,
            dtype=dtype,
            device=device,
            attention=attention,
            offload=offload,
            batch_size=batch_size,
            guidance=guidance,
        ).estimate
    est = _Estimator(
        pipe, height, width, num_inference_steps, config, dtype, device, attention, offload, batch_size, guidance
    )
    with est.running():
        phases = _phases(est, None if direct else est.config)
        return est.estimate(phases, est.offload, est.label(not direct))


def measure_memory(
    pipe,
    height: int,
    width: int,
    num_inference_steps: int = 50,
    config: FouriScaleConfig | None = None,
    *,
    batch_size: int = 1,
    guidance: bool = True,
    direct: bool = False,
) -> MemoryEstimate:
    """:func:`estimate_memory`'s phases run for real: the pipeline's own weights, on its device and dtype, with real
    tensors (and real arithmetic: as slow as generating), counted the same way. What the estimate is checked against
    (``benchmarks/memory.py``, the tests); offload is the pipeline's own, attention whatever the device runs."""
    config = config if config is not None else (get_config(pipe) or FouriScaleConfig())
    est = _Estimator(
        pipe, height, width, num_inference_steps, config, None, "", "sdpa", None, batch_size, guidance, real=True
    )
    est.device = est.context().device
    with est.running():
        phases = _phases(est, None if direct else est.config)
        estimate = est.estimate(phases, est.offload, est.label(not direct) + " (measured on real tensors)")
    return dataclasses.replace(estimate, assumptions=(f"measured on {est.device}: real weights and tensors",))


def _phases(est: _Estimator, config: FouriScaleConfig | None) -> dict:
    phases: dict = {TEXT: config, STOCK_STEP: config}
    if config is not None and not est.plan.noop and any(est.plan.step(i).active for i in range(est.num_steps)):
        phases[FOURISCALE_STEP] = config
        if all(est.plan.step(i).active for i in range(est.num_steps)):
            del phases[STOCK_STEP]
    if "vae" in est.modules:
        phases[DECODE] = config
    return phases


# -- the budget ------------------------------------------------------------------------------------------------------
def _ladders(est: _Estimator, phases: dict) -> dict[str, list[Rung]]:
    """Each phase's levers, fastest first; only settings the config leaves at ``None`` (auto) are levers."""
    config, plan = est.config, est.plan
    ladders = {phase: [Rung("as set")] for phase in phases}
    filters = config.filter_pieces is None and not plan.noop and (plan.freeu_params or plan.layers)
    if STOCK_STEP in phases and not plan.noop:
        rungs, overrides = ladders[STOCK_STEP], {}
        if est.cfg and config.sequential_uncond_all_steps is None:
            overrides["sequential_uncond_all_steps"] = True
            rungs.append(Rung("unconditional pass alone on plain steps", tuple(overrides.items())))
        if config.feed_forward_pieces is None and plan.fork is not None:
            overrides["feed_forward_pieces"] = True
            rungs.append(Rung("feed-forwards in pieces everywhere", tuple(overrides.items())))
        if filters and plan.freeu_params:
            overrides["filter_pieces"] = True
            rungs.append(Rung("Fourier filters in pieces", tuple(overrides.items())))
    if FOURISCALE_STEP in phases:
        rungs, overrides = ladders[FOURISCALE_STEP], {}
        if config.sequential_uncond is None and est.cfg and not plan.sequential_uncond:
            overrides["sequential_uncond"] = True
            rungs.append(Rung("unconditional pass alone", tuple(overrides.items())))
        if config.feed_forward_pieces is None:
            overrides["feed_forward_pieces"] = True
            rungs.append(Rung("feed-forwards in pieces everywhere", tuple(overrides.items())))
        if filters:
            overrides["filter_pieces"] = True
            rungs.append(Rung("Fourier filters in pieces", tuple(overrides.items())))
        if config.resnet_pieces is None and plan.fork is not None and config.dilated_convs:
            overrides["resnet_pieces"] = True
            rungs.append(Rung("forked resnets one branch at a time", tuple(overrides.items())))
    decode = plan.vae_decode
    if DECODE in phases and decode is not None and decode.patched and config.vae_tiling is not False:
        rungs = ladders[DECODE]
        if not decode.tiled and config.vae_tiling is None and max(plan.latent) > config.tile_size:
            rungs.append(Rung(f"tiled VAE decode (tiles of {config.tile_size} latent px)", (("vae_tiling", True),)))
        if config.vae_tile_size is None:
            for tile in BUDGET_TILES:
                if tile < config.tile_size and max(plan.latent) > tile:  # smaller, and more than one tile
                    rungs.append(
                        Rung(f"VAE tiles of {tile} latent px", (("vae_tiling", True), ("vae_tile_size", tile)))
                    )
    return ladders


def fit_memory(
    pipe,
    height: int,
    width: int,
    num_inference_steps: int = 50,
    max_memory=None,
    config: FouriScaleConfig | None = None,
    *,
    dtype=None,
    device: str = "cuda",
    attention: str = "sdpa",
    offload: str | None = None,
    batch_size: int = 1,
    guidance: bool = True,
) -> BudgetChoice:
    """The fastest FouriScale settings (and offload) whose estimated peak fits ``max_memory``.

    Levers, fastest first: the unconditional branch as a pass of its own, feed-forwards in pieces everywhere (the
    FouriScale steps); the tiled decode, then smaller tiles (the decode); then diffusers' model CPU offload. Only
    settings ``config`` leaves at ``None`` are changed; none changes the latents beyond float round-off (the tiled
    decode changes the picture slightly, see ``vae_tiling``). ``max_memory`` defaults to ``config.max_memory``;
    ``offload`` pins the offload mode (default: none or model offload, or the pipeline's own if it has one). The
    other arguments are :func:`estimate_memory`'s.

    Returns a :class:`~fouriscale.memory.BudgetChoice` (``overrides``: the config fields to set; ``offload``;
    ``estimate``: the estimate of the choice). Raises :class:`MemoryBudgetError` (a ``ValueError``) in one line with
    the lowest estimate and the budget when nothing fits, and ``ValueError`` for a malformed budget.
    """
    config = config if config is not None else (get_config(pipe) or FouriScaleConfig())
    if max_memory is None:
        max_memory = config.max_memory
    if max_memory is None:
        raise ValueError("fit_memory needs a budget: max_memory='12GB' (or config.max_memory)")
    budget = parse_memory(max_memory)
    est = _Estimator(
        pipe, height, width, num_inference_steps, config, dtype, device, attention, offload, batch_size, guidance
    )
    if offload is not None:
        offloads = (offload,)
    elif est.own_offload != "none":
        offloads = (est.own_offload,)
    else:
        offloads = ("none", "model")
    with est.running():
        choice = _fit(est, budget, offloads)
    if not choice.fits:
        raise MemoryBudgetError(_refusal(est, choice), choice)
    return choice


def _fit(est: _Estimator, budget: int, offloads) -> BudgetChoice:
    """:func:`fit_memory`'s choice on a running estimator (its measurements are kept: several budgets can ask)."""
    phases = _phases(est, est.config)
    ladders = _ladders(est, phases)

    def activations(phase: str, rung: Rung) -> int:
        return est.measure(phase, est.config.replace(**rung.settings))[0]

    choice = choose_settings(budget, ladders, activations, lambda o, p: est.resident(o, p)[0], offloads)
    # The estimate of the settings as they will run: every phase under the merged choice (a lever chosen for one
    # phase can only lower another's peak).
    merged = est.config.replace(**choice.overrides)
    estimate = est.estimate(dict.fromkeys(phases, merged), choice.offload, est.label(True))
    peaks = tuple((phase.name, phase.peak) for phase in estimate.phases)
    return dataclasses.replace(choice, peaks=peaks, fits=estimate.peak <= budget, estimate=estimate)


def _refusal(est: _Estimator, choice: BudgetChoice) -> str:
    dtype = _DTYPE_NAMES.get(est.dtype, str(est.dtype))
    how = "every memory setting" + (f" and {choice.offload} CPU offload" if choice.offload != "none" else "")
    return (
        f"FouriScale: {est.plan.profile.family.label} at {est.width}x{est.height} ({dtype}) needs an estimated "
        f"{format_bytes(choice.peak)} even with {how} (in the {choice.estimate.peak_phase.name}), more than the "
        f"memory budget of {format_bytes(choice.budget)}"
    )


def apply_budget(patch, height: int, width: int, num_steps: int, call: dict):
    """The plan of a UNet call under ``patch.config.max_memory``: the settings :func:`fit_memory` chooses for this
    size, batch, guidance, dtype and device (once; cached), used from this call on; model CPU offload enabled on the
    pipeline if the choice needs it. Raises :class:`MemoryBudgetError` before the UNet runs when nothing fits."""
    key = (height, width, num_steps, call["rows"], call["cfg"], call["dtype"], str(call["device"]))
    choice = patch.choices.get(key)
    pipe = calling_pipeline(call["unet"]) or (patch.pipe_ref() if patch.pipe_ref is not None else None)
    if choice is None:
        if pipe is None:
            raise RuntimeError("FouriScale: max_memory needs the pipeline, which is gone")
        budgetless = patch.config.replace(max_memory=None)
        choice = fit_memory(
            pipe,
            height,
            width,
            num_steps,
            patch.config.max_memory,
            budgetless,
            dtype=call["dtype"],
            device=str(call["device"]),
            batch_size=call["rows"],
            guidance=call["cfg"],
        )
        patch.choices[key] = choice
        logger.info("FouriScale: %dx%d: %s", width, height, choice.describe())
    resolved = patch.config.replace(**choice.overrides)
    plan = patch.plan(height, width, num_steps, resolved)
    if plan.memory is None:
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            decode = decode_plan(vae, resolved, plan.latent, patch.profile.vae_scale_factor)
            plan = dataclasses.replace(plan, vae_decode=decode)
            patch._decode_choices[plan.latent] = (decode.tiled, resolved.tile_size)
        plan = dataclasses.replace(plan, memory=choice)
        patch._plans[(height, width, num_steps, resolved)] = plan
    if choice.offload == "model" and pipe is not None and _offload_of(pipe) == "none":
        _enable_model_offload(pipe, call)
    return plan


def _enable_model_offload(pipe, call: dict) -> None:
    """diffusers' ``enable_model_cpu_offload`` from inside the first UNet call: the text encoders are done, the
    UNet is brought to the device for this call (as accelerate's own hook would have), the VAE when it decodes."""
    device = call["device"]
    pipe.enable_model_cpu_offload(device=device)
    hook = getattr(pipe.unet, "_hf_hook", None)
    if hook is not None:
        hook.pre_forward(pipe.unet)
    logger.info("FouriScale: model CPU offload enabled on the pipeline to fit the memory budget")
