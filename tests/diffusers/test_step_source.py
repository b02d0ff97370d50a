"""Which denoising step a UNet call belongs to (fouriscale/diffusers/step_source.py): found by timestep in the
scheduler's table (second-order schedulers, img2img's strength, copies of the timestep), never guessed; calls
outside a pipeline or its schedule run the stock UNet and say so once."""

import logging

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

import fouriscale
from fouriscale.diffusers.step_source import locate_step
from support.pipelines import latents_for


@pytest.mark.parametrize(
    "scheduler_cls, order",
    [(DDIMScheduler, 1), (EulerDiscreteScheduler, 1), (DPMSolverMultistepScheduler, 1), (HeunDiscreteScheduler, 2)],
)
def test_step_lookup_counts_denoising_steps(scheduler_cls, order):
    scheduler = scheduler_cls(num_train_timesteps=1000)
    scheduler.set_timesteps(7)
    seen = [locate_step(scheduler, t) for t in scheduler.timesteps]
    steps = [s for s, _ in seen]
    assert all(n == 7 for _, n in seen)
    if order == 1:
        assert steps == list(range(7))
    else:  # [t0, t1, t1, t2, t2, ...]: two UNet calls per step after the first
        assert steps == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    # A copy of the timestep (no shared storage) is located by value.
    assert locate_step(scheduler, scheduler.timesteps[3].clone())[0] == steps[3]
    assert locate_step(scheduler, float(scheduler.timesteps[-1]))[0] == steps[-1]


def test_step_lookup_of_a_timestep_not_in_the_table_is_none():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    assert locate_step(scheduler, 5000) is None  # no nearest-step guess
    assert locate_step(scheduler, scheduler.timesteps[2] + 1) is None
    assert locate_step(scheduler, torch.tensor([scheduler.timesteps[2], scheduler.timesteps[3]])) is None
    batch = scheduler.timesteps[4].expand(3)  # one timestep per row, all equal: step 4
    assert locate_step(scheduler, batch.clone()) == (4, 10)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_step_lookup_follows_the_full_schedule_under_strength(scheduler_cls):
    """img2img with strength 0.6 over 10 steps runs steps 4..9 of the full table (as its pipeline slices it)."""
    scheduler = scheduler_cls(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    t_start = 10 - int(0.6 * 10)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    seen = [locate_step(scheduler, t) for t in scheduler.timesteps[t_start * scheduler.order :]]
    assert seen == [(i, 10) for i in range(4, 10)]


def test_step_lookup_without_timesteps_is_none():
    scheduler = DDIMScheduler()
    scheduler.timesteps = torch.tensor([])
    assert locate_step(scheduler, torch.tensor(10)) is None


def test_unet_calls_outside_a_pipeline_or_its_schedule_run_unchanged_and_warn_once(sd_pipe, clean, caplog):
    clean(sd_pipe)
    sd_pipe.scheduler.set_timesteps(5)
    sample = latents_for(sd_pipe, 64, 64)
    embeds = torch.randn(1, 77, sd_pipe.unet.config.cross_attention_dim)
    t = sd_pipe.scheduler.timesteps[0]
    stock = sd_pipe.unet(sample, t, encoder_hidden_states=embeds).sample
    bogus = sd_pipe.unet(sample, 5000, encoder_hidden_states=embeds).sample
    fouriscale.apply_fouriscale(sd_pipe)

    def custom_sampler(self, timestep):  # a pipeline method driving the UNet with a timestep of its own
        return self.unet(sample, timestep, encoder_hidden_states=embeds).sample

    with caplog.at_level(logging.WARNING, logger="fouriscale"):
        # A direct call (no pipeline on the stack): the guidance layout is unknown, so the stock UNet runs.
        assert torch.equal(sd_pipe.unet(sample, t, encoder_hidden_states=embeds).sample, stock)
        assert torch.equal(sd_pipe.unet(sample, t, encoder_hidden_states=embeds).sample, stock)
        # From a pipeline, with a timestep that is not in its scheduler's table: no nearest-step guess.
        assert torch.equal(custom_sampler(sd_pipe, 5000), bogus)
        custom_sampler(sd_pipe, 4999)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("outside a diffusers pipeline" in m for m in messages) == 1
    assert sum("not in the scheduler's table" in m for m in messages) == 1
