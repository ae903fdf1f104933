"""A1111 prompt editing and alternation: a prompt whose text changes during sampling, as a schedule of texts.

`[from:to:when]` reads `from` until step `when`, then `to`; `[to:when]` reads nothing, then `to`;
`[from::when]` reads `from`, then nothing; `[a|b|c]` cycles a, b, c, a, ... step by step. They nest
(`[a:[b:c:0.6]:0.3]`) and hold any other syntax (`(word:1.2)`, `BREAK`, escapes), which stays in the
texts for `parse_prompt`. The rules are A1111's (its `get_learned_conditioning_prompt_schedules` with
the default "new" timelines), restated here:

- `when` with a decimal point is a fraction of the steps: step `int(when * steps)`; without one it is a
  step number. Either is capped at `steps`; a result below 1 adds no boundary (the edit then reads
  `to` at every step, as A1111's `step <= when` is false for all steps from 1).
- The schedule is a list of (until_step, text): the steps `steps`, every edit's step, and with an
  alternation every step 1..steps, sorted and without repeats, each with the text at that step. At step
  t an edit reads `from` while t <= when, and an alternation of k options reads option (t - 1) % k.
- Sampling step i (counted from 0 in each run, as A1111's denoiser counts its calls) uses the first
  entry whose until_step >= i. So `[from:to:when]` reads `from` on steps 0..when, and an alternation
  reads its first option on steps 0 and 1, then switches every step.
- The hires pass has a timeline of its own (`hires_steps`): a step number n means step n - steps of
  that pass, a fraction f means (f - 1) * hires_steps, so `[a:b:1.5]` switches half-way through it.
- A prompt the grammar does not take (a `|` outside an alternation, a backslash at the very end or before
  a line break) is one text for all steps; a bracket that opens no edit is kept as text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

NUMBER_CLOSE = re.compile(r"\s*([+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)\s*\]")
"""The end of an edit: optional spaces, a number (sign, decimal point and exponent allowed), spaces, `]`."""
STRAY = "[]():"
"""Characters that may stand alone outside any bracket."""


class NotSchedulable(Exception):
    """The prompt does not fit the edit grammar; it is then one text for all steps."""


@dataclass(frozen=True)
class Edit:
    """`[before:after:when]`; `before` is None in the `[after:when]` form; `when` as written."""

    before: tuple | None
    after: tuple
    when: str


@dataclass(frozen=True)
class Alternation:
    """`[a|b|...]`: one tuple of parts per option."""

    options: tuple[tuple, ...]


Part = str | Edit | Alternation


def _plain_end(text: str, pos: int) -> int:
    """End of the plain text (escapes included) starting at pos; a backslash that escapes nothing fails."""
    end = pos
    while end < len(text) and text[end] not in "[]():|":
        if text[end] == "\\":
            if end + 1 >= len(text) or text[end + 1] == "\n":
                raise NotSchedulable
            end += 2
        else:
            end += 1
    return end


def _inner(text: str, pos: int) -> tuple[list[Part], int]:
    """Parts of a bracketed prompt from pos up to the first `]`, `)`, `:` or `|` it does not contain."""
    parts: list[Part] = []
    while pos < len(text):
        char = text[pos]
        if char in "[(":
            found = _bracket(text, pos)
            if found is None:
                break
            parts.extend(found[0])
            pos = found[1]
        elif char in "]):|":
            break
        else:
            end = _plain_end(text, pos)
            parts.append(text[pos:end])
            pos = end
    return parts, pos


def _bracket(text: str, pos: int) -> tuple[list[Part], int] | None:
    """The construct opening at text[pos] (`(…)`, `(…:…)`, `[…]`, an edit or an alternation) as parts and
    the position after it, or None where none closes."""
    opening = text[pos]
    first, pos = _inner(text, pos + 1)
    if pos >= len(text):
        return None
    char = text[pos]
    if opening == "(":
        if char == ")":
            return ["(", *first, ")"], pos + 1
        if char != ":":
            return None
        second, pos = _inner(text, pos + 1)
        if pos < len(text) and text[pos] == ")":
            return ["(", *first, ":", *second, ")"], pos + 1
        return None
    if char == "]":
        return ["[", *first, "]"], pos + 1
    if char == "|":
        options = [tuple(first)]
        while pos < len(text) and text[pos] == "|":
            option, pos = _inner(text, pos + 1)
            options.append(tuple(option))
        if pos < len(text) and text[pos] == "]":
            return [Alternation(tuple(options))], pos + 1
        return None
    if char != ":":
        return None
    close = NUMBER_CLOSE.match(text, pos + 1)
    if close:
        return [Edit(None, tuple(first), close.group(1))], close.end()
    second, pos = _inner(text, pos + 1)
    if pos < len(text) and text[pos] == ":":
        close = NUMBER_CLOSE.match(text, pos + 1)
        if close:
            return [Edit(tuple(first), tuple(second), close.group(1))], close.end()
    return None


def parse_edits(prompt: str) -> tuple[Part, ...] | None:
    """The prompt as text parts, edits and alternations; None where it does not fit the grammar."""
    parts: list[Part] = []
    pos = 0
    try:
        while pos < len(prompt):
            char = prompt[pos]
            found = _bracket(prompt, pos) if char in "[(" else None
            if found is not None:
                parts.extend(found[0])
                pos = found[1]
            elif char in STRAY:
                parts.append(char)
                pos += 1
            elif char == "|":
                return None
            else:
                end = _plain_end(prompt, pos)
                parts.append(prompt[pos:end])
                pos = end
    except NotSchedulable:
        return None
    return tuple(parts)


def _walk(parts: Sequence[Part]):
    """Every edit and alternation in parts, nested ones included."""
    for part in parts:
        if isinstance(part, Edit):
            yield part
            yield from _walk(part.before or ())
            yield from _walk(part.after)
        elif isinstance(part, Alternation):
            yield part
            for option in part.options:
                yield from _walk(option)


def _render(parts: Sequence[Part], step: int, whens: dict[int, int]) -> str:
    """The text of parts at A1111 step `step` (edits' steps in `whens`, keyed by id)."""
    pieces = []
    for part in parts:
        if isinstance(part, Edit):
            chosen = (part.before or ()) if step <= whens[id(part)] else part.after
            pieces.append(_render(chosen, step, whens))
        elif isinstance(part, Alternation):
            pieces.append(_render(part.options[(step - 1) % len(part.options)], step, whens))
        else:
            pieces.append(part)
    return "".join(pieces)


def edit_step(when: str, steps: int, hires_steps: int | None = None) -> int:
    """The step an edit's `when` names on a timeline of `steps` (or of the hires pass), capped at the
    timeline's length: a decimal point makes a fraction, otherwise a step number."""
    value = float(when)
    length = steps if hires_steps is None else hires_steps
    step_offset, fraction_offset = (0, 0.0) if hires_steps is None else (steps, 1.0)
    value = (value - fraction_offset) * length if "." in when else value - step_offset
    return int(min(max(value, -1.0), length))


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's prompt schedule: [(until_step, text), ...] for a run of `steps` (or, with `hires_steps`,
    for the hires pass after a first pass of `steps`); see the module's rules.

    >>> prompt_schedule("a [dog:cat:0.5]", 10)
    [(5, 'a dog'), (10, 'a cat')]
    """
    length = steps if hires_steps is None else hires_steps
    parts = parse_edits(prompt)
    if parts is None:
        return [(length, prompt)]
    boundaries = {length}
    whens: dict[int, int] = {}
    for node in _walk(parts):
        if isinstance(node, Edit):
            whens[id(node)] = edit_step(node.when, steps, hires_steps)
            if whens[id(node)] >= 1:
                boundaries.add(whens[id(node)])
        else:
            boundaries.update(range(1, length + 1))
    return [(step, _render(parts, step, whens)) for step in sorted(boundaries)]


def merge_schedule(schedule: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """The schedule with neighbouring entries of the same text joined (the later until_step kept); the
    lookup of `schedule_index` gives every step the same text as before."""
    merged: list[tuple[int, str]] = []
    for until, text in schedule:
        if merged and merged[-1][1] == text:
            merged[-1] = (until, text)
        else:
            merged.append((until, text))
    return merged


def schedule_index(until_steps: Sequence[int], step: int) -> int:
    """Index of the entry sampling step `step` (from 0) uses: the first whose until_step >= step, else the
    last (A1111's `reconstruct_cond_batch`)."""
    for index, until in enumerate(until_steps):
        if step <= until:
            return index
    return len(until_steps) - 1


def text_at(schedule: Sequence[tuple[int, str]], step: int) -> str:
    """The text sampling step `step` (from 0) reads."""
    return schedule[schedule_index([until for until, _ in schedule], step)][1]
