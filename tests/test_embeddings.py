"""Textual inversion: embedding files (every layout, safe pickles), triggering, parity with diffusers."""

from __future__ import annotations

import hashlib
import os
import pickle

import diffusers
import pytest
import safetensors.torch
import torch
from torch import nn

import lienzo
from lienzo.errors import InvalidArgumentError, UnsafeCheckpointError
from lienzo.io.embedding_files import (
    embedding_vectors,
    load_embeddings,
    read_embedding_file,
    write_embedding_file,
)
from lienzo.text.conditioning import TextEncoders, chunk_prompt, encode_prompts
from lienzo.text.embeddings import Embeddings, EmbeddingVectors
from parity import max_error
from tiny_models import tiny_pipeline_folder

TOLERANCE = 1e-5
SD1_WIDTH = 32
SDXL_WIDTHS = (32, 48)
FILLER = "cat "


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sd1():
    return lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def sdxl():
    return lienzo.load(tiny_pipeline_folder("sdxl"), device="cpu", dtype=torch.float32)


def with_embeddings(pipe, embeddings: Embeddings | None) -> TextEncoders:
    clip = pipe.clip
    return TextEncoders(clip.specs, clip.models, clip.tokenizers, embeddings)


def encoders(pipe) -> list:
    return list(zip(pipe.spec.text_encoders, pipe.text_encoders, pipe.tokenizers, strict=True))


def tower(pipe, embeddings: Embeddings, index: int = 0):
    widths = [model.config.hidden_size for model in pipe.text_encoders]
    return embeddings.for_towers(widths, pipe.tokenizers)[index]


# Files


class Payload:
    """A pickle that would run a shell command when unpickled without restrictions."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a1111_pt_round_trips(tmp_path):
    expected = vectors(2, 768, 0)
    path = tmp_path / "MyStyle.pt"
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": expected.clone().requires_grad_()},
            "name": "ignored-name",
            "step": 3000,
            "sd_checkpoint": "abcdef",
            "sd_checkpoint_name": "v1-5",
        },
        path,
    )
    embedding = read_embedding_file(path)
    assert embedding.widths == (768,)
    assert torch.equal(embedding.vectors[0], expected)
    assert embedding.source == str(path)
    assert embedding.short_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert load_embeddings(path).names == ("MyStyle",)


def test_old_parameter_dict_file_loads_without_running_module_code(tmp_path):
    expected = vectors(4, 768, 1).half()
    path = tmp_path / "old.pt"
    params = nn.ParameterDict({"*": nn.Parameter(expected.clone())})
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": params}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    embedding = read_embedding_file(path)
    assert torch.equal(embedding.vectors[0], expected.float())


def test_kohya_diffusers_and_sdxl_layouts_round_trip(tmp_path):
    one, three, clip_l, clip_g = (
        vectors(1, 768, 2),
        vectors(3, 768, 3),
        vectors(2, 768, 4),
        vectors(2, 1280, 5),
    )
    safetensors.torch.save_file({"emb_params": three}, tmp_path / "kohya.safetensors")
    torch.save({"<cat-toy>": one[0].clone()}, tmp_path / "learned_embeds.bin")
    safetensors.torch.save_file({"<tok>": three}, tmp_path / "diffusers.safetensors")
    safetensors.torch.save_file({"clip_l": clip_l, "clip_g": clip_g}, tmp_path / "xl.safetensors")
    assert torch.equal(read_embedding_file(tmp_path / "kohya.safetensors").vectors[0], three)
    assert torch.equal(read_embedding_file(tmp_path / "learned_embeds.bin").vectors[0], one)
    assert torch.equal(read_embedding_file(tmp_path / "diffusers.safetensors").vectors[0], three)
    xl = read_embedding_file(tmp_path / "xl.safetensors")
    assert xl.widths == (768, 1280)
    assert [tensor is None for tensor in xl.for_towers([768, 1280])] == [False, False]
    assert torch.equal(xl.for_towers([768, 1280])[1], clip_g)
    assert xl.for_towers([1024]) == [None]
    assert [tensor.shape[1] for tensor in xl.for_towers([1280, 768])] == [1280, 768]
    loaded = load_embeddings(tmp_path)
    assert sorted(loaded.names) == ["diffusers", "kohya", "learned_embeds", "xl"]


def test_flattened_keys_as_bundled_in_lora_files():
    single, clip_l, clip_g = vectors(2, 768, 16), vectors(2, 768, 17), vectors(2, 1280, 18)
    bundled = embedding_vectors({"string_to_param.*": single}, "lora.safetensors/name")
    assert torch.equal(bundled.vectors[0], single) and bundled.short_hash is None
    xl = embedding_vectors({"string_to_param.clip_l": clip_l, "string_to_param.clip_g": clip_g}, "x")
    assert xl.widths == (768, 1280)


def test_write_embedding_file_round_trips(tmp_path):
    single = EmbeddingVectors.of(vectors(3, 768, 6))
    pair = EmbeddingVectors.of(vectors(2, 768, 7), vectors(2, 1280, 8))
    for name, embedding, keys in [("one", single, {"emb_params"}), ("two", pair, {"clip_l", "clip_g"})]:
        path = write_embedding_file(tmp_path / f"{name}.safetensors", embedding)
        assert set(safetensors.torch.load_file(path)) == keys
        back = read_embedding_file(path)
        assert all(torch.equal(a, b) for a, b in zip(back.vectors, embedding.vectors, strict=True))


@pytest.mark.parametrize("zipped", [True, False])
def test_code_in_a_pickle_is_refused_and_not_run(tmp_path, zipped):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    if zipped:
        # A ParameterDict too, so the restricted reader is the one that refuses.
        params = nn.ParameterDict({"*": nn.Parameter(torch.zeros(1, 768))})
        torch.save({"string_to_param": params, "extra": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"string_to_param": {"*": Payload(marker)}}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_embedding_file(path)
    assert not marker.exists()


def test_unknown_layouts_and_duplicate_names_are_user_errors(tmp_path):
    safetensors.torch.save_file(
        {"a": torch.zeros(1, 8), "b": torch.zeros(1, 8)}, tmp_path / "two.safetensors"
    )
    with pytest.raises(InvalidArgumentError, match="not a textual-inversion embedding"):
        read_embedding_file(tmp_path / "two.safetensors")
    with pytest.raises(InvalidArgumentError, match="PNG"):
        (tmp_path / "x.png").write_bytes(b"")
        read_embedding_file(tmp_path / "x.png")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    safetensors.torch.save_file({"emb_params": torch.zeros(1, 8)}, tmp_path / "a" / "same.safetensors")
    torch.save({"emb_params": torch.zeros(1, 8)}, tmp_path / "b" / "same.pt")
    with pytest.raises(InvalidArgumentError, match="two embeddings are named 'same'"):
        load_embeddings([tmp_path / "a", tmp_path / "b"])


def test_wrong_width_for_every_tower_names_the_file_and_widths(tmp_path, sd1, sdxl):
    path = tmp_path / "sd2style.safetensors"
    safetensors.torch.save_file({"emb_params": torch.zeros(2, 64)}, path)
    embeddings = load_embeddings(path)
    for pipe, widths in [(sd1, "32"), (sdxl, "32 and 48")]:
        with pytest.raises(InvalidArgumentError) as error:
            with_embeddings(pipe, embeddings)
        assert str(path) in str(error.value) and "64" in str(error.value) and widths in str(error.value)
    assert len(embeddings.fitting([32])) == 0 and len(embeddings.fitting([64])) == 1


# Triggering


def test_an_embedding_of_word_vectors_reproduces_the_words(sd1):
    """Vectors equal to the token embeddings of "red circle" encode exactly as the words do."""
    tokenizer, model = sd1.tokenizers[0], sd1.text_encoders[0]
    ids = torch.tensor(tokenizer.tokenize("red circle"))
    words = model.text_model.embeddings.token_embedding.weight[ids].detach()
    clip = with_embeddings(sd1, Embeddings.from_tensors({"lzpair": words}))
    encoded = clip.encode(["a lzpair on grass", "a (lzpair:1.3) on grass, embedding:lzpair"])
    expected = sd1.encode_prompt(["a red circle on grass", "a (red circle:1.3) on grass, red circle"])
    assert max_error(encoded.context, expected.context) < TOLERANCE
    assert encoded.embeddings_used == ("lzpair",)


def test_a_single_word_name_overrides_that_word(sd1):
    vector = vectors(1, SD1_WIDTH, 9)
    clip = with_embeddings(sd1, Embeddings.from_tensors({"cat": vector}))
    chunk = chunk_prompt("a cat", sd1.tokenizers[0], embeddings=tower(sd1, clip.embeddings))[0]
    assert len(chunk.tokens) == 2 and [offset for offset, _ in chunk.embeddings] == [1]
    assert max_error(clip.encode(["a cat"]).context, sd1.encode_prompt(["a cat"]).context) > 1e-3
    assert clip.encode(["a dog"]).embeddings_used == ()


def test_comfyui_references_and_weights(sd1):
    embeddings = Embeddings.from_tensors({"lztriple": vectors(3, SD1_WIDTH, 10)})
    clip = with_embeddings(sd1, embeddings)
    forms = ["a (lztriple:1.2), b", "a (embedding:lztriple:1.2), b", "a (embedding:sub/lztriple.pt:1.2), b"]
    contexts = [clip.encode([form]).context for form in forms]
    assert all(torch.equal(contexts[0], other) for other in contexts[1:])
    assert max_error(contexts[0], clip.encode(["a lztriple, b"]).context) > 1e-4
    chunk = chunk_prompt("a embedding:lztriple, b", sd1.tokenizers[0], embeddings=tower(sd1, embeddings))[0]
    assert len(chunk.tokens) == 6 and chunk.embeddings[0][0] == 1
    weighted = chunk_prompt(forms[1], sd1.tokenizers[0], embeddings=tower(sd1, embeddings))[0]
    assert weighted.weights[1:4] == [1.2, 1.2, 1.2] and weighted.weights[0] == 1.0
    with pytest.raises(InvalidArgumentError, match="embedding:nothere"):
        clip.encode(["embedding:nothere"])


def test_an_embedding_never_straddles_a_chunk(sd1):
    embeddings = Embeddings.from_tensors(
        {"lztriple": vectors(3, SD1_WIDTH, 11), "lzsolo": vectors(1, 32, 12)}
    )
    tokenizer, towers = sd1.tokenizers[0], tower(sd1, embeddings)
    moved = chunk_prompt(FILLER * 73 + "lztriple", tokenizer, embeddings=towers)
    assert [len(chunk.tokens) for chunk in moved] == [73, 3]
    assert [offset for offset, _ in moved[1].embeddings] == [0] and not moved[0].embeddings
    fits = chunk_prompt(FILLER * 72 + "lztriple", tokenizer, embeddings=towers)
    assert [len(chunk.tokens) for chunk in fits] == [75] and fits[0].embeddings[0][0] == 72
    last = chunk_prompt(FILLER * 74 + "lzsolo dog", tokenizer, embeddings=towers)
    assert [len(chunk.tokens) for chunk in last] == [75, 1] and last[0].embeddings[0][0] == 74
    # The comma backtrack moves the tokens after the last comma, embedding included.
    backtracked = chunk_prompt(FILLER * 70 + ", lzsolo " + FILLER * 5, tokenizer, embeddings=towers)
    assert [len(chunk.tokens) for chunk in backtracked] == [71, 6]
    assert [offset for offset, _ in backtracked[1].embeddings] == [0]
    encoded = with_embeddings(sd1, embeddings).encode([FILLER * 73 + "lztriple"])
    assert encoded.context.shape == (1, 154, SD1_WIDTH) and encoded.embeddings_used == ("lztriple",)


def test_no_embedding_path_is_unchanged(sd1, sdxl):
    prompts = ["a (red:1.3) circle, " + FILLER * 80, "embedding:thing cat"]
    for pipe in (sd1, sdxl):
        plain = encode_prompts(prompts, encoders(pipe))
        with torch.inference_mode():
            other = encode_prompts(prompts[:1], encoders(pipe), embeddings=Embeddings.from_tensors({}))
            untriggered = Embeddings.from_tensors({"lzsolo": [vectors(1, w, 13) for w in SDXL_WIDTHS]})
            unused = encode_prompts(prompts[:1], encoders(pipe), embeddings=untriggered.fitting(SDXL_WIDTHS))
        assert torch.equal(plain.context[:1], other.context) and torch.equal(
            plain.context[:1], unused.context
        )
        assert torch.equal(pipe.encode_prompt(prompts).context, plain.context)
        assert plain.embeddings_used == () and unused.embeddings_used == ()


def test_single_tower_embedding_on_sdxl_reaches_only_its_tower(sdxl):
    clip = with_embeddings(sdxl, Embeddings.from_tensors({"lzsolo": vectors(1, 32, 14)}))
    first, second = (tower(sdxl, clip.embeddings, index) for index in (0, 1))
    assert set(first.vectors) == {"lzsolo"} and not second.vectors
    word = chunk_prompt("a lzsolo", sdxl.tokenizers[1], embeddings=second)[0]
    assert word.tokens == sdxl.tokenizers[1].tokenize("a lzsolo") and not word.embeddings
    assert chunk_prompt("a embedding:lzsolo", sdxl.tokenizers[1], embeddings=second)[0].tokens == [
        sdxl.tokenizers[1].token_id("a</w>")
    ]
    encoded = clip.encode(["a lzsolo"])
    plain = sdxl.encode_prompt(["a lzsolo"])
    assert torch.equal(encoded.context[..., 32:], plain.context[..., 32:])
    assert max_error(encoded.context[..., :32], plain.context[..., :32]) > 1e-4


def test_gradients_reach_the_vectors(sd1):
    learned = vectors(2, SD1_WIDTH, 15).requires_grad_()
    embeddings = Embeddings({"lzlearn": EmbeddingVectors((learned,))})
    encoded = encode_prompts(["a lzlearn"], encoders(sd1), embeddings=embeddings)
    encoded.context.square().mean().backward()
    assert learned.grad is not None and learned.grad.abs().sum() > 0


def test_hashes_for_metadata(tmp_path):
    path = tmp_path / "lzsolo.safetensors"
    safetensors.torch.save_file({"emb_params": torch.ones(1, 8)}, path)
    embeddings = load_embeddings(path).merged(Embeddings.from_tensors({"other": torch.ones(1, 8)}))
    assert embeddings.hashes(["lzsolo", "other"]) == {
        "lzsolo": hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    }
    with pytest.raises(InvalidArgumentError, match="loaded twice"):
        embeddings.merged(Embeddings.from_tensors({"other": torch.ones(1, 8)}))


# Parity with diffusers' TextualInversionLoaderMixin


def test_sd1_matches_diffusers_textual_inversion(tmp_path, sd1):
    one, three = vectors(1, SD1_WIDTH, 20), vectors(3, SD1_WIDTH, 21)
    torch.save({"string_to_param": {"*": one}, "name": "lzsolo"}, tmp_path / "lzsolo.pt")
    safetensors.torch.save_file({"emb_params": three}, tmp_path / "lztriple.safetensors")
    clip = with_embeddings(sd1, load_embeddings(tmp_path))
    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_pipeline_folder("sd1"), safety_checker=None
    )
    reference.load_textual_inversion(str(tmp_path / "lzsolo.pt"), token="lzsolo")
    reference.load_textual_inversion(str(tmp_path / "lztriple.safetensors"), token="lztriple")
    prompts = ["a lzsolo next to lztriple on grass", "lztriple, a blue square", "no embedding here"]
    encoded = clip.encode(prompts)
    with torch.no_grad():
        expected = reference.encode_prompt(prompts, "cpu", 1, False)[0]
    assert encoded.context.shape == expected.shape
    assert max_error(encoded.context, expected) < TOLERANCE
    assert encoded.embeddings_used == ("lzsolo", "lztriple")


def test_sdxl_matches_diffusers_through_both_encoders(tmp_path, sdxl):
    clip_l, clip_g = vectors(3, SDXL_WIDTHS[0], 22), vectors(3, SDXL_WIDTHS[1], 23)
    safetensors.torch.save_file({"clip_l": clip_l, "clip_g": clip_g}, tmp_path / "lzxl.safetensors")
    clip = with_embeddings(sdxl, load_embeddings(tmp_path / "lzxl.safetensors"))
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_folder("sdxl"))
    reference.load_textual_inversion(
        clip_l, token="lzxl", text_encoder=reference.text_encoder, tokenizer=reference.tokenizer
    )
    reference.load_textual_inversion(
        clip_g, token="lzxl", text_encoder=reference.text_encoder_2, tokenizer=reference.tokenizer_2
    )
    prompts = ["a photo of lzxl on grass", "a small green square"]
    encoded = clip.encode(prompts)
    with torch.no_grad():
        context, _, pooled, _ = reference.encode_prompt(
            prompts, device="cpu", do_classifier_free_guidance=False
        )
        # transformers pools at argmax(ids) for these configs, which lands on diffusers' added token (an id
        # past the vocabulary) instead of the end token; pool at the end token, as A1111 and lienzo do.
        tokenizer, encoder = reference.tokenizer_2, reference.text_encoder_2
        ids = tokenizer(
            reference.maybe_convert_prompt(prompts, tokenizer),
            padding="max_length",
            max_length=77,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        last = encoder(ids).last_hidden_state
        end = (ids == tokenizer.eos_token_id).int().argmax(dim=-1)
        expected_pooled = encoder.text_projection(last[torch.arange(len(prompts)), end])
    assert max_error(encoded.context, context) < TOLERANCE
    assert max_error(encoded.pooled, expected_pooled) < TOLERANCE
    assert max_error(encoded.pooled[1], pooled[1]) < TOLERANCE
    assert encoded.embeddings_used == ("lzxl",)
