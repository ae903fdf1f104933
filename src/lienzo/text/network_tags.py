"""A1111's extra-network tags in prompts: `<lora:name:w>`, `<lora:name:te:unet>`, `te=`/`unet=`, `<lyco:…>`,
`<hypernet:name:m>`.

Tags are taken out of the text the encoders see (A1111 `extra_networks.parse_prompt`: the pattern
`<word:args>`, arguments split on ":"). A LoRA's text-encoder multiplier defaults to 1 and its UNet
multiplier to the text-encoder one, as in A1111's `extra_networks_lora`; `lyco` is the same handler. A
hypernetwork's multiplier defaults to 1 (A1111's `extra_networks_hypernet`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lienzo.errors import InvalidArgumentError

TAG_PATTERN = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
KNOWN_KINDS = (*LORA_KINDS, "hypernet")


@dataclass(frozen=True)
class HypernetTag:
    """One `<hypernet:name:m>` tag: the file name and the multiplier."""

    name: str
    strength: float = 1.0


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:…>` tag: the file name and the text-encoder and UNet multipliers."""

    name: str
    text_strength: float = 1.0
    unet_strength: float = 1.0


def _number(text: str, tag: str, example: str = "<lora:name:0.8> or <lora:name:te=1:unet=0.5>") -> float:
    try:
        return float(text)
    except ValueError as error:
        raise InvalidArgumentError(f"{tag}: {text!r} is not a number; write {example}") from error


def _lora_tag(arguments: list[str], tag: str) -> LoraTag:
    """A LoraTag from a tag's arguments: name, then positional te, unet (dyn ignored), or te=/unet=."""
    name, *rest = (argument.strip() for argument in arguments)
    positional = [value for value in rest if "=" not in value]
    named = dict(value.split("=", 1) for value in rest if "=" in value)
    unknown = sorted(set(named) - {"te", "unet", "dyn"})
    if not name or unknown:
        raise InvalidArgumentError(
            f"{tag}: write <lora:NAME>, <lora:NAME:WEIGHT>, <lora:NAME:TE:UNET> or te=/unet= "
            f"({'no name' if not name else 'unknown ' + ', '.join(unknown)})"
        )
    text = _number(named.get("te", positional[0] if positional else "1"), tag)
    unet_text = named.get("unet", positional[1] if len(positional) > 1 else None)
    return LoraTag(name, text, text if unet_text is None else _number(unet_text, tag))


def _hypernet_tag(arguments: list[str], tag: str) -> HypernetTag:
    """A HypernetTag from a tag's arguments: name, then the multiplier (default 1)."""
    name, *rest = (argument.strip() for argument in arguments)
    if not name or len(rest) > 1 or any("=" in value for value in rest):
        raise InvalidArgumentError(f"{tag}: write <hypernet:NAME> or <hypernet:NAME:MULTIPLIER>")
    return HypernetTag(name, _number(rest[0], tag, "<hypernet:name:0.5>") if rest else 1.0)


def extract_network_tags(prompt: str) -> tuple[str, list[LoraTag], list[HypernetTag]]:
    """(the prompt without its tags, the LoRA tags in order, the hypernetwork tags in order); unknown tag
    kinds are an error."""
    loras: list[LoraTag] = []
    hypernets: list[HypernetTag] = []

    def take(match: re.Match) -> str:
        kind, tag = match.group(1).lower(), match.group(0)
        if kind not in KNOWN_KINDS:
            raise InvalidArgumentError(
                f"unknown extra network {tag}; lienzo knows <lora:…>, <lyco:…> and <hypernet:…>"
            )
        if kind in LORA_KINDS:
            loras.append(_lora_tag(match.group(2).split(":"), tag))
        else:
            hypernets.append(_hypernet_tag(match.group(2).split(":"), tag))
        return ""

    return TAG_PATTERN.sub(take, prompt), loras, hypernets


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """(the prompt without its tags, hypernetwork tags included; the LoRA tags in order)."""
    text, loras, _ = extract_network_tags(prompt)
    return text, loras


def extract_hypernet_tags(prompt: str) -> tuple[str, list[HypernetTag]]:
    """(the prompt without its tags, LoRA tags included; the hypernetwork tags in order)."""
    text, _, hypernets = extract_network_tags(prompt)
    return text, hypernets
