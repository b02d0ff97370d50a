"""Named hooks on modules through diffusers' ``HookRegistry`` (layer 3 helper).

diffusers' registry overrides a module's ``forward`` on the instance; the module tree, its parameters
and its ``state_dict`` stay the stock ones. accelerate's hooks (``enable_model_cpu_offload``,
``enable_sequential_cpu_offload``, ``cpu_offload``) override ``forward`` the same way and call the
forward they wrapped through ``module._old_forward``. :func:`add_hook` always slots a FouriScale hook
*beneath* an accelerate hook, whichever was installed first, so accelerate keeps bringing weights in
before FouriScale's code runs, and either can be removed without dropping the other.
"""

from __future__ import annotations

import torch.nn as nn
from diffusers.hooks import HookRegistry, ModelHook

__all__ = ["add_hook", "remove_hook", "get_hook"]


def _accelerate_wrapper(module: nn.Module):
    """accelerate's forward wrapper on ``module`` (it calls ``module._old_forward``), or ``None``."""
    if hasattr(module, "_hf_hook") and hasattr(module, "_old_forward") and "forward" in module.__dict__:
        return module.__dict__["forward"]
    return None


def add_hook(module: nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` under ``name`` in ``module``'s diffusers ``HookRegistry`` (beneath any accelerate hook)."""
    outer = _accelerate_wrapper(module)
    if outer is not None:
        module.forward = module._old_forward
    try:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    finally:
        if outer is not None:
            module._old_forward, module.forward = module.forward, outer


def remove_hook(module: nn.Module, name: str) -> None:
    """Take the hook ``name`` out of ``module`` (no-op if absent); an emptied registry is removed as well."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or registry.get_hook(name) is None:
        return
    outer = _accelerate_wrapper(module)
    if outer is not None:
        module.forward = module._old_forward
    try:
        registry.remove_hook(name, recurse=False)
    finally:
        if outer is not None:
            module._old_forward, module.forward = module.forward, outer
    if not registry.hooks:
        del module._diffusers_hook
        forward = module.__dict__.get("forward")
        if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward:
            del module.__dict__["forward"]  # the class's own forward again, as on a never-hooked module


def get_hook(module: nn.Module, name: str) -> ModelHook | None:
    """The hook registered under ``name`` on ``module``, or ``None``."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(name) if registry is not None else None
