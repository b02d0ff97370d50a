"""The memory model's pure parts (fouriscale/memory.py): budgets, the estimate type and the budget's choice of
settings."""

import pytest

import fouriscale
from fouriscale.memory import (
    DECODE,
    FOURISCALE_STEP,
    STOCK_STEP,
    TEXT,
    MemoryEstimate,
    PhaseEstimate,
    Rung,
    choose_settings,
    format_bytes,
    parse_memory,
)

GB, GiB, MB = 10**9, 2**30, 10**6


# -- budgets ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("12GB", 12 * GB),
        ("12 gb", 12 * GB),
        ("11.5GiB", int(11.5 * GiB)),
        ("8000MB", 8 * GB),
        ("512 MiB", 512 * 2**20),
        ("1e9", GB),
        ("1_000 bytes", 1000),
        ("3 KB", 3000),
        (8_000_000_000, 8 * GB),
        (2.5e9, 2_500_000_000),
    ],
)
def test_parse_memory_reads_sizes(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize(
    "text, says",
    [
        ("12 parsecs", "unknown unit 'parsecs'"),
        ("0", "more than 0 bytes"),
        ("-3GB", "more than 0 bytes"),
        ("0.1 B", "more than 0 bytes"),
        ("12G", "ambiguous; write 12GB (10^n bytes) or 12GiB (2^n bytes)"),
        ("twelve GB", "is not a memory size"),
        ("", "is not a memory size"),
        ("1e999 GB", "not a finite amount"),
        ("inf GB", "is not a memory size"),
        (True, "expected a memory size"),
        (None, "expected a memory size"),
    ],
)
def test_parse_memory_refuses_in_one_line(text, says):
    with pytest.raises(ValueError) as info:
        parse_memory(text, "--max-memory")
    message = str(info.value)
    assert says in message and message.startswith("--max-memory: ") and "\n" not in message


def test_config_takes_a_budget_as_bytes():
    assert fouriscale.FouriScaleConfig(max_memory="12GB").max_memory == 12 * GB
    assert fouriscale.FouriScaleConfig(max_memory=4 * GiB).max_memory == 4 * GiB
    assert fouriscale.FouriScaleConfig().replace(max_memory="1.5 GiB").max_memory == int(1.5 * GiB)
    with pytest.raises(ValueError, match=r"^FouriScaleConfig.max_memory: '12 parsecs' has an unknown unit"):
        fouriscale.FouriScaleConfig(max_memory="12 parsecs")
    for bad in (0, "-3GB"):
        with pytest.raises(ValueError, match="must be more than 0 bytes"):
            fouriscale.FouriScaleConfig(max_memory=bad)
    for field, bad in (("vae_tile_size", 40), ("vae_tile_size", 100), ("feed_forward_pieces", "yes")):
        with pytest.raises(ValueError, match=f"FouriScaleConfig.{field}"):
            fouriscale.FouriScaleConfig(**{field: bad})


def test_format_bytes_counts_in_powers_of_1000():
    assert format_bytes(13_421_772_800) == "13.42 GB"
    assert format_bytes(512 * MB) == "512 MB"
    assert format_bytes(999) == "999 B"


# -- the estimate type -----------------------------------------------------------------------------------------------
def _estimate():
    phases = (
        PhaseEstimate(TEXT, 7 * GB, 10 * MB, "text_encoder_2.text_model (addmm)"),
        PhaseEstimate(FOURISCALE_STEP, 7 * GB, 3 * GB, "unet.up_blocks.0 (gelu)", "step 0 of 50: 3 branches"),
        PhaseEstimate(DECODE, 7 * GB, 2 * GB, "vae.decoder (silu)"),
    )
    return MemoryEstimate(
        "SDXL at 4096x4096, 50 steps, FouriScale",
        4096,
        4096,
        50,
        "fp16",
        "cuda",
        "sdpa",
        "none",
        phases,
        (("unet", 5 * GB), ("vae", 2 * GB)),
        ("one pass of all branches",),
        ("attention through SDPA", "GB = 10^9 bytes"),
    )


def test_estimate_reports_its_peak_phase_and_assumptions():
    estimate = _estimate()
    assert estimate.peak == 10 * GB and estimate.peak_phase.name == FOURISCALE_STEP and estimate.weights == 7 * GB
    assert estimate.phase(DECODE).peak == 9 * GB and estimate.phase(STOCK_STEP) is None
    text = str(estimate)
    assert text.splitlines()[0] == (
        "Memory estimate: SDXL at 4096x4096, 50 steps, FouriScale; fp16 on cuda, no offload"
    )
    assert "peak               10.00 GB in the FouriScale step, at unet.up_blocks.0 (gelu)" in text
    assert "(step 0 of 50: 3 branches)" in text and "GB = 10^9 bytes" in text and "unet 5.00 GB" in text


# -- the budget's choice ---------------------------------------------------------------------------------------------
UNCOND = Rung("unconditional pass alone", (("sequential_uncond", True),))
PIECES = Rung("feed-forwards in pieces", (("sequential_uncond", True), ("feed_forward_pieces", True)))
TILED = Rung("VAE tiles of 128", (("vae_tiling", True), ("vae_tile_size", 128)))
SMALL = Rung("VAE tiles of 64", (("vae_tiling", True), ("vae_tile_size", 64)))
LADDERS = {
    STOCK_STEP: [Rung("as set")],
    FOURISCALE_STEP: [Rung("as set"), UNCOND, PIECES],
    DECODE: [Rung("as set"), TILED, SMALL],
}
ACTIVATIONS = {  # GB per (phase, rung label)
    (STOCK_STEP, "as set"): 2,
    (FOURISCALE_STEP, "as set"): 6,
    (FOURISCALE_STEP, UNCOND.label): 4,
    (FOURISCALE_STEP, PIECES.label): 3,
    (DECODE, "as set"): 9,
    (DECODE, TILED.label): 2,
    (DECODE, SMALL.label): 1,
}


def _choose(budget_gb, weights_gb=None, offloads=("none", "model")):
    asked = []
    weights_gb = weights_gb or {"none": 7, "model": 5}

    def activations(phase, rung):
        asked.append((phase, rung.label))
        return ACTIVATIONS[(phase, rung.label)] * GB

    choice = choose_settings(budget_gb * GB, LADDERS, activations, lambda o, p: weights_gb[o] * GB, offloads)
    assert len(asked) == len(set(asked))  # each phase and rung measured once
    return choice, asked


def test_each_phase_takes_its_fastest_rung_that_fits():
    choice, asked = _choose(12)  # 7 GB of weights: 5 GB for activations
    assert choice.fits and choice.offload == "none" and choice.peak == 11 * GB
    assert dict(choice.rungs)[FOURISCALE_STEP] is UNCOND and dict(choice.rungs)[DECODE] is TILED
    assert choice.overrides == {"sequential_uncond": True, "vae_tiling": True, "vae_tile_size": 128}
    assert choice.levers == ("unconditional pass alone", "VAE tiles of 128 latent px")
    assert (FOURISCALE_STEP, PIECES.label) not in asked and (DECODE, SMALL.label) not in asked  # not needed
    assert "budget 12.00 GB: fits with unconditional pass alone, VAE tiles of 128" in choice.describe()


def test_the_settings_as_they_are_when_they_fit():
    choice, _ = _choose(100)
    assert choice.fits and choice.overrides == {} and choice.levers == () and choice.offload == "none"
    assert "fits with the settings as they are" in str(choice)


def test_offload_comes_after_every_other_lever():
    choice, _ = _choose(9)  # without offload the best is 7 + 3 = 10 GB; with model offload (5 GB) 5 + 4 = 9 GB
    assert choice.fits and choice.offload == "model" and choice.peak == 9 * GB
    assert dict(choice.rungs)[FOURISCALE_STEP] is UNCOND  # re-chosen from the fastest under the new offload
    assert choice.levers[-1] == "model CPU offload"


def test_nothing_fits_gives_the_lowest_estimate():
    choice, _ = _choose(1)
    assert not choice.fits and choice.offload == "model" and choice.peak == 8 * GB  # 5 GB weights + 3 GB
    assert dict(choice.rungs)[FOURISCALE_STEP] is PIECES and dict(choice.rungs)[DECODE] is SMALL
    assert "does not fit even with" in choice.describe()


def test_a_pinned_offload_mode_is_the_only_one_tried():
    choice, _ = _choose(9, offloads=("none",))
    assert not choice.fits and choice.offload == "none" and choice.peak == 10 * GB
