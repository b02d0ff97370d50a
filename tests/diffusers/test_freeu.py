"""The paper's FreeU beside diffusers' own (fouriscale/diffusers/freeu.py): both removable, a user's FreeU put back
after removal and inside ``disabled``."""

import torch

import fouriscale
from support.pipelines import args_for


def test_paper_freeu_differs_from_diffusers_freeu_and_both_are_removable(sd_pipe, clean):
    clean(sd_pipe)
    args = args_for(sd_pipe, steps=3)
    stock = sd_pipe(**args).images
    results = {}
    for mode in ("paper", "diffusers", None):
        fouriscale.apply_fouriscale(sd_pipe, freeu=mode)
        if mode == "diffusers":
            assert sd_pipe.unet.up_blocks[0].b1 == 1.2
        results[mode] = sd_pipe(**args).images
        fouriscale.remove_fouriscale(sd_pipe)
        assert getattr(sd_pipe.unet.up_blocks[0], "b1", None) is None
    assert not torch.allclose(results["paper"], results["diffusers"], atol=1e-4)
    assert not torch.allclose(results["paper"], results[None], atol=1e-4)
    assert torch.equal(sd_pipe(**args).images, stock)


def test_user_freeu_is_restored_after_removal_and_inside_disabled(sd_pipe):
    args = args_for(sd_pipe, steps=2, height=32, width=32)  # native size: FouriScale itself is a no-op
    sd_pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
    try:
        users = sd_pipe(**args).images
        fouriscale.apply_fouriscale(sd_pipe)  # the paper's FreeU replaces it while applied
        assert getattr(sd_pipe.unet.up_blocks[0], "b1", None) is None
        with fouriscale.disabled(sd_pipe):
            assert sd_pipe.unet.up_blocks[0].b1 == 1.5
            assert torch.equal(sd_pipe(**args).images, users)
        assert getattr(sd_pipe.unet.up_blocks[0], "b1", None) is None
        fouriscale.remove_fouriscale(sd_pipe)
        assert sd_pipe.unet.up_blocks[0].b1 == 1.5 and sd_pipe.unet.up_blocks[1].s2 == 0.2
    finally:
        sd_pipe.disable_freeu()
