"""Model families as data: one family-name parser, variant channels, vector widths and schedules."""

from __future__ import annotations

import pytest

from lienzo.errors import InvalidArgumentError
from lienzo.io.keymaps.scheduler import DIFFUSERS_BETA_SCHEDULES
from lienzo.io.layouts import LAYOUTS, family_layout
from lienzo.models.specs import (
    BASE_FAMILIES,
    BETA_SCHEDULES,
    SD1,
    SDXL,
    SDXL_REFINER,
    VARIANTS,
    VECTOR_VALUES,
    FamilyName,
    NoiseScheduleConfig,
    family_spec,
    parse_family,
    variant_in_channels,
)

KNOWN = "use one of sd1, sd2, sd2-v, sdxl, sdxl-refiner, optionally with an -inpaint or -depth suffix"


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("sd1", FamilyName("sd1")),
        ("sd2-v", FamilyName("sd2-v")),
        ("sd2-v-depth", FamilyName("sd2-v", "depth")),
        ("sdxl-refiner-inpaint", FamilyName("sdxl-refiner", "inpaint")),
    ],
)
def test_parse_family_splits_base_and_variant(name, parsed):
    assert parse_family(name) == parsed
    assert parsed.name == name


@pytest.mark.parametrize("name", ["sdxl-v", "sd1-v", "sd3", "sd1-upscale", "inpaint", ""])
def test_unknown_family_names_say_which_exist(name):
    with pytest.raises(InvalidArgumentError, match=KNOWN):
        parse_family(name)
    with pytest.raises(InvalidArgumentError, match=KNOWN):
        family_layout(name)


@pytest.mark.parametrize(("variant", "in_channels"), [("inpaint", 9), ("depth", 5)])
def test_variants_take_their_input_channels_from_the_latent_width(variant, in_channels):
    spec = family_spec(f"sd2-v-{variant}")
    assert spec.name == f"sd2-v-{variant}" and spec.variant == variant and spec.prediction == "v"
    assert spec.unet.in_channels == in_channels == variant_in_channels(variant, 4)
    assert spec.concat_channels == in_channels - spec.vae.embed_dim
    assert variant in VARIANTS
    assert family_spec("sd2-v").variant is None


def test_every_base_family_has_a_storage_layout():
    assert set(LAYOUTS) == set(BASE_FAMILIES)
    assert family_layout("sd2-v-inpaint") is LAYOUTS["sd2"]


def test_vector_inputs_are_pooled_text_plus_embedded_values():
    for spec in (SDXL, SDXL_REFINER):
        values = VECTOR_VALUES[spec.vector_conditioning]
        assert spec.unet.adm_in_channels == spec.pooled_width + values * spec.unet.addition_time_embed_dim
    assert SDXL.pooled_width == 1280 and SD1.pooled_width is None


def test_every_beta_schedule_has_a_diffusers_name_and_a_summary():
    assert set(DIFFUSERS_BETA_SCHEDULES) == set(BETA_SCHEDULES)
    assert SD1.schedule.summary() == "scaled_linear betas 0.00085 to 0.012, 1000 timesteps"
    zsnr = NoiseScheduleConfig(linear_end=0.0125, zero_terminal_snr=True)
    assert zsnr.summary().endswith("0.0125, 1000 timesteps, zero terminal SNR")


def test_variant_widths_follow_a_wider_latent():
    assert [variant_in_channels(variant, 16) for variant in (None, *VARIANTS)] == [16, 33, 17]
