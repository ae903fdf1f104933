"""Adapter delta formulas: LoRA/LoCon/Tucker, LoHa, LoKr and DoRA against the LyCORIS functional oracle
(`lycoris-lora`, torch backend); (IA)^3, GLoRA, full and norm against the formula written out here."""

import lycoris.functional.general as lycoris_general
import lycoris.functional.locon as lycoris_locon
import lycoris.functional.loha as lycoris_loha
import lycoris.functional.lokr as lycoris_lokr
import pytest
import torch

from lienzo.adapters.algorithms import ModuleWeights, algorithm_of, parameter_deltas
from lienzo.errors import InvalidArgumentError

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def weight_delta(tensors: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    deltas = parameter_deltas(ModuleWeights(tensors))
    assert set(deltas) == {"weight"}
    delta = deltas["weight"](weight)
    assert delta.dtype == torch.float32 and delta.shape == weight.shape
    return delta


# --- LoRA / LoCon -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [None, 2.0, 6.0])
def test_lora_linear_matches_lycoris(alpha):
    down, up, weight = randn(4, 7), randn(5, 4), randn(5, 7)
    tensors = {"lora_down.weight": down, "lora_up.weight": up}
    if alpha is not None:
        tensors["alpha"] = torch.tensor(alpha)
    scale = 1.0 if alpha is None else alpha / 4
    expected = lycoris_locon.diff_weight(down, up, None, gamma=scale, backend="torch")
    torch.testing.assert_close(weight_delta(tensors, weight), expected, **TOLERANCE)


@pytest.mark.parametrize("kernel", [1, 3])
def test_locon_conv_matches_lycoris(kernel):
    down, up, weight = randn(3, 6, kernel, kernel), randn(8, 3, 1, 1), randn(8, 6, kernel, kernel)
    tensors = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(1.5)}
    expected = lycoris_locon.diff_weight(down, up, None, gamma=0.5, backend="torch")
    assert expected.shape == weight.shape
    torch.testing.assert_close(weight_delta(tensors, weight), expected, **TOLERANCE)


def test_locon_tucker_matches_lycoris():
    down, mid, up = randn(3, 6, 1, 1), randn(3, 3, 3, 3), randn(8, 3, 1, 1)
    weight = randn(8, 6, 3, 3)
    tensors = {
        "lora_down.weight": down,
        "lora_mid.weight": mid,
        "lora_up.weight": up,
        "alpha": torch.tensor(2.0),
    }
    expected = lycoris_locon.diff_weight(down, up, mid, gamma=2 / 3, backend="torch")
    torch.testing.assert_close(weight_delta(tensors, weight), expected, **TOLERANCE)


def test_linear_lora_on_1x1_conv_and_back():
    down, up = randn(2, 6), randn(5, 2)
    flat = up @ down
    torch.testing.assert_close(
        weight_delta({"lora_down.weight": down, "lora_up.weight": up}, randn(5, 6, 1, 1)),
        flat.reshape(5, 6, 1, 1),
        **TOLERANCE,
    )
    conv = {"lora_down.weight": down.reshape(2, 6, 1, 1), "lora_up.weight": up.reshape(5, 2, 1, 1)}
    torch.testing.assert_close(weight_delta(conv, randn(5, 6)), flat, **TOLERANCE)


def test_scale_tensor_replaces_alpha_over_rank():
    down, up, weight = randn(4, 7), randn(5, 4), randn(5, 7)
    tensors = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(2.0)}
    tensors["scale"] = torch.tensor(0.25)
    torch.testing.assert_close(weight_delta(tensors, weight), 0.25 * up @ down, **TOLERANCE)


def test_alpha_zero_means_no_scaling():
    down, up, weight = randn(4, 7), randn(5, 4), randn(5, 7)
    tensors = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(0.0)}
    torch.testing.assert_close(weight_delta(tensors, weight), up @ down, **TOLERANCE)


# --- LoHa ---------------------------------------------------------------------------------------------


def test_loha_linear_matches_lycoris():
    w1a, w1b, w2a, w2b = randn(5, 3), randn(3, 7), randn(5, 3), randn(3, 7)
    tensors = {
        "hada_w1_a": w1a,
        "hada_w1_b": w1b,
        "hada_w2_a": w2a,
        "hada_w2_b": w2b,
        "alpha": torch.tensor(1.0),
    }
    expected = lycoris_loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=1 / 3, backend="torch")
    torch.testing.assert_close(weight_delta(tensors, randn(5, 7)), expected, **TOLERANCE)


def test_loha_conv_matches_lycoris():
    w1a, w1b, w2a, w2b = randn(8, 2), randn(2, 4 * 9), randn(8, 2), randn(2, 4 * 9)
    tensors = {
        "hada_w1_a": w1a,
        "hada_w1_b": w1b,
        "hada_w2_a": w2a,
        "hada_w2_b": w2b,
        "alpha": torch.tensor(4.0),
    }
    expected = lycoris_loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=2.0, backend="torch")
    weight = randn(8, 4, 3, 3)
    torch.testing.assert_close(weight_delta(tensors, weight), expected.reshape(weight.shape), **TOLERANCE)


def test_loha_tucker_matches_lycoris():
    w1a, w1b, t1 = randn(3, 8), randn(3, 4), randn(3, 3, 3, 3)
    w2a, w2b, t2 = randn(3, 8), randn(3, 4), randn(3, 3, 3, 3)
    tensors = {
        "hada_w1_a": w1a,
        "hada_w1_b": w1b,
        "hada_w2_a": w2a,
        "hada_w2_b": w2b,
        "hada_t1": t1,
        "hada_t2": t2,
        "alpha": torch.tensor(1.5),
    }
    expected = lycoris_loha.diff_weight(w1b, w1a, w2b, w2a, t1, t2, gamma=0.5, backend="torch")
    torch.testing.assert_close(weight_delta(tensors, randn(8, 4, 3, 3)), expected, **TOLERANCE)


# --- LoKr ---------------------------------------------------------------------------------------------


def lokr_tensors(**parts):
    return {f"lokr_{name}": tensor for name, tensor in parts.items()}


def test_lokr_both_full_ignores_alpha():
    w1, w2 = randn(2, 3), randn(4, 5)
    tensors = lokr_tensors(w1=w1, w2=w2) | {"alpha": torch.tensor(7.0)}
    # Both factors full: LyCORIS's rank_scale falls back to rank = gamma, i.e. scale 1.
    expected = lycoris_lokr.diff_weight(w1, None, None, w2, None, None, None, gamma=7.0, backend="torch")
    torch.testing.assert_close(weight_delta(tensors, randn(8, 15)), expected, **TOLERANCE)


@pytest.mark.parametrize("factored", ["w1", "w2", "both"])
def test_lokr_factored_matches_lycoris(factored):
    w1, w1a, w1b = randn(2, 3), randn(2, 2), randn(2, 3)
    w2, w2a, w2b = randn(6, 5), randn(6, 2), randn(2, 5)
    tensors = {"alpha": torch.tensor(3.0)}
    args = [w1, None, None, w2, None, None, None]
    if factored in ("w1", "both"):
        tensors |= lokr_tensors(w1_a=w1a, w1_b=w1b)
        args[0:3] = [None, w1a, w1b]
    else:
        tensors |= lokr_tensors(w1=w1)
    if factored in ("w2", "both"):
        tensors |= lokr_tensors(w2_a=w2a, w2_b=w2b)
        args[3:6] = [None, w2a, w2b]
    else:
        tensors |= lokr_tensors(w2=w2)
    expected = lycoris_lokr.diff_weight(*args, gamma=3.0, backend="torch")
    torch.testing.assert_close(weight_delta(tensors, randn(12, 15)), expected, **TOLERANCE)


@pytest.mark.parametrize("flat_w2_b", [False, True])
def test_lokr_conv_matches_lycoris(flat_w2_b):
    w1, w2a, w2b = randn(2, 2), randn(4, 2), randn(2, 3, 3, 3)
    expected = lycoris_lokr.diff_weight(w1, None, None, None, w2a, w2b, None, gamma=1.0, backend="torch")
    stored_w2b = w2b.reshape(2, -1) if flat_w2_b else w2b  # kohya-style files store (r, d*k*k)
    tensors = lokr_tensors(w1=w1, w2_a=w2a, w2_b=stored_w2b) | {"alpha": torch.tensor(1.0)}
    weight = randn(8, 6, 3, 3)
    assert expected.shape == weight.shape
    torch.testing.assert_close(weight_delta(tensors, weight), expected, **TOLERANCE)


def test_lokr_tucker_matches_lycoris():
    w1, w2a, w2b, t2 = randn(2, 2), randn(3, 4), randn(3, 3), randn(3, 3, 3, 3)
    tensors = lokr_tensors(w1=w1, w2_a=w2a, w2_b=w2b, t2=t2) | {"alpha": torch.tensor(1.5)}
    # functional.lokr.diff_weight reads the rank from w2_a.shape[1], which is not the rank in the Tucker
    # layout (w2_a is (r, b)), so the oracle is its explicit-scale kron_weight with s = alpha / rank.
    expected = lycoris_lokr.kron_weight(w1, None, None, None, w2a, w2b, t2, scale=0.5, backend="torch")
    torch.testing.assert_close(weight_delta(tensors, randn(8, 6, 3, 3)), expected, **TOLERANCE)


def test_lokr_tucker_factored_w1_matches_lycoris():
    w1a, w1b, w2a, w2b, t2 = randn(2, 3), randn(3, 2), randn(3, 4), randn(3, 3), randn(3, 3, 3, 3)
    tensors = lokr_tensors(w1_a=w1a, w1_b=w1b, w2_a=w2a, w2_b=w2b, t2=t2) | {"alpha": torch.tensor(1.5)}
    expected = lycoris_lokr.diff_weight(None, w1a, w1b, None, w2a, w2b, t2, gamma=1.5, backend="torch")
    torch.testing.assert_close(weight_delta(tensors, randn(8, 6, 3, 3)), expected, **TOLERANCE)


# --- DoRA ---------------------------------------------------------------------------------------------


def dora_lora(weight_shape, dora_shape, alpha=2.0):
    out, inputs, *kernel = weight_shape
    down, up = randn(4, inputs, *kernel), randn(out, 4, *[1] * len(kernel))
    magnitude = torch.rand(dora_shape) + 0.5
    tensors = {
        "lora_down.weight": down,
        "lora_up.weight": up,
        "alpha": torch.tensor(alpha),
        "dora_scale": magnitude,
    }
    lora = lycoris_locon.diff_weight(down, up, None, gamma=alpha / 4, backend="torch")
    return tensors, lora, magnitude


@pytest.mark.parametrize(
    ("weight_shape", "dora_shape", "on_out"),
    [
        ((6, 5), (6, 1), True),
        ((6, 5), (1, 5), False),
        ((6, 5, 3, 3), (6, 1, 1, 1), True),
        ((6, 5, 3, 3), (1, 5, 1, 1), False),
        ((5, 5), (5, 1), True),
        ((5, 5), (1, 5), False),
    ],
)
def test_dora_matches_lycoris_weight_decompose(weight_shape, dora_shape, on_out):
    weight = randn(*weight_shape)
    tensors, lora, magnitude = dora_lora(weight_shape, dora_shape)
    merged = lycoris_general.weight_decompose(weight + lora, magnitude, 1, on_out, backend="torch")
    torch.testing.assert_close(weight + weight_delta(tensors, weight), merged, **TOLERANCE)


def test_dora_multiplier_scales_the_change_w_d_minus_w():
    weight = randn(6, 5)
    tensors, lora, magnitude = dora_lora((6, 5), (6, 1))
    delta = weight_delta(tensors, weight)
    v = weight + lora
    decomposed = v * magnitude / v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(weight + delta, decomposed, **TOLERANCE)
    torch.testing.assert_close((weight + delta).norm(dim=1, keepdim=True), magnitude, **TOLERANCE)
    # At m = 0.5 the patcher's W + m * delta is W + m (W_d - W) (ComfyUI/A1111), which is not LyCORIS's
    # V (m (dora_scale/||V|| - 1) + 1): the two conventions agree only at m = 1.
    torch.testing.assert_close(weight + 0.5 * delta, weight + 0.5 * (decomposed - weight), **TOLERANCE)
    lycoris_half = lycoris_general.weight_decompose(v, magnitude, 0.5, True, backend="torch")
    assert not torch.allclose(weight + 0.5 * delta, lycoris_half, **TOLERANCE)


def test_dora_peft_magnitude_vector_is_the_output_axis():
    weight = randn(6, 5)
    tensors, lora, magnitude = dora_lora((6, 5), (6,))
    merged = lycoris_general.weight_decompose(
        weight + lora, magnitude.reshape(6, 1), 1, True, backend="torch"
    )
    torch.testing.assert_close(weight + weight_delta(tensors, weight), merged, **TOLERANCE)


def test_dora_on_loha_and_lokr():
    weight, magnitude = randn(6, 4), torch.rand(6, 1) + 0.5
    w1a, w1b, w2a, w2b = randn(6, 2), randn(2, 4), randn(6, 2), randn(2, 4)
    loha = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "dora_scale": magnitude}
    diff = lycoris_loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=1.0, backend="torch")
    merged = lycoris_general.weight_decompose(weight + diff, magnitude, 1, True, backend="torch")
    torch.testing.assert_close(weight + weight_delta(loha, weight), merged, **TOLERANCE)

    w1, w2 = randn(2, 2), randn(3, 2)
    lokr = lokr_tensors(w1=w1, w2=w2) | {"dora_scale": magnitude.reshape(1, 6)[:, :4]}
    diff = lycoris_lokr.diff_weight(w1, None, None, w2, None, None, None, gamma=1.0, backend="torch")
    merged = lycoris_general.weight_decompose(weight + diff, lokr["dora_scale"], 1, False, backend="torch")
    torch.testing.assert_close(weight + weight_delta(lokr, weight), merged, **TOLERANCE)


def test_dora_zero_row_gives_zero_not_nan():
    weight = randn(3, 4)
    weight[1] = 0
    tensors = {
        "lora_down.weight": torch.zeros(2, 4),
        "lora_up.weight": torch.zeros(3, 2),
        "dora_scale": torch.ones(3, 1),
    }
    patched = weight + weight_delta(tensors, weight)
    assert torch.isfinite(patched).all() and (patched[1] == 0).all()


# --- (IA)^3, GLoRA, full, norm: the formulas written out ----------------------------------------------


@pytest.mark.parametrize("on_input", [False, True])
def test_ia3_linear(on_input):
    weight = randn(5, 7)
    vector = randn(7 if on_input else 5)
    tensors = {"weight": vector, "on_input": torch.tensor(int(on_input))}
    expected = weight * (vector[None, :] if on_input else vector[:, None])
    torch.testing.assert_close(weight_delta(tensors, weight), expected, **TOLERANCE)


@pytest.mark.parametrize("on_input", [False, True])
def test_ia3_conv(on_input):
    weight = randn(5, 7, 3, 3)
    vector = randn(1, 7 if on_input else 5, 1, 1)  # LyCORIS stores conv (IA)^3 vectors as (1, n, 1, 1)
    tensors = {"weight": vector, "on_input": torch.tensor(on_input)}
    flat = vector.reshape(-1)
    expected = weight * (flat[None, :, None, None] if on_input else flat[:, None, None, None])
    torch.testing.assert_close(weight_delta(tensors, weight), expected, **TOLERANCE)


def test_glora_current_layout_linear_and_conv():
    rank, alpha = 2, 3.0
    weight = randn(5, 7)
    a1, a2, b1, b2 = randn(7, rank), randn(rank, 7), randn(5, rank), randn(rank, 7)
    tensors = {
        "a1.weight": a1,
        "a2.weight": a2,
        "b1.weight": b1,
        "b2.weight": b2,
        "alpha": torch.tensor(alpha),
    }
    expected = (alpha / rank) * (weight @ a1 @ a2 + b1 @ b2)
    torch.testing.assert_close(weight_delta(tensors, weight), expected, **TOLERANCE)

    conv = randn(5, 7, 3, 3)
    c_a1, c_a2, c_b1, c_b2 = (
        randn(7, rank, 1, 1),
        randn(rank, 7, 1, 1),
        randn(5, rank, 1, 1),
        randn(rank, 7, 3, 3),
    )
    tensors = {"a1.weight": c_a1, "a2.weight": c_a2, "b1.weight": c_b1, "b2.weight": c_b2}
    wa = torch.einsum("oikl,ij->ojkl", conv, c_a1[:, :, 0, 0] @ c_a2[:, :, 0, 0])
    wb = (c_b1.reshape(5, rank) @ c_b2.reshape(rank, -1)).reshape(conv.shape)
    torch.testing.assert_close(weight_delta(tensors, conv), wa + wb, **TOLERANCE)


def test_glora_tucker_b_half():
    rank = 2
    conv = randn(5, 7, 3, 3)
    a1, a2 = randn(7, rank, 1, 1), randn(rank, 7, 1, 1)
    b1, bm, b2 = randn(5, rank, 1, 1), randn(rank, rank, 3, 3), randn(rank, 7, 1, 1)
    tensors = {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2, "bm.weight": bm}
    wa = torch.einsum("oikl,ij->ojkl", conv, a1[:, :, 0, 0] @ a2[:, :, 0, 0])
    wb = torch.einsum("mnkl,om,ni->oikl", bm, b1[:, :, 0, 0], b2[:, :, 0, 0])
    torch.testing.assert_close(weight_delta(tensors, conv), wa + wb, **TOLERANCE)


def test_glora_old_layout_linear():
    rank = 2
    weight = randn(5, 7)
    a1, a2, b1, b2 = randn(rank, 7), randn(7, rank), randn(rank, 7), randn(5, rank)
    tensors = {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2, "alpha": torch.tensor(1.0)}
    expected = 0.5 * (weight @ a2 @ a1 + b2 @ b1)
    torch.testing.assert_close(weight_delta(tensors, weight), expected, **TOLERANCE)


def test_glora_layout_that_fits_neither_is_an_error():
    tensors = {
        "a1.weight": randn(3, 2),
        "a2.weight": randn(2, 3),
        "b1.weight": randn(4, 2),
        "b2.weight": randn(2, 3),
    }
    with pytest.raises(InvalidArgumentError, match="GLoRA"):
        weight_delta(tensors, randn(5, 7))


def test_full_and_norm_change_weight_and_bias():
    diff, diff_b = randn(5, 7), randn(5)
    deltas = parameter_deltas(ModuleWeights({"diff": diff, "diff_b": diff_b}))
    assert set(deltas) == {"weight", "bias"}
    torch.testing.assert_close(deltas["weight"](randn(5, 7)), diff)
    torch.testing.assert_close(deltas["bias"](randn(5)), diff_b)
    assert set(parameter_deltas(ModuleWeights({"diff": diff}))) == {"weight"}

    w_norm, b_norm = randn(8), randn(8)
    deltas = parameter_deltas(ModuleWeights({"w_norm": w_norm, "b_norm": b_norm}))
    assert set(deltas) == {"weight", "bias"}
    torch.testing.assert_close(deltas["weight"](randn(8)), w_norm)
    torch.testing.assert_close(deltas["bias"](randn(8)), b_norm)


# --- detection, dtypes, shapes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "algorithm"),
    [
        (["lora_up.weight", "lora_down.weight"], "lora"),
        (["lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "dora_scale"], "lora"),
        (["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"], "loha"),
        (["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"], "loha"),
        (["lokr_w1", "lokr_w2"], "lokr"),
        (["lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"], "lokr"),
        (["weight", "on_input"], "ia3"),
        (["a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"], "glora"),
        (["diff", "diff_b"], "full"),
        (["diff"], "full"),
        (["w_norm", "b_norm"], "norm"),
    ],
)
def test_algorithm_of(parts, algorithm):
    assert algorithm_of(ModuleWeights(dict.fromkeys(parts, torch.zeros(1)))) == algorithm


@pytest.mark.parametrize(
    "parts",
    [
        ["lora_up.weight"],
        ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1"],
        ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2"],
        ["lokr_w1", "lokr_w2", "lokr_t2"],
        ["lora_up.weight", "lora_down.weight", "hada_w1_a"],
        ["oft_blocks", "alpha"],
        ["lora_up.weight", "lora_down.weight", "something_else"],
    ],
)
def test_unknown_part_sets_are_refused_by_name(parts):
    with pytest.raises(InvalidArgumentError) as error:
        algorithm_of(ModuleWeights(dict.fromkeys(parts, torch.zeros(1))))
    assert all(part in str(error.value) for part in parts)
    with pytest.raises(InvalidArgumentError):
        parameter_deltas(ModuleWeights(dict.fromkeys(parts, torch.zeros(1))))


def test_half_precision_parts_give_float32_deltas():
    down, up, weight = randn(4, 7), randn(5, 4), randn(5, 7)
    tensors = {
        "lora_down.weight": down.half(),
        "lora_up.weight": up.half(),
        "alpha": torch.tensor(2.0).half(),
    }
    delta = parameter_deltas(ModuleWeights(tensors))["weight"](weight.half())
    assert delta.dtype == torch.float32
    torch.testing.assert_close(delta, 0.5 * up.half().float() @ down.half().float(), **TOLERANCE)
    loha = {
        "hada_w1_a": up.half(),
        "hada_w1_b": down.half(),
        "hada_w2_a": up.half(),
        "hada_w2_b": down.half(),
    }
    assert parameter_deltas(ModuleWeights(loha))["weight"](weight).dtype == torch.float32
    full = parameter_deltas(ModuleWeights({"diff": weight.bfloat16(), "diff_b": randn(5).half()}))
    assert full["weight"](weight).dtype == full["bias"](randn(5)).dtype == torch.float32


def test_delta_that_does_not_fit_the_parameter_is_an_error():
    tensors = {"lora_down.weight": randn(4, 7), "lora_up.weight": randn(5, 4)}
    with pytest.raises(InvalidArgumentError, match="different model"):
        parameter_deltas(ModuleWeights(tensors))["weight"](randn(5, 8))
    with pytest.raises(InvalidArgumentError, match="different model"):
        parameter_deltas(ModuleWeights({"weight": randn(3)}))["weight"](randn(5, 7))
    with pytest.raises(InvalidArgumentError, match="different model"):
        parameter_deltas(ModuleWeights(tensors))["weight"](randn(5))
