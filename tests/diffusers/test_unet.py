"""Branch sharing inside one UNet call (fouriscale/diffusers/unet.py and the layer hooks): the stock batch up to the
fork, three branches to the join, the stock batch after; exact."""

import pytest
import torch

import fouriscale
from fouriscale.diffusers.patch import patch_of
from support.pipelines import latents_for


def run(pipe, height=64, width=96, steps=3, **kwargs):
    kwargs.setdefault("guidance_scale", 7.5)
    kwargs.setdefault("latents", latents_for(pipe, height, width))
    return pipe(
        "a red cat",
        negative_prompt="blurry",
        height=height,
        width=width,
        num_inference_steps=steps,
        output_type="latent",
        **kwargs,
    ).images


def _close(a, b):
    scale = b.abs().max()
    torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("height, width", [(64, 64), (64, 96)])
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_sharing_on_and_off_give_the_same_latents(request, clean, family, height, width, guidance):
    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    clean(pipe)
    fouriscale.apply_fouriscale(pipe, share_branches=False, amp_guidance=True)
    unshared = run(pipe, height, width, guidance_scale=guidance)
    fouriscale.apply_fouriscale(pipe, amp_guidance=True)
    shared = run(pipe, height, width, guidance_scale=guidance)
    _close(shared, unshared)
    fouriscale.remove_fouriscale(pipe)
    assert not torch.allclose(run(pipe, height, width, guidance_scale=guidance), shared, atol=1e-3)  # not a no-op


def _rows_seen(pipe, names):
    """Rows of the batch entering each named module at every call."""
    seen = {name: [] for name in names}
    handles = [
        pipe.unet.get_submodule(name).register_forward_pre_hook(
            lambda m, a, kw, name=name: seen[name].append((a[0] if a else kw["hidden_states"]).shape[0]),
            with_kwargs=True,
        )
        for name in names
    ]
    return seen, handles


@pytest.mark.parametrize(
    "family, join_inside, after_join",
    [("sd1", "up_blocks.3.resnets.2", "conv_out"), ("sdxl", "up_blocks.1.resnets.2", "up_blocks.1.upsamplers.0")],
)
def test_the_batch_forks_and_joins_where_planned(request, clean, family, join_inside, after_join):
    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    clean(pipe)
    fouriscale.apply_fouriscale(pipe, start_step=1, stop_step=1, sequential_uncond=False)
    names = ["conv_in", "down_blocks.1", "down_blocks.2.resnets.0", "mid_block.resnets.0", join_inside, after_join]
    names += ["conv_out"] if after_join != "conv_out" else []
    seen, handles = _rows_seen(pipe, names)
    try:
        run(pipe, steps=2, num_images_per_prompt=2, latents=None, generator=torch.Generator().manual_seed(0))
    finally:
        for h in handles:
            h.remove()
    # Step 0 (active): 2 images x [uncond, cond] = 4 rows up to the fork, 6 inside, 4 after the join block (the
    # join stage's upsampler too); step 1: stock.
    assert seen == {
        "conv_in": [4, 4],
        "down_blocks.1": [4, 4],
        "down_blocks.2.resnets.0": [6, 4],
        "mid_block.resnets.0": [6, 4],
        join_inside: [6, 4],
        after_join: [4, 4],
        "conv_out": [4, 4],
    }


def test_sd_without_low_pass_never_runs_a_third_branch(sd_pipe, clean):
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe, low_pass=False, share_branches=False)
    unshared = run(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe, low_pass=False)
    seen, handles = _rows_seen(sd_pipe, ["mid_block.resnets.0"])
    try:
        shared = run(sd_pipe)
    finally:
        for h in handles:
            h.remove()
    assert set(seen["mid_block.resnets.0"]) == {2}
    _close(shared, unshared)


def test_a_patched_upsampler_after_the_join_block_runs_the_stock_batch(sdxl_pipe, clean):
    """SDXL's join stage ends with an upsampler; patched by ``layers=``, it filters and dilates the stock rows."""
    clean(sdxl_pipe)
    layers = ("down_blocks.2.resnets.*.conv1", "up_blocks.1.resnets.*.conv2", "up_blocks.1.upsamplers.0.conv")
    fouriscale.apply_fouriscale(sdxl_pipe, layers=layers, share_branches=False)
    expected = run(sdxl_pipe)
    fouriscale.apply_fouriscale(sdxl_pipe, layers=layers)
    plan = fouriscale.get_plan(sdxl_pipe, 64, 96, 3)
    assert [lp.forked for lp in plan.layers] == [True, True, True, True, True, False]
    _close(run(sdxl_pipe), expected)


def test_custom_layers_and_sequential_uncond_with_sharing(sd_pipe, clean):
    clean(sd_pipe)
    layers = ("up_blocks.1.resnets.*.conv1", "up_blocks.2.resnets.*.conv2")
    fouriscale.apply_fouriscale(sd_pipe, layers=layers, share_branches=False, sequential_uncond=False)
    expected = run(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe, layers=layers, sequential_uncond=True)
    _close(run(sd_pipe), expected)
    fouriscale.apply_fouriscale(sd_pipe, layers=layers, sequential_uncond=False)
    _close(run(sd_pipe), expected)


FF_SITES = {
    # family: (before the fork, inside the forked stages, the join layer's block)
    "sd1": ("down_blocks.1.attentions.0", "up_blocks.3.attentions.1", "up_blocks.3.attentions.2"),
    "sdxl": ("down_blocks.1.attentions.0", "up_blocks.0.attentions.2", "up_blocks.1.attentions.2"),
}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_feed_forward_runs_the_forked_batch_whole_or_in_stock_sized_pieces(request, clean, family, monkeypatch):
    import fouriscale.plan

    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    clean(pipe)
    fouriscale.apply_fouriscale(pipe, start_step=1, stop_step=1, sequential_uncond=False)
    before, inside, join = (f"{block}.transformer_blocks.0.ff.net.0" for block in FF_SITES[family])
    kwargs = dict(steps=2, num_images_per_prompt=2, latents=None)

    def rows_and_latents():
        seen, handles = _rows_seen(pipe, [before, inside, join])
        try:
            return seen, run(pipe, generator=torch.Generator().manual_seed(0), **kwargs)
        finally:
            for h in handles:
                h.remove()

    # The tiny models' maps are below the plan's threshold: the forked batch runs whole, 2 images x [uncond,
    # structure, detail] = 6 rows; the join layer's block after its self-attention only as [uncond, detail]. Step 1:
    # the stock 4 rows everywhere.
    assert not any(fouriscale.get_plan(pipe, 64, 96, 2).feed_forward_pieces)
    seen, whole = rows_and_latents()
    assert seen == {before: [4, 4], inside: [6, 4], join: [4, 4]}
    # From the threshold on, the forked batch runs as [uncond, structure] (4 rows, the stock batch), then [detail].
    monkeypatch.setattr(fouriscale.plan, "FEED_FORWARD_PIECES_MIN_TOKENS", 0)
    patch_of(pipe)._plans.clear()
    plan = fouriscale.get_plan(pipe, 64, 96, 2)
    assert all(plan.feed_forward_pieces)
    seen, pieces = rows_and_latents()
    assert seen == {before: [4, 4], inside: [4, 2, 4], join: [4, 4]}
    _close(pieces, whole)  # each row's result is the one the whole three-branch batch gives

    from fouriscale.diffusers.hooks import get_hook, remove_hook
    from fouriscale.diffusers.layers import FF_HOOK

    hooked = {name for name, m in pipe.unet.named_modules() if get_hook(m, FF_HOOK) is not None}
    forked = {a.name.replace(".attn1", ".ff") for a in plan.profile.attentions if plan.fork <= a.stage <= plan.join}
    assert hooked == forked and inside[: -len(".net.0")] in hooked and before[: -len(".net.0")] not in hooked
    for name in hooked:
        remove_hook(pipe.unet.get_submodule(name), FF_HOOK)
    _close(pieces, run(pipe, generator=torch.Generator().manual_seed(0), **kwargs))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_detail_branch_never_computes_its_own_queries_and_keys(request, clean, family):
    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    clean(pipe)
    fouriscale.apply_fouriscale(pipe, start_step=1, stop_step=1, sequential_uncond=False)
    plan = fouriscale.get_plan(pipe, 64, 96, 2)
    forked = [a.name for a in plan.profile.attentions if plan.fork <= a.stage <= plan.join]
    first, join = forked[0], forked[-1]
    names = {f"{a}.{proj}" for a in (first, join) for proj in ("to_q", "to_k", "to_v")}
    weights = {id(pipe.unet.get_submodule(name).weight): name for name in names}
    seen = {name: [] for name in names}

    class Projections(torch.overrides.TorchFunctionMode):
        """Rows of every ``F.linear`` call with one of the named projections' weights (what is computed)."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.nn.functional.linear and id(args[1]) in weights:
                seen[weights[id(args[1])]].append(args[0].shape[0])
            return func(*args, **kwargs)

    with Projections():
        run(pipe, steps=2, num_images_per_prompt=2, latents=None, generator=torch.Generator().manual_seed(0))
    # Step 0, 2 images: in a forked layer the queries and keys of [uncond, structure] (4 rows), the values of all
    # three branches (6); at the join the layer runs [uncond, detail] and projects the structure rows' input for
    # the detail branch's queries and keys (the 4 uncond rows and, as a call of its own, the 2 structure rows).
    # Step 1: the stock 4 rows.
    assert seen == {
        f"{first}.to_q": [4, 4],
        f"{first}.to_k": [4, 4],
        f"{first}.to_v": [6, 4],
        f"{join}.to_q": [2, 2, 4],
        f"{join}.to_k": [2, 2, 4],
        f"{join}.to_v": [4, 4],
    }
