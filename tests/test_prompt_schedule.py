"""A1111 prompt editing and alternation: schedules of texts (pure text), and sampling that reads them.

The rules under test (A1111's `get_learned_conditioning_prompt_schedules` and its denoiser's step count):
a `when` with a decimal point is the fraction step int(when * steps), one without is a step number, both
capped at `steps`; the schedule is [(until_step, text)] over the sorted boundaries; sampling step i,
counted from 0 in each run, reads the first entry whose until_step >= i.
"""

from __future__ import annotations

import functools

import pytest
import torch

import lienzo
from lienzo.models.unet import UNetModel
from lienzo.pipelines.options import HiresOptions, RefinerOptions, resolve_options
from lienzo.pipelines.sampling import ImageConditions, Stage, sample_latents
from lienzo.pipelines.steps import (
    PromptTexts,
    decode_latents,
    encode_texts,
    initial_noise,
    latent_shape,
    run_sampler,
    schedule_sigmas,
    step_at,
)
from lienzo.text.prompt_schedule import (
    merge_schedule,
    parse_edits,
    prompt_schedule,
    schedule_index,
    text_at,
)
from lienzo.text.prompt_syntax import parse_prompt
from tiny_models import tiny_pipeline_folder

RUN = {"width": 32, "height": 32, "seed": 1, "progress": False}


def texts_read(prompt: str, steps: int) -> list[str]:
    """The text each sampling step 0..steps-1 reads."""
    schedule = prompt_schedule(prompt, steps)
    return [text_at(schedule, step) for step in range(steps)]


# --- parsing into schedules -------------------------------------------------------------------------


def test_a_fraction_names_step_int_when_times_steps_and_the_from_text_runs_through_it():
    # A1111's documented example: dog until step int(0.5 * 10) = 5, cat after it.
    assert prompt_schedule("a [dog:cat:0.5]", 10) == [(5, "a dog"), (10, "a cat")]
    # The sampler counts steps from 0 and reads the first entry with until_step >= step: steps 0..5.
    assert texts_read("a [dog:cat:0.5]", 10) == ["a dog"] * 6 + ["a cat"] * 4
    # int() truncates: 0.29 * 100 is 28.999..., so step 28.
    assert prompt_schedule("[a:b:0.29]", 100)[0] == (28, "a")


def test_a1111_wiki_example_at_100_steps():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_to_only_and_from_only_forms():
    assert prompt_schedule("a [b:3]", 10) == [(3, "a "), (10, "a b")]
    assert prompt_schedule("a [b::3]", 10) == [(3, "a b"), (10, "a ")]
    assert prompt_schedule("a [b: 3]", 10) == [(3, "a "), (10, "a b")]
    assert prompt_schedule("a [b : c : 1] d", 10) == [(1, "a b  d"), (10, "a  c  d")]


def test_step_numbers_and_their_limits():
    assert prompt_schedule("[a:b:3]", 10) == [(3, "a"), (10, "b")]
    assert prompt_schedule("[a:b:12]", 10) == [(10, "a")]  # capped: never switches
    assert prompt_schedule("[a:b:1.5]", 10) == [(10, "a")]  # a decimal point makes a fraction: 15 -> 10
    assert prompt_schedule("[a:b:0]", 10) == [(10, "b")]  # below 1: `to` from the start
    assert prompt_schedule("[a:b:-2]", 10) == [(10, "b")]
    assert prompt_schedule("[a:b:1e1]", 20) == [(10, "a"), (20, "b")]  # no decimal point: step 10


def test_nested_edits():
    assert prompt_schedule("[a:[b:c:0.6]:0.3]", 10) == [(3, "a"), (6, "b"), (10, "c")]
    assert prompt_schedule("a[b:[c:d:2]:1]e", 10) == [(1, "abe"), (2, "ace"), (10, "ade")]


def test_alternation_cycles_every_step():
    schedule = prompt_schedule("[cow|horse] in a field", 4)
    assert schedule == [
        (1, "cow in a field"),
        (2, "horse in a field"),
        (3, "cow in a field"),
        (4, "horse in a field"),
    ]
    # Counted from 0, A1111's first two steps both read step 1's entry, then it switches every step.
    assert texts_read("[a|b|c]", 7) == ["a", "a", "b", "c", "a", "b", "c"]
    assert [text for _, text in prompt_schedule("[fe|]male", 4)] == ["female", "male"] * 2
    assert [text for _, text in prompt_schedule("[a|[b:c:2]|d]", 6)] == ["a", "b", "d", "a", "c", "d"]


def test_escaped_brackets_stay_literal():
    assert prompt_schedule(r"a \[dog:cat:0.5\] b", 10) == [(10, r"a \[dog:cat:0.5\] b")]
    assert parse_prompt(r"a \[dog:cat:0.5\] b") == [("a [dog:cat:0.5] b", 1.0)]
    assert prompt_schedule(r"[dog\:cat:0.5]", 10) == [(5, ""), (10, r"dog\:cat")]


def test_weights_and_break_compose_with_edits():
    assert prompt_schedule("[(cat:1.2):dog:0.5]", 10) == [(5, "(cat:1.2)"), (10, "dog")]
    assert prompt_schedule("a ([cat:dog:0.5]:1.3)", 10) == [(5, "a (cat:1.3)"), (10, "a (dog:1.3)")]
    assert parse_prompt(prompt_schedule("a ([cat:dog:0.5]:1.3)", 10)[1][1]) == [("a ", 1.0), ("dog", 1.3)]
    assert prompt_schedule("[a BREAK b:c:0.5]", 4) == [(2, "a BREAK b"), (4, "c")]
    assert prompt_schedule("[(cat:1.2):[dog|fox]:0.5]", 4) == [
        (1, "(cat:1.2)"),
        (2, "(cat:1.2)"),
        (3, "dog"),
        (4, "fox"),
    ]


def test_prompts_outside_the_grammar_are_one_text():
    for prompt in ("a [b:c:0.5] | d", "a [unbalanced", "[a|b", "trailing \\", "(a|b) [c:d:1]", "[a:b:c:0.5]"):
        assert prompt_schedule(prompt, 10) == [(10, prompt)]
    assert parse_edits("a [b:c:0.5] | d") is None
    # Stray brackets and colons outside any construct are kept as text.
    assert prompt_schedule("style: a (cat [red:blue:0.5]", 10) == [
        (5, "style: a (cat red"),
        (10, "style: a (cat blue"),
    ]
    assert prompt_schedule("no edits (here:1.2) [or] here", 10) == [(10, "no edits (here:1.2) [or] here")]


def test_the_hires_timeline_continues_the_first_pass():
    # A step number n is step n - steps of the hires pass, a fraction f is (f - 1) * hires_steps.
    assert prompt_schedule("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:.5] c", 10, 10) == [(10, "a b c")]  # done in the first pass
    assert prompt_schedule("a [b:15] c", 10, 10) == [(5, "a  c"), (10, "a b c")]


def test_merge_joins_neighbours_of_the_same_text_and_keeps_every_step_s_text():
    schedule = prompt_schedule("[a|a] [b:c:3]", 6)
    merged = merge_schedule(schedule)
    assert merged == [(3, "a b"), (6, "a c")]
    assert [text_at(merged, step) for step in range(6)] == [text_at(schedule, step) for step in range(6)]
    assert (
        schedule_index([3, 6], 0) == 0 and schedule_index([3, 6], 3) == 0 and schedule_index([3, 6], 4) == 1
    )
    assert schedule_index([3, 6], 9) == 1


def test_step_at_maps_a_sigma_to_the_step_whose_interval_holds_it():
    sigmas = [10.0, 5.0, 2.0, 1.0, 0.0]
    assert [step_at(sigmas, sigma) for sigma in (12.0, 10.0, 7.0, 5.0, 5.0000001, 3.0, 2.0, 1.0, 0.5)] == [
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        3,
        3,
    ]


# --- sampling reads the schedule ---------------------------------------------------------------------


@functools.cache
def tiny(family: str = "sd1") -> lienzo.Pipeline:
    return lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)


def contexts_seen(unet, run) -> list[torch.Tensor]:
    """The cross-attention context of every UNet call `run()` makes (rows: cond then uncond)."""
    seen = []
    hook = unet.register_forward_pre_hook(lambda module, args: seen.append(args[2].context.clone()))
    try:
        run()
    finally:
        hook.remove()
    return seen


def encoded(pipe, text: str, negative: str = "") -> torch.Tensor:
    return pipe.clip.encode([text, negative]).context.float()


def which(context: torch.Tensor, candidates: dict[str, torch.Tensor]) -> str:
    """The name of the candidate (1, L, C) encoding `context` (1, L, C) matches."""
    found = [name for name, value in candidates.items() if torch.allclose(context, value, atol=1e-5)]
    assert len(found) == 1, found
    return found[0]


def test_an_edit_at_step_2_of_4_reads_from_for_steps_0_to_2_then_to():
    pipe = tiny()
    prompt, options_values = "[a red circle:a blue square:2]", {"steps": 4, "sampler": "euler", **RUN}
    seen = contexts_seen(pipe.unet, lambda: pipe.generate(prompt, **options_values))
    cat, dog = encoded(pipe, "a red circle")[:1], encoded(pipe, "a blue square")[:1]
    names = [which(context[:1], {"from": cat, "to": dog}) for context in seen]
    assert names == ["from", "from", "from", "to"]

    # The image is that of sampling steps 0..2 with the first text and step 3 with the second.
    options = resolve_options(pipe.spec, prompt=prompt, steps=4, sampler="euler", width=32, height=32, seed=1)
    texts = encode_texts(pipe.clip, options)
    (_, first), (_, second) = texts.schedule(steps=4)
    sigmas = schedule_sigmas(pipe.spec, options)
    noise = initial_noise(options, latent_shape(pipe.spec, 32, 32))
    x = noise * sigmas[0]
    none = ImageConditions()
    x = run_sampler(Stage(pipe.unet, pipe.spec, first).denoiser(options, none, noise), x, sigmas[:4], options)
    x = run_sampler(
        Stage(pipe.unet, pipe.spec, second).denoiser(options, none, noise), x, sigmas[3:], options
    )
    manual = decode_latents(pipe.vae, x)[0]
    assert pipe.generate(prompt, **options_values)[0].tobytes() == manual.tobytes()


def test_a_prompt_without_edits_samples_exactly_as_before():
    pipe = tiny()
    options = resolve_options(
        pipe.spec, prompt="a red circle", negative_prompt="blurry", steps=4, width=32, height=32, seed=1
    )
    texts = encode_texts(pipe.clip, options)
    assert texts.scheduled is None
    encoding = pipe.clip.encode(["a red circle", "blurry"])
    assert torch.equal(texts.positive, encoding.context[:1].float())
    plain = PromptTexts(encoding.context[:1].float(), encoding.context[1:].float(), None, None)
    latents = sample_latents([Stage(pipe.unet, pipe.spec, plain)], options, progress=False)
    before = decode_latents(pipe.vae, latents)[0]
    now = pipe.generate("a red circle", negative_prompt="blurry", steps=4, **RUN)[0]
    assert now.tobytes() == before.tobytes()


def test_alternation_switches_texts_every_step_after_the_first_two():
    pipe = tiny()
    run = functools.partial(pipe.generate, "[a red circle|a blue square]", steps=5, sampler="euler", **RUN)
    seen = contexts_seen(pipe.unet, run)
    candidates = {"a": encoded(pipe, "a red circle")[:1], "b": encoded(pipe, "a blue square")[:1]}
    assert [which(context[:1], candidates) for context in seen] == ["a", "a", "b", "a", "b"]


def test_a_second_order_sampler_reads_the_text_of_the_step_its_sigma_lies_in():
    pipe = tiny()
    run = functools.partial(pipe.generate, "[a red circle:a blue square:2]", steps=4, sampler="heun", **RUN)
    seen = contexts_seen(pipe.unet, run)
    candidates = {"a": encoded(pipe, "a red circle")[:1], "b": encoded(pipe, "a blue square")[:1]}
    # Heun evaluates at sigmas[i] and sigmas[i + 1] (the last step at sigmas[3] only),
    # which lie in steps 0,1 | 1,2 | 2,3 | 3.
    assert [which(context[:1], candidates) for context in seen] == ["a", "a", "a", "a", "a", "b", "b"]


def test_variants_of_different_lengths_get_one_token_count():
    pipe = tiny()
    long = ", ".join(["a very long description of many red circles"] * 12)
    tokens = pipe.clip.encode([long]).context.shape[1]
    assert tokens == 2 * 77 and pipe.clip.encode(["a cat"]).context.shape[1] == 77
    options = resolve_options(pipe.spec, prompt=f"[a cat:{long}:0.5]", steps=4, width=32, height=32, seed=1)
    texts = encode_texts(pipe.clip, options)
    assert texts.scheduled.context.shape[:2] == (3, tokens)  # "a cat", the long text, the negative prompt
    assert texts.positive.shape == texts.negative.shape == (1, tokens, 32)
    seen = contexts_seen(pipe.unet, lambda: pipe.generate(options.prompt, steps=4, **RUN))
    assert {tuple(context.shape) for context in seen} == {(2, tokens, 32)}


def test_the_negative_prompt_is_scheduled_too_and_cfg_stays_one_batch():
    pipe = tiny()
    run = functools.partial(
        pipe.generate, "x", negative_prompt="[blurry:dark:1]", steps=3, sampler="euler", **RUN
    )
    seen = contexts_seen(pipe.unet, run)
    candidates = {"blurry": encoded(pipe, "blurry")[:1], "dark": encoded(pipe, "dark")[:1]}
    assert [context.shape[0] for context in seen] == [2, 2, 2]
    assert [which(context[1:], candidates) for context in seen] == ["blurry", "blurry", "dark"]


def test_img2img_counts_the_steps_it_runs_from_0_on_the_full_timeline():
    pipe = tiny()
    image = pipe.generate("x", steps=2, **RUN)[0]
    prompt = "[a red circle:a blue square:2]"
    run = functools.partial(pipe.img2img, image, prompt, strength=0.5, steps=8, sampler="euler", **RUN)
    seen = contexts_seen(pipe.unet, run)
    candidates = {"a": encoded(pipe, "a red circle")[:1], "b": encoded(pipe, "a blue square")[:1]}
    assert [which(context[:1], candidates) for context in seen] == ["a", "a", "a", "b"]


def test_the_hires_pass_runs_on_a1111_s_hires_timeline():
    pipe = tiny()
    hires = HiresOptions(scale=1.5, steps=8, strength=0.5)  # the hires pass runs 4 steps
    candidates = {"a": encoded(pipe, "a red circle")[:1], "b": encoded(pipe, "a blue square")[:1]}

    def names(prompt):
        run = functools.partial(pipe.generate, prompt, steps=4, sampler="euler", hires=hires, **RUN)
        return [which(context[:1], candidates) for context in contexts_seen(pipe.unet, run)]

    # 1.5: the whole first pass, then half of the hires pass (step (1.5 - 1) * 4 = 2).
    assert names("[a red circle:a blue square:1.5]") == ["a"] * 4 + ["a", "a", "a", "b"]
    # 0.5: switched in the first pass, the hires pass reads `to` throughout.
    assert names("[a red circle:a blue square:0.5]") == ["a", "a", "a", "b"] + ["b"] * 4


def test_the_refiner_continues_the_base_step_count(monkeypatch):
    base, folder = tiny("sdxl"), tiny_pipeline_folder("sdxl-refiner")
    refiner = lienzo.load(folder, device="cpu", dtype=torch.float32)
    candidates = {"a": encoded(refiner, "a red circle")[:1], "b": encoded(refiner, "a blue square")[:1]}
    seen = []
    forward = UNetModel.forward

    def recording(self, x, t, cond):
        seen.append(cond.context.clone())
        return forward(self, x, t, cond)

    monkeypatch.setattr(UNetModel, "forward", recording)
    base.generate(
        "[a red circle:a blue square:2]",
        steps=4,
        sampler="euler",
        refiner=RefinerOptions(folder, switch_at=0.5),
        **RUN,
    )
    width = candidates["a"].shape[-1]
    assert [context.shape[-1] == width for context in seen] == [False, False, True, True]
    assert [which(context[:1], candidates) for context in seen[2:]] == ["a", "b"]


def test_sampling_other_steps_than_encoded_is_refused():
    pipe = tiny()
    options = resolve_options(pipe.spec, prompt="[a:b:2]", steps=4, width=32, height=32, seed=1)
    with pytest.raises(ValueError, match="scheduled for 4 steps"):
        encode_texts(pipe.clip, options).schedule(steps=5)
