"""A1111 prompt syntax: `(text)`, `[text]`, `(text:1.5)`, escaped brackets and `BREAK`, as weighted text."""

from __future__ import annotations

import re

from lienzo.errors import InvalidArgumentError

ROUND_BRACKET_WEIGHT = 1.1
SQUARE_BRACKET_WEIGHT = 1 / 1.1
BREAK_MARKER: tuple[str, float] = ("BREAK", -1.0)

SYNTAX_PATTERN = re.compile(
    r"""
    (?P<escaped>\\[()\[\]\\])
    | (?P<backslash>\\)
    | (?P<open_round>\()
    | (?P<open_square>\[)
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close_round>\))
    | (?P<close_square>\])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)
BREAK_PATTERN = re.compile(r"\s*\bBREAK\b\s*")


def is_break(fragment: tuple[str, float]) -> bool:
    """Whether a parsed fragment is the `BREAK` marker that starts a new 75-token chunk."""
    return fragment == BREAK_MARKER


def explicit_weight(literal: str) -> float:
    """The number written in `(text:NUMBER)`; a malformed one is a user error."""
    try:
        return float(literal)
    except ValueError:
        raise InvalidArgumentError(
            f"prompt weight {literal!r} is not a number; write it like (word:1.2)"
        ) from None


def merge_equal_weights(fragments: list[list]) -> list[tuple[str, float]]:
    """Join neighbouring fragments of equal weight; `BREAK` markers stay on their own."""
    merged: list[list] = []
    for text, weight in fragments:
        marker = is_break((text, weight))
        if merged and not marker and not is_break(tuple(merged[-1])) and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged] or [("", 1.0)]


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """Split an A1111-syntax prompt into (text, weight) fragments, `BREAK` as `BREAK_MARKER`.

    `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:w)` multiplies by w, and nesting multiplies. `\\(`,
    `\\)`, `\\[`, `\\]` and `\\\\` are literal characters. As in A1111: a bracket left open applies its
    weight to the rest of the prompt, a closing bracket with nothing to close is literal text, and a lone
    backslash is dropped. Unlike A1111, `BREAK` inside brackets still breaks.
    """
    fragments: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            if not is_break(tuple(fragment)):
                fragment[1] *= factor

    for match in SYNTAX_PATTERN.finditer(text):
        kind, literal = match.lastgroup, match.group(0)
        if kind == "escaped":
            fragments.append([literal[1], 1.0])
        elif kind == "open_round":
            open_round.append(len(fragments))
        elif kind == "open_square":
            open_square.append(len(fragments))
        elif kind == "weight" and open_round:
            multiply_from(open_round.pop(), explicit_weight(match.group("weight")))
        elif kind == "close_round" and open_round:
            multiply_from(open_round.pop(), ROUND_BRACKET_WEIGHT)
        elif kind == "close_square" and open_square:
            multiply_from(open_square.pop(), SQUARE_BRACKET_WEIGHT)
        elif kind != "backslash":
            for index, part in enumerate(BREAK_PATTERN.split(literal)):
                if index > 0:
                    fragments.append(list(BREAK_MARKER))
                if part:
                    fragments.append([part, 1.0])
    for start in open_round:
        multiply_from(start, ROUND_BRACKET_WEIGHT)
    for start in open_square:
        multiply_from(start, SQUARE_BRACKET_WEIGHT)
    return merge_equal_weights(fragments)
