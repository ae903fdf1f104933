"""A1111 prompt syntax: emphasis brackets, explicit weights, escapes, unbalanced brackets, BREAK."""

from __future__ import annotations

import pytest

from lienzo.errors import InvalidArgumentError
from lienzo.text.prompt_syntax import BREAK_MARKER, is_break, parse_prompt


def assert_fragments(text: str, expected: list[tuple[str, float]]) -> None:
    """Parse `text` and compare texts exactly and weights to 1e-12."""
    parsed = parse_prompt(text)
    assert [part for part, _ in parsed] == [part for part, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected], abs=1e-12)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.3 * 1.1 * 1.1),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.1**4),
                (".", 1.1),
            ],
        ),
    ],
)
def test_a1111_parser_docstring_examples(text, expected):
    assert_fragments(text, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a (word)", [("a ", 1.0), ("word", 1.1)]),
        ("a ((word))", [("a ", 1.0), ("word", 1.21)]),
        ("a [word]", [("a ", 1.0), ("word", 1 / 1.1)]),
        ("a [[word]]", [("a ", 1.0), ("word", 1 / 1.21)]),
        ("a (word:1.5)", [("a ", 1.0), ("word", 1.5)]),
        ("a (word:0.25)", [("a ", 1.0), ("word", 0.25)]),
        ("a \\(word\\)", [("a (word)", 1.0)]),
    ],
)
def test_a1111_wiki_attention_examples(text, expected):
    assert_fragments(text, expected)


def test_mixed_example_multiplies_and_divides():
    assert_fragments(
        "a (very) beautiful [[red]] (cat:1.3)",
        [("a ", 1.0), ("very", 1.1), (" beautiful ", 1.0), ("red", 1 / 1.21), (" ", 1.0), ("cat", 1.3)],
    )


def test_nesting_multiplies_weights():
    assert_fragments("((cat:1.5))", [("cat", 1.5 * 1.1)])
    assert_fragments("[(cat:2)]", [("cat", 2 / 1.1)])
    assert_fragments("(a (b (c:2)))", [("a ", 1.1), ("b ", 1.21), ("c", 2 * 1.21)])
    assert_fragments("([cat])", [("cat", 1.0)])


def test_whitespace_and_sign_around_explicit_weight():
    assert_fragments("(cat : 1.5 )", [("cat ", 1.5)])
    assert_fragments("(cat:-0.5)", [("cat", -0.5)])
    assert_fragments("(cat:.5)", [("cat", 0.5)])


def test_escapes_are_literal_characters():
    assert_fragments("\\(a\\) \\[b\\]", [("(a) [b]", 1.0)])
    assert_fragments("back\\\\slash", [("back\\slash", 1.0)])
    assert_fragments("(\\(a\\))", [("(a)", 1.1)])
    assert_fragments("lone \\backslash", [("lone backslash", 1.0)])


def test_unbalanced_brackets_follow_a1111():
    assert_fragments("a [b", [("a ", 1.0), ("b", 1 / 1.1)])
    assert_fragments("a (b [c", [("a ", 1.0), ("b ", 1.1), ("c", 1.1 / 1.1)])
    assert_fragments("a) b] c", [("a) b] c", 1.0)])
    assert_fragments("a:1.5) b", [("a:1.5) b", 1.0)])
    assert_fragments("[a:1.5)]", [("a:1.5)", 1 / 1.1)])
    assert_fragments("(a: b)", [("a: b", 1.1)])


def test_adjacent_equal_weights_merge_and_unequal_do_not():
    assert parse_prompt("(a)(b)") == [("ab", 1.1)]
    assert [part for part, _ in parse_prompt("(a)((b))")] == ["a", "b"]
    assert parse_prompt("a: b") == [("a: b", 1.0)]


def test_empty_prompt_is_one_empty_fragment():
    assert parse_prompt("") == [("", 1.0)]
    assert parse_prompt("()") == [("", 1.0)]


def test_break_splits_on_uppercase_word_only():
    assert parse_prompt("a cat BREAK a dog") == [("a cat", 1.0), BREAK_MARKER, ("a dog", 1.0)]
    assert parse_prompt("a cat break a dog") == [("a cat break a dog", 1.0)]
    assert parse_prompt("BREAKFAST") == [("BREAKFAST", 1.0)]
    assert parse_prompt("BREAK a") == [BREAK_MARKER, ("a", 1.0)]
    assert parse_prompt("a BREAK BREAK b") == [("a", 1.0), BREAK_MARKER, BREAK_MARKER, ("b", 1.0)]


def test_break_inside_brackets_still_breaks():
    parsed = parse_prompt("(a BREAK b)")
    assert [is_break(fragment) for fragment in parsed] == [False, True, False]
    assert parsed[0] == ("a", pytest.approx(1.1)) and parsed[2] == ("b", pytest.approx(1.1))


def test_malformed_weight_says_how_to_write_it():
    with pytest.raises(InvalidArgumentError, match=r"\(word:1.2\)"):
        parse_prompt("(cat:1.2.3)")
