"""Branch roles and the row layout of a FouriScale batch (layer 3, shared by every host; pure torch).

A host's model call carries a *stock* batch: the unconditional rows and the conditional rows, ``rows`` rows a
branch, e.g. ``("uncond", "detail")``. On steps with FouriScale guidance the stages from the plan's fork to its
join carry a *forked* batch, the stock one with a structure branch before the detail branch. The functions here
move tensors between such layouts; the hosts call them at their own seams (diffusers: stage hooks; ComfyUI: unit
patches and block patches).
"""

from __future__ import annotations

import torch

__all__ = [
    "UNCOND",
    "STRUCTURE",
    "DETAIL",
    "COND",
    "map_tensors",
    "relayout_rows",
    "take_chunks",
    "relayout",
    "forked_roles",
    "stock_roles",
    "passes",
]

# Branch roles in a batch: the unconditional branch, the structure branch (strong masks, its queries and keys
# shared), the detail branch (weak masks) and a conditional branch without FouriScale guidance.
UNCOND, STRUCTURE, DETAIL, COND = "uncond", "structure", "detail", "cond"


def map_tensors(obj, fn):
    """``obj`` with ``fn`` applied to every tensor nested in tuples, lists and dicts (a model output stays one)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        mapped = {k: map_tensors(v, fn) for k, v in obj.items()}
        return mapped if type(obj) is dict else type(obj)(**mapped)
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def _take(x: torch.Tensor, rows: int, source: tuple[str, ...], target: tuple[str, ...]) -> torch.Tensor:
    """Rows of ``x`` (laid out as ``source``) rearranged to ``target``; a role missing from ``source`` (the
    structure branch) copies the detail or cond rows."""
    chunks = []
    for role in target:
        if role in source:
            k = source.index(role)
        else:
            k = source.index(DETAIL if DETAIL in source else COND)
        chunks.append(x[k * rows : (k + 1) * rows])
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def relayout_rows(obj, rows: int, source: tuple[str, ...], target: tuple[str, ...]):
    """Every tensor in ``obj`` batched as ``source`` (``rows`` rows a branch), laid out as ``target`` instead."""
    if source == target:
        return obj
    total = len(source) * rows
    return map_tensors(obj, lambda x: _take(x, rows, source, target) if x.dim() and x.shape[0] == total else x)


def take_chunks(obj, rows: int, total: int, chunks: list[int]):
    """Every tensor in ``obj`` batched as ``total`` chunks of ``rows`` rows, as the chunks ``chunks`` in that order."""
    if chunks == list(range(total)):
        return obj
    size = total * rows

    def take(x: torch.Tensor) -> torch.Tensor:
        if not x.dim() or x.shape[0] != size:
            return x
        parts = [x[c * rows : (c + 1) * rows] for c in chunks]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return map_tensors(obj, take)


def relayout(obj, call, target: tuple[str, ...]):
    """Give every batch-shaped tensor in ``obj`` (in ``call``'s stock or forked layout) the row layout ``target``."""
    obj = relayout_rows(obj, call.rows, call.stock, target)
    if call.forked is not None:
        obj = relayout_rows(obj, call.rows, call.forked, target)
    return obj


def forked_roles(stock: tuple[str, ...]) -> tuple[str, ...]:
    """The stock layout with the structure branch inserted before the detail branch."""
    k = stock.index(DETAIL)
    return stock[:k] + (STRUCTURE,) + stock[k:]


def stock_roles(plan, step, uncond: bool, cond: bool = True) -> tuple[str, ...]:
    """Roles of a stock batch of unconditional and/or conditional rows, in that order: the cond rows are the detail
    branch where FouriScale guidance acts at ``step``."""
    cond_role = DETAIL if plan.guided(step) else COND
    return ((UNCOND,) if uncond else ()) + ((cond_role,) if cond else ())


def passes(plan, step, stock: tuple[str, ...]) -> list[tuple[tuple[str, ...], tuple[str, ...] | None]]:
    """The model passes of one call with the stock layout ``stock``: each pass's stock roles and forked roles (or
    ``None``). With ``plan.sequential_uncond`` a three-branch step runs the unconditional branch as a pass of its
    own, so no pass is larger than the stock batch; with ``plan.sequential_uncond_all`` every step does."""
    three = plan.three_branch(step)
    split = (three and plan.sequential_uncond) or getattr(plan, "sequential_uncond_all", False)
    if split and len(stock) > 1 and UNCOND in stock:
        groups = [(UNCOND,), tuple(r for r in stock if r != UNCOND)]
    else:
        groups = [stock]
    return [(roles, forked_roles(roles) if three and DETAIL in roles else None) for roles in groups]
