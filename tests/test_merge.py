"""Checkpoint merging (A1111's formulas), LoRA and VAE bake-in, and LoRA extraction (kohya's SVD) on the
tiny models; the CLI's `merge` and `extract-lora` round trips."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

import lienzo
from lienzo.cli import main
from lienzo.errors import InvalidArgumentError
from lienzo.io import ModelFiles, read_model, read_safetensors_metadata, read_state_dict, write_model
from lienzo.io.keymaps.vae import vae_ldm_to_diffusers
from lienzo.io.layouts import VAE_PREFIX
from lienzo.io.vae_files import read_vae
from lienzo.training.extract_lora import extract_lora, lora_metadata, lora_modules, write_lora
from lienzo.training.merge import (
    LoraBake,
    bake_lora,
    bake_loras,
    bake_vae,
    merge_models,
    write_merged,
)
from test_generate_parity import reference_pipeline
from test_lora import kohya_file
from tiny_models import tiny_pipeline_folder

M = 0.3
FORMULA_TOLERANCE = 1e-6
RELATIVE_TOLERANCE = 1e-4


def tiny(family: str) -> ModelFiles:
    return read_model(tiny_pipeline_folder(family))


def perturbed(
    files: ModelFiles, seed: int, scale: float = 0.05, text_scale: float | None = None
) -> ModelFiles:
    """A "fine-tune" of `files`: every floating-point tensor moved by seeded noise (text by `text_scale`)."""
    generator = torch.Generator().manual_seed(seed)

    def move(state, size):
        return {
            key: value + size * torch.randn(value.shape, generator=generator)
            if value.is_floating_point()
            else value
            for key, value in state.items()
        }

    text = scale if text_scale is None else text_scale
    return replace(
        files,
        unet=move(files.unet, scale),
        vae=move(files.vae, scale),
        text_encoders=[move(state, text) for state in files.text_encoders],
    )


def states(files: ModelFiles) -> dict[str, dict[str, torch.Tensor]]:
    return files.components()


def max_error(result: ModelFiles, expected: dict[str, dict[str, torch.Tensor]]) -> float:
    """The largest absolute difference over every tensor (the key sets must be equal)."""
    error = 0.0
    for name, state in states(result).items():
        assert set(state) == set(expected[name]), name
        for key, value in state.items():
            error = max(error, (value.float() - expected[name][key].float()).abs().max().item())
    return error


def expected_states(a: ModelFiles, formula) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {key: formula(name, key, value) for key, value in state.items()}
        for name, state in states(a).items()
    }


# --- merging --------------------------------------------------------------------------------------------


def test_weighted_sum_follows_the_formula_key_by_key():
    a = tiny("sd1")
    b = perturbed(a, 1)
    merged = merge_models(a, b, method="weighted_sum", multiplier=M)
    expected = expected_states(a, lambda name, key, value: (1 - M) * value + M * states(b)[name][key])
    error = max_error(merged, expected)
    print(f"weighted sum: max abs error {error:.1e}")
    assert error < FORMULA_TOLERANCE
    assert all(v.dtype == torch.float32 for state in states(merged).values() for v in state.values())


def test_add_difference_follows_the_formula_and_a_key_missing_from_c_adds_nothing():
    a = tiny("sd1")
    b, c = perturbed(a, 1), perturbed(a, 2)
    gone = "input_blocks.1.1.proj_in.weight"
    c = replace(c, unet={key: value for key, value in c.unet.items() if key != gone})
    merged = merge_models(a, b, c, method="add_difference", multiplier=0.7)

    def formula(name, key, value):
        if name == "unet" and key == gone:
            return value
        return value + 0.7 * (states(b)[name][key] - states(c)[name][key])

    error = max_error(merged, expected_states(a, formula))
    print(f"add difference: max abs error {error:.1e}")
    assert error < FORMULA_TOLERANCE
    assert torch.equal(merged.unet[gone], a.unet[gone])


def test_no_interpolation_is_a():
    a = tiny("sd1")
    merged = merge_models(a, method="no_interpolation", multiplier=M)
    assert max_error(merged, states(a)) == 0.0


def test_only_tensors_present_in_b_change_and_position_ids_never():
    a = tiny("sd1")
    a = replace(
        a, text_encoders=[{**a.text_encoders[0], "text_model.embeddings.position_ids": torch.ones(1, 77)}]
    )
    b = perturbed(a, 1)
    kept = "out.2.weight"
    b = replace(b, unet={key: value for key, value in b.unet.items() if key != kept})
    merged = merge_models(a, b, multiplier=0.5)
    assert torch.equal(merged.unet[kept], a.unet[kept])
    ids = "text_model.embeddings.position_ids"
    assert torch.equal(merged.text_encoders[0][ids], a.text_encoders[0][ids])


def test_an_inpaint_a_merges_only_the_first_four_input_channels_of_a_plain_b():
    a, b = tiny("sd1-inpaint"), perturbed(tiny("sd1"), 3)
    merged = merge_models(a, b, multiplier=M)
    key = "input_blocks.0.0.weight"
    assert merged.family == "sd1-inpaint" and merged.unet[key].shape[1] == 9
    torch.testing.assert_close(
        merged.unet[key][:, :4], (1 - M) * a.unet[key][:, :4] + M * b.unet[key], rtol=0, atol=1e-6
    )
    assert torch.equal(merged.unet[key][:, 4:], a.unet[key][:, 4:])
    other = "input_blocks.1.1.proj_in.weight"
    torch.testing.assert_close(merged.unet[other], (1 - M) * a.unet[other] + M * b.unet[other])
    with pytest.raises(InvalidArgumentError, match="sd1-inpaint model must be A"):
        merge_models(b, a, multiplier=M)


def test_models_of_two_families_are_refused_naming_both():
    with pytest.raises(InvalidArgumentError, match=r"A \(sd1\) with model B \(sdxl\)"):
        merge_models(tiny("sd1"), tiny("sdxl"), multiplier=M)


def test_fp16_output_with_the_merge_recorded(tmp_path):
    a = tiny("sd1")
    merged = merge_models(a, perturbed(a, 1), multiplier=M)
    path = write_merged(
        merged, tmp_path / "mix.safetensors", dtype=torch.float16, metadata={"sd_merge_recipe": "{}"}
    )
    tensors = read_state_dict(path)
    assert {value.dtype for value in tensors.values() if value.is_floating_point()} == {torch.float16}
    assert read_safetensors_metadata(path)["sd_merge_recipe"] == "{}"
    back = read_model(path)
    assert back.family == "sd1"
    torch.testing.assert_close(back.unet["out.2.weight"], merged.unet["out.2.weight"].half())
    with pytest.raises(InvalidArgumentError, match="already exists"):
        write_merged(merged, path)


# --- VAE bake-in ----------------------------------------------------------------------------------------


def test_a_vae_in_diffusers_naming_or_inside_a_checkpoint_is_baked_in(tmp_path):
    from safetensors.torch import save_file

    a = tiny("sd1")
    other = perturbed(a, 5).vae
    diffusers_file = tmp_path / "vae.safetensors"
    save_file(vae_ldm_to_diffusers(other, a.spec.vae), diffusers_file)
    checkpoint = tmp_path / "full.safetensors"
    save_file(
        {VAE_PREFIX + key: value for key, value in other.items()} | {"loss.logvar": torch.zeros(())},
        checkpoint,
    )
    for source in (diffusers_file, checkpoint):
        baked = bake_vae(a, read_vae(source))
        assert all(torch.equal(baked.vae[key], other[key]) for key in a.vae)
        assert baked.unet is a.unet
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        bake_vae(a, {key: value for key, value in other.items() if "decoder" not in key})


# --- LoRA bake-in ---------------------------------------------------------------------------------------


def test_baked_loras_give_the_weights_the_pipeline_patches_in(tmp_path):
    """One LoRA at UNet 0.7 / text 0.3, then two together (each from the original weights, summed)."""
    paths = [tmp_path / "style.safetensors", tmp_path / "ink.safetensors"]
    for seed, path in enumerate(paths, start=1):
        kohya_file(reference_pipeline("sd1"), path, torch.Generator().manual_seed(seed))
    files = tiny("sd1")
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32, cache=False)
    cases = [
        ([LoraBake(paths[0], 0.7, 0.3)], bake_lora(files, paths[0], strength=0.7, text_strength=0.3)),
        ([LoraBake(paths[0], 0.7, 0.3), LoraBake(paths[1], -0.4)], None),
    ]
    for loras, baked in cases:
        baked = baked or bake_loras(files, loras)
        for lora in loras:
            pipe.loras.add(lora.path, lora.strength, text_strength=lora.text_strength)
        unet, text = pipe.unet.state_dict(), pipe.text_encoders[0].state_dict()
        unet_error = max((baked.unet[key] - unet[key]).abs().max().item() for key in unet)
        text_error = max((baked.text_encoders[0][key] - text[key]).abs().max().item() for key in text)
        changed = sum(not torch.equal(baked.unet[key], files.unet[key]) for key in files.unet)
        print(f"{len(loras)} baked vs Pipeline: UNet error {unet_error:.1e}, text {text_error:.1e}")
        assert unet_error == 0.0 and text_error == 0.0
        assert changed > 50
        pipe.loras.remove(*pipe.loras.strengths)


# --- LoRA extraction ------------------------------------------------------------------------------------


def low_rank_product(lora: dict[str, torch.Tensor], key: str, shape) -> torch.Tensor:
    up, down = lora[f"{key}.lora_up.weight"], lora[f"{key}.lora_down.weight"]
    scale = lora[f"{key}.alpha"].item() / down.shape[0]
    return (up.flatten(1) @ down.flatten(1)).reshape(shape) * scale


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_extraction_at_full_rank_reproduces_the_difference(family):
    base = tiny(family)
    tuned = perturbed(base, 4)
    lora = extract_lora(tuned, base, rank=1024, conv_rank=1024, clamp_quantile=None)
    modules = lora_modules(base, conv=True)
    assert len(lora) == 3 * len(modules)
    named = {"unet": (tuned.unet, base.unet)} | {
        ("text", i): (tuned.text_encoders[i], base.text_encoders[i]) for i in range(len(base.text_encoders))
    }
    worst = 0.0
    for module in modules:
        new, old = named[module.component]
        delta = new[module.weight] - old[module.weight]
        error = (low_rank_product(lora, module.key, delta.shape) - delta).norm() / delta.norm()
        worst = max(worst, error.item())
    print(f"{family} full-rank extraction: worst relative error {worst:.1e} over {len(modules)} modules")
    assert worst < RELATIVE_TOLERANCE
    spatial = [module for module in modules if module.spatial]
    assert spatial and all(lora[f"{m.key}.lora_up.weight"].shape[2:] == (1, 1) for m in spatial)


def test_a_low_rank_extraction_errs_by_the_discarded_singular_values():
    base = tiny("sd1")
    tuned = perturbed(base, 4)
    rank = 3
    lora = extract_lora(tuned, base, rank=rank, clamp_quantile=None)
    worst = 0.0
    for module in lora_modules(base, conv=False):
        new, old = (
            (tuned.unet, base.unet)
            if module.component == "unet"
            else (tuned.text_encoders[0], base.text_encoders[0])
        )
        delta = new[module.weight] - old[module.weight]
        residual = (low_rank_product(lora, module.key, delta.shape) - delta).norm()
        discarded = torch.linalg.svdvals(delta.flatten(1))[rank:].norm()
        worst = max(worst, abs(residual.item() - discarded.item()) / discarded.item())
        assert lora[f"{module.key}.alpha"].item() == lora[f"{module.key}.lora_down.weight"].shape[0] == rank
    print(f"rank-{rank} extraction: worst relative difference from the discarded singular values {worst:.1e}")
    assert worst < RELATIVE_TOLERANCE


def test_clamping_bounds_the_factors_and_unchanged_text_encoders_are_left_out():
    base = tiny("sd1")
    tuned = perturbed(base, 4, text_scale=1e-4)
    lora = extract_lora(tuned, base, rank=4)
    assert lora and not any(key.startswith("lora_te") for key in lora)
    assert not any(key.startswith("lora_unet_conv_in") or "resnets" in key for key in lora)
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    up, down = lora[f"{key}.lora_up.weight"], lora[f"{key}.lora_down.weight"]
    values = torch.cat([up.flatten(), down.flatten()])
    unclamped = extract_lora(tuned, base, rank=4, clamp_quantile=None)
    assert (
        values.abs().max()
        <= torch.cat(
            [unclamped[f"{key}.lora_up.weight"].flatten(), unclamped[f"{key}.lora_down.weight"].flatten()]
        )
        .abs()
        .max()
    )
    assert (values.abs() == values.abs().max()).sum() > 1  # clamped at the quantile


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_extracted_lora_loads_through_lienzo_and_turns_the_base_into_the_tuned_model(family, tmp_path):
    base = tiny(family)
    tuned = perturbed(base, 6)
    lora = extract_lora(tuned, base, rank=1024, conv_rank=1024, clamp_quantile=None)
    path = write_lora(
        lora, tmp_path / "extracted.safetensors", metadata=lora_metadata(base, rank=1024, conv_rank=1024)
    )
    pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32, cache=False)
    pipe.loras.add(path)
    patched = pipe.unet.state_dict()
    for module in lora_modules(base, conv=True):
        if module.component == "unet":
            torch.testing.assert_close(patched[module.weight], tuned.unet[module.weight], rtol=0, atol=1e-5)
    metadata = read_safetensors_metadata(path)
    assert metadata["ss_network_dim"] == "1024" and metadata["ss_network_module"] == "networks.lora"


def test_an_extracted_sd1_lora_converts_through_diffusers_onto_its_modules():
    base = tiny("sd1")
    lora = extract_lora(perturbed(base, 7), base, rank=4, conv_rank=4)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(lora))
    assert len(alphas) == len(lora) // 3
    reference = reference_pipeline("sd1")
    unet_modules = dict(reference.unet.named_modules())
    text_modules = {
        name.removeprefix("text_model."): module for name, module in reference.text_encoder.named_modules()
    }
    unet_keys = convert_unet_state_dict_to_peft(
        {k.removeprefix("unet."): v for k, v in converted.items() if k.startswith("unet.")}
    )
    text_keys = convert_state_dict_to_peft(
        {k.removeprefix("text_encoder."): v for k, v in converted.items() if k.startswith("text_encoder.")}
    )
    assert len(unet_keys) + len(text_keys) == 2 * (len(lora) // 3)
    for keys, modules in ((unet_keys, unet_modules), (text_keys, text_modules)):
        for key, tensor in keys.items():
            module_name, part = key.rsplit(".lora_", 1)
            module = modules[module_name.removeprefix("text_model.")]
            if part == "A.weight":
                assert tensor.shape[1] == module.weight.shape[1]
            else:
                assert tensor.shape[0] == module.weight.shape[0]


# --- the command line -----------------------------------------------------------------------------------


@pytest.fixture
def checkpoints(tmp_path):
    """A (sd1), B and C its perturbed copies, as single files."""
    a = tiny("sd1")
    paths = {}
    for name, files in (("a", a), ("b", perturbed(a, 1)), ("c", perturbed(a, 2))):
        paths[name] = write_model(files, tmp_path / f"{name}.safetensors")
    return paths


def test_cli_merge_bakes_loras_and_records_the_recipe(checkpoints, tmp_path):
    lora = tmp_path / "style.safetensors"
    kohya_file(reference_pipeline("sd1"), lora, torch.Generator().manual_seed(1))
    out = tmp_path / "mix.safetensors"
    args = [str(checkpoints[n]) for n in "abc"]
    assert (
        main(
            [
                "merge",
                *args,
                "--method",
                "add-difference",
                "-m",
                "0.6",
                "-o",
                str(out),
                "--lora",
                f"{lora}:0.5",
            ]
        )
        == 0
    )
    a, b, c = (read_model(checkpoints[n]) for n in "abc")
    expected = bake_lora(merge_models(a, b, c, method="add_difference", multiplier=0.6), lora, strength=0.5)
    result = read_model(out)
    assert max_error(result, states(expected)) == 0.0
    recipe = json.loads(read_safetensors_metadata(out)["sd_merge_recipe"])
    assert recipe["interp_method"] == "Add difference" and recipe["multiplier"] == 0.6
    assert [model["name"] for model in recipe["models"]] == [
        "a.safetensors",
        "b.safetensors",
        "c.safetensors",
    ]
    assert recipe["loras"][0]["strength"] == 0.5 and len(recipe["primary_model_hash"]) == 64


def test_cli_no_interpolation_bakes_a_vae_by_name_in_fp16(tmp_path):
    from safetensors.torch import save_file

    a = tiny("sd1")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "vae").mkdir()
    write_model(a, tmp_path / "models" / "checkpoints" / "base.safetensors")
    vae = perturbed(a, 8).vae
    save_file(vae_ldm_to_diffusers(vae, a.spec.vae), tmp_path / "models" / "vae" / "ft.safetensors")
    out = tmp_path / "baked.safetensors"
    library = ["--models-dir", str(tmp_path / "models")]
    args = [
        "merge",
        "base",
        "--method",
        "no-interpolation",
        "--bake-vae",
        "ft",
        "--dtype",
        "fp16",
        "-o",
        str(out),
    ]
    assert main([*args, *library]) == 0
    result = read_model(out)
    assert all(torch.equal(result.vae[key], vae[key].half()) for key in vae)
    assert all(torch.equal(result.unet[key], a.unet[key].half()) for key in a.unet)
    recipe = json.loads(read_safetensors_metadata(out)["sd_merge_recipe"])
    assert recipe["bake_in_vae"] == "ft.safetensors" and recipe["save_as_half"] is True


def test_cli_merge_errors_are_one_line_and_write_nothing(checkpoints, tmp_path, capsys):
    out = tmp_path / "mix.safetensors"
    sdxl = write_model(tiny("sdxl"), tmp_path / "xl.safetensors")
    before = set(tmp_path.iterdir())
    assert main(["merge", str(checkpoints["a"]), str(sdxl), "-o", str(out)]) == 1
    assert main(["merge", str(checkpoints["a"]), "-o", str(out)]) == 1
    assert main(["merge", str(checkpoints["a"]), str(checkpoints["b"]), "-o", str(checkpoints["c"])]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "sdxl" in errors[0] and "takes 2 model(s)" in errors[1] and "already exists" in errors[2]
    assert set(tmp_path.iterdir()) == before


def test_cli_extract_lora_round_trip(checkpoints, tmp_path):
    out = tmp_path / "lora.safetensors"
    args = [str(checkpoints["b"]), str(checkpoints["a"]), "-o", str(out), "--rank", "4", "--conv-rank", "2"]
    assert main(["extract-lora", *args, "--dtype", "fp16"]) == 0
    expected = extract_lora(read_model(checkpoints["b"]), read_model(checkpoints["a"]), rank=4, conv_rank=2)
    written = read_state_dict(out)
    assert set(written) == set(expected)
    assert all(torch.equal(written[key], expected[key].half()) for key in expected)
    metadata = read_safetensors_metadata(out)
    assert metadata["ss_network_dim"] == "4" and json.loads(metadata["ss_network_args"])["conv_dim"] == "2"
    pipe = lienzo.load(checkpoints["a"], device="cpu", dtype=torch.float32, cache=False)
    pipe.loras.add(out)
