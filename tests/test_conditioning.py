"""Prompt encoding: chunking, batch padding, clip skip, several towers, parity with transformers."""

from __future__ import annotations

import pytest
import torch
import transformers

from lienzo.errors import InvalidArgumentError
from lienzo.io.keymaps.clip import clip_config_to_transformers, clip_hf_canonical
from lienzo.models.clip import CLIPTextConfig, CLIPTextModel
from lienzo.models.specs import TextEncoderSpec
from lienzo.text.conditioning import TokenChunk, chunk_prompt, chunk_token_ids, encode_prompts
from lienzo.text.tokenizer import CLIPTokenizer

SMALL = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4)
BIG = CLIPTextConfig(
    hidden_size=48,
    intermediate_size=37,
    num_hidden_layers=4,
    num_attention_heads=4,
    hidden_act="gelu",
    projection_dim=40,
)
HUNDRED_TOKENS = "cat " * 100


def reference_and_ours(config: CLIPTextConfig, seed: int) -> tuple[torch.nn.Module, CLIPTextModel]:
    """A transformers model with random weights and ours loaded with the same weights."""
    torch.manual_seed(seed)
    hf_config = transformers.CLIPTextConfig.from_dict(clip_config_to_transformers(config))
    if config.projection_dim is None:
        reference = transformers.CLIPTextModel(hf_config).eval()
    else:
        reference = transformers.CLIPTextModelWithProjection(hf_config).eval()
    model = CLIPTextModel(config).eval()
    model.load_state_dict(clip_hf_canonical(reference.state_dict()), strict=True)
    return reference, model


@pytest.fixture(scope="module")
def sd1_encoder():
    reference, model = reference_and_ours(SMALL, seed=0)
    return reference, (TextEncoderSpec(SMALL), model, CLIPTokenizer.from_bundled())


@pytest.fixture(scope="module")
def sdxl_encoders():
    first_reference, first = reference_and_ours(SMALL, seed=1)
    second_reference, second = reference_and_ours(BIG, seed=2)
    encoders = [
        (TextEncoderSpec(SMALL, hidden_layer=-2, final_norm=False), first, CLIPTokenizer.from_bundled()),
        (
            TextEncoderSpec(BIG, hidden_layer=-2, final_norm=False, pad_token="!", pooled=True),
            second,
            CLIPTokenizer.from_bundled("!"),
        ),
    ]
    return (first_reference, second_reference), encoders


def test_chunk_prompt_splits_every_75_tokens():
    tokenizer = CLIPTokenizer.from_bundled()
    assert chunk_prompt("", tokenizer) == [TokenChunk()]
    assert [len(chunk.tokens) for chunk in chunk_prompt("cat " * 150, tokenizer)] == [75, 75]
    assert [len(chunk.tokens) for chunk in chunk_prompt("cat " * 151, tokenizer)] == [75, 75, 1]
    assert chunk_prompt("cat " * 151, tokenizer)[2] == TokenChunk([tokenizer.token_id("cat</w>")], [1.0])


def test_chunk_token_ids_frames_and_pads():
    tokenizer = CLIPTokenizer.from_bundled("!")
    chunks = [[TokenChunk([5, 6], [1.5, 1.0])], [TokenChunk([7], [1.0]), TokenChunk([8, 9], [1.0, 0.5])]]
    ids, weights = chunk_token_ids(chunks, tokenizer, num_chunks=2)
    assert ids.shape == (2, 2, 77)
    assert ids[0, 0, :5].tolist() == [49406, 5, 6, 49407, 0]
    assert ids[0, 1, :3].tolist() == [49406, 49407, 0]
    assert ids[1, 1, :4].tolist() == [49406, 8, 9, 49407]
    assert (ids[1, 1, 4:] == 0).all()
    assert weights.shape == (2, 2, 77)
    assert weights[0, 0, :4].tolist() == [1.0, 1.5, 1.0, 1.0]
    assert weights[1, 1, :5].tolist() == [1.0, 1.0, 0.5, 1.0, 1.0]
    assert (weights != 1).sum().item() == 2


def test_short_prompt_equals_transformers_exactly(sd1_encoder):
    reference, encoder = sd1_encoder
    prompts = ["a photo of a cat", "a red cube on a table"]
    with torch.no_grad():
        conditioning = encode_prompts(prompts, [encoder])
        expected = reference(encoder[2](prompts)).last_hidden_state
    assert conditioning.context.shape == (2, 77, 32)
    assert conditioning.pooled is None
    assert torch.equal(conditioning.context, expected)


def test_long_prompt_is_chunked(sd1_encoder):
    _, encoder = sd1_encoder
    spec, model, tokenizer = encoder
    assert len(tokenizer.tokenize(HUNDRED_TOKENS)) == 100
    with torch.no_grad():
        conditioning = encode_prompts([HUNDRED_TOKENS], [encoder])
        ids, _ = chunk_token_ids([chunk_prompt(HUNDRED_TOKENS, tokenizer)], tokenizer, 2)
        second_chunk = model(ids[:, 1], want_pooled=False).hidden
    assert conditioning.context.shape == (1, 154, 32)
    assert ids[0, 1, 0].item() == tokenizer.bos_id
    assert ids[0, 1, 26].item() == tokenizer.eos_id
    assert torch.equal(conditioning.context[:, 77:], second_chunk)


def test_batch_is_padded_with_empty_chunks(sd1_encoder):
    _, encoder = sd1_encoder
    model, tokenizer = encoder[1], encoder[2]
    with torch.no_grad():
        conditioning = encode_prompts(["a cat", HUNDRED_TOKENS], [encoder])
        alone = encode_prompts(["a cat"], [encoder])
        empty = model(tokenizer([""]), want_pooled=False).hidden
    assert conditioning.context.shape == (2, 154, 32)
    torch.testing.assert_close(conditioning.context[:1, :77], alone.context, rtol=0, atol=1e-6)
    torch.testing.assert_close(conditioning.context[:1, 77:], empty, rtol=0, atol=1e-6)


def test_clip_skip_reads_earlier_layers(sd1_encoder):
    reference, encoder = sd1_encoder
    prompts = ["a photo of a cat"]
    with torch.no_grad():
        skipped = encode_prompts(prompts, [encoder], clip_skip=2).context
        hidden_states = reference(encoder[2](prompts), output_hidden_states=True).hidden_states
        expected = reference.final_layer_norm(hidden_states[-2])
    assert (skipped - expected).abs().max().item() <= 1e-5
    with pytest.raises(InvalidArgumentError, match="clip skip"):
        encode_prompts(prompts, [encoder], clip_skip=0)
    with pytest.raises(InvalidArgumentError, match="clip skip"):
        encode_prompts(prompts, [encoder], clip_skip=4)


def test_two_encoders_concatenate_features_and_pool_from_second(sdxl_encoders):
    (first_reference, second_reference), encoders = sdxl_encoders
    prompts = ["a photo of a cat", HUNDRED_TOKENS]
    with torch.no_grad():
        conditioning = encode_prompts(prompts, encoders)
        first_ids = encoders[0][2](prompts)
        second_ids = encoders[1][2](prompts)
        first = first_reference(first_ids, output_hidden_states=True)
        second = second_reference(second_ids, output_hidden_states=True)
    assert conditioning.context.shape == (2, 154, 32 + 48)
    assert conditioning.pooled.shape == (2, 40)
    first_chunk = conditioning.context[:, :77]
    assert (first_chunk[..., :32] - first.hidden_states[-2]).abs().max().item() <= 1e-5
    assert (first_chunk[..., 32:] - second.hidden_states[-2]).abs().max().item() <= 1e-5
    assert (conditioning.pooled - second.text_embeds).abs().max().item() <= 1e-5


def test_empty_inputs_are_rejected(sd1_encoder):
    with pytest.raises(InvalidArgumentError, match="prompt"):
        encode_prompts([], [sd1_encoder[1]])
    with pytest.raises(InvalidArgumentError, match="encoder"):
        encode_prompts(["a cat"], [])


def test_break_starts_a_new_chunk(sd1_encoder):
    _, encoder = sd1_encoder
    tokenizer = encoder[2]
    chunks = chunk_prompt("a cat BREAK a dog", tokenizer)
    assert [chunk.tokens for chunk in chunks] == [tokenizer.tokenize("a cat"), tokenizer.tokenize("a dog")]
    assert chunk_prompt("a cat BREAK", tokenizer) == chunk_prompt("a cat", tokenizer)
    assert chunk_prompt("BREAK a dog", tokenizer) == [TokenChunk(), *chunk_prompt("a dog", tokenizer)]
    with torch.no_grad():
        conditioning = encode_prompts(["a cat BREAK a dog"], [encoder])
        cat, dog = (encode_prompts([prompt], [encoder]).context for prompt in ("a cat", "a dog"))
    assert conditioning.context.shape == (1, 154, 32)
    torch.testing.assert_close(conditioning.context[:, :77], cat, rtol=0, atol=1e-6)
    torch.testing.assert_close(conditioning.context[:, 77:], dog, rtol=0, atol=1e-6)


def test_two_hundred_tokens_give_three_framed_chunks(sd1_encoder):
    _, encoder = sd1_encoder
    tokenizer = encoder[2]
    chunks = chunk_prompt("cat " * 200, tokenizer)
    assert [len(chunk.tokens) for chunk in chunks] == [75, 75, 50]
    ids, _ = chunk_token_ids([chunks], tokenizer, num_chunks=3)
    assert (ids[0, :, 0] == tokenizer.bos_id).all()
    assert ids[0, :, 76].tolist() == [tokenizer.eos_id, tokenizer.eos_id, tokenizer.pad_id]
    assert ids[0, 2, 51].item() == tokenizer.eos_id
    with torch.no_grad():
        conditioning = encode_prompts(["cat " * 200], [encoder])
    assert conditioning.context.shape == (1, 3 * 77, 32)


def comma_prompt(words_before_comma: int, words_after_comma: int) -> str:
    """`words_before_comma` cats, a comma, then dogs: one token per word and for the comma."""
    return "cat " * words_before_comma + ", " + "dog " * words_after_comma


@pytest.mark.parametrize(
    ("before", "backtrack", "lengths"),
    [
        (70, 20, [71, 10]),
        (55, 20, [56, 25]),
        (54, 20, [75, 6]),
        (70, 0, [75, 6]),
        (70, 5, [71, 10]),
        (70, 4, [75, 6]),
    ],
)
def test_full_chunk_moves_back_to_a_recent_comma(before, backtrack, lengths):
    tokenizer = CLIPTokenizer.from_bundled()
    chunks = chunk_prompt(comma_prompt(before, 80 - before), tokenizer, comma_backtrack=backtrack)
    assert [len(chunk.tokens) for chunk in chunks] == lengths
    joined = [token for chunk in chunks for token in chunk.tokens]
    assert joined == tokenizer.tokenize(comma_prompt(before, 80 - before))
    if lengths[0] < 75:
        assert chunks[0].tokens[-1] == tokenizer.token_id(",</w>")


def test_no_comma_means_no_move_whatever_the_backtrack():
    tokenizer = CLIPTokenizer.from_bundled()
    for backtrack in (74, 100):
        chunks = chunk_prompt("cat " * 80, tokenizer, comma_backtrack=backtrack)
        assert [len(chunk.tokens) for chunk in chunks] == [75, 5]


def test_moved_tokens_keep_their_weights():
    tokenizer = CLIPTokenizer.from_bundled()
    chunks = chunk_prompt("cat " * 70 + ", " + "(dog:1.5) " * 5 + "bird " * 5, tokenizer)
    assert [len(chunk.tokens) for chunk in chunks] == [71, 10]
    assert chunks[0].weights == [1.0] * 71
    assert chunks[1].weights == [1.5] * 5 + [1.0] * 5


def test_weighted_token_scales_then_mean_is_restored(sd1_encoder):
    _, encoder = sd1_encoder
    spec, model, tokenizer = encoder
    with torch.no_grad():
        weighted = encode_prompts(["a photo of a (cat:1.5)"], [encoder]).context[0]
        plain = encode_prompts(["a photo of a cat"], [encoder]).context[0]
    cat_position = 1 + tokenizer.tokenize("a photo of a cat").index(tokenizer.token_id("cat</w>"))
    token_weights = torch.ones(77)
    token_weights[cat_position] = 1.5
    factor = plain.mean() / (plain * token_weights[:, None]).mean()
    expected = plain * token_weights[:, None] * factor
    assert (weighted - expected).abs().max().item() <= 1e-6
    assert torch.allclose(weighted[cat_position], plain[cat_position] * 1.5 * factor, rtol=1e-6, atol=1e-6)
    others = torch.arange(77) != cat_position
    assert torch.allclose(weighted[others], plain[others] * factor, rtol=1e-6, atol=1e-6)
    assert abs(weighted.mean().item() - plain.mean().item()) <= 1e-6
    assert not torch.allclose(weighted, plain)


def test_weight_one_everywhere_is_the_plain_encoding_bit_for_bit(sd1_encoder, sdxl_encoders):
    _, encoder = sd1_encoder
    _, encoders = sdxl_encoders
    for towers in ([encoder], encoders):
        with torch.no_grad():
            plain = encode_prompts(["a photo of a cat"], towers)
            explicit = encode_prompts(["(a photo:1) of a ([cat])"], towers)
        assert torch.equal(explicit.context, plain.context)
        if plain.pooled is not None:
            assert torch.equal(explicit.pooled, plain.pooled)


def test_weights_apply_per_tower_and_leave_pooled_alone(sdxl_encoders):
    _, encoders = sdxl_encoders
    with torch.no_grad():
        weighted = encode_prompts(["a photo of a [cat]"], encoders)
        plain = encode_prompts(["a photo of a cat"], encoders)
        single = encode_prompts(["a photo of a [cat]"], encoders[1:])
    assert torch.equal(weighted.pooled, plain.pooled)
    assert not torch.allclose(weighted.context[..., :32], plain.context[..., :32])
    torch.testing.assert_close(weighted.context[..., 32:], single.context, rtol=0, atol=1e-6)


def test_weighted_prompt_does_not_depend_on_its_batch(sd1_encoder):
    _, encoder = sd1_encoder
    with torch.no_grad():
        batch = encode_prompts(["a (cat:1.3)", "[a dog] on a mat"], [encoder]).context
        alone = encode_prompts(["a (cat:1.3)"], [encoder]).context
    torch.testing.assert_close(batch[:1], alone, rtol=0, atol=1e-6)
