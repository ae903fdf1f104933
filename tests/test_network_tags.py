"""A1111 extra-network tags: taken out of the prompt, with A1111's multiplier rules."""

from __future__ import annotations

import pytest

from lienzo.errors import InvalidArgumentError
from lienzo.text.network_tags import LoraTag, extract_lora_tags


@pytest.mark.parametrize(
    ("prompt", "tag"),
    [
        ("<lora:ink>", LoraTag("ink", 1.0, 1.0)),
        ("<lora:ink:0.8>", LoraTag("ink", 0.8, 0.8)),
        ("<lora:ink:0.8:0.3>", LoraTag("ink", 0.8, 0.3)),
        ("<lora:ink:te=0.2>", LoraTag("ink", 0.2, 0.2)),
        ("<lora:ink:unet=0.5>", LoraTag("ink", 1.0, 0.5)),
        ("<lora:ink:te=0.2:unet=0.7>", LoraTag("ink", 0.2, 0.7)),
        ("<lora:ink:1:0.5:dyn=16>", LoraTag("ink", 1.0, 0.5)),
        ("<LYCO:sub/ink:-1>", LoraTag("sub/ink", -1.0, -1.0)),
    ],
)
def test_multipliers_follow_a1111(prompt, tag):
    assert extract_lora_tags(prompt) == ("", [tag])


def test_tags_leave_the_prompt_and_keep_their_order():
    text, tags = extract_lora_tags("a cat <lora:ink:0.5>, on a mat <lyco:paper> (bright:1.2)")
    assert text == "a cat , on a mat  (bright:1.2)"
    assert [tag.name for tag in tags] == ["ink", "paper"]
    assert extract_lora_tags("no tags (here:1.1) [or] there") == ("no tags (here:1.1) [or] there", [])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora:ink:strong>", "not a number"),
        ("<lora::1>", "no name"),
        ("<lora:ink:gain=2>", "unknown gain"),
        ("<frobnicate:ink>", "unknown extra network"),
    ],
)
def test_bad_tags_name_the_fix(prompt, message):
    with pytest.raises(InvalidArgumentError, match=message):
        extract_lora_tags(prompt)
