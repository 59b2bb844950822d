"""Prompt lengths land within 10% of the target, with a real tokenizer and with the default counter;
32K rows are fast and 128K rows are feasible."""

from __future__ import annotations

import time

import pytest

import tasks
from tasks.length import LengthError, approx_tokens, make_counter, parse_length

NAMES = [t.name for t in tasks.all_tasks() if t.source == "built-in"]


def measured(row, counter) -> int:
    return counter([row["prompt"][0]["content"]])[0]


@pytest.mark.parametrize("length", [1024, 4096, 16384])
def test_lengths_with_the_tiny_tokenizer(tiny_tokenizer, length):
    counter = make_counter(tiny_tokenizer)
    for name in NAMES:
        for row in tasks.get_task(name).generate(2, length, seed=1, tokenizer=tiny_tokenizer):
            n = measured(row, counter)
            assert n == row["extra_info"]["prompt_tokens"]
            assert abs(n - length) <= 0.1 * length, (name, n)


@pytest.mark.parametrize("length", ["1k", "4k", "32k"])
def test_lengths_with_the_default_counter(length):
    target = parse_length(length)
    for name in NAMES:
        for row in tasks.get_task(name).generate(2, length, seed=2):
            n = approx_tokens(row["prompt"][0]["content"])
            assert n == row["extra_info"]["prompt_tokens"]
            assert abs(n - target) <= 0.1 * target, (name, n)


def test_a_callable_counter_is_accepted():
    words = lambda text: len(text.split())  # noqa: E731
    row = tasks.get_task("summarization").generate(1, 3000, tokenizer=words)[0]
    assert abs(len(row["prompt"][0]["content"].split()) - 3000) <= 300


def test_32k_row_is_fast_and_128k_is_feasible(tiny_tokenizer):
    for name in NAMES:
        t0 = time.perf_counter()
        tasks.get_task(name).generate(1, "32k", seed=3)
        assert time.perf_counter() - t0 < 1.0, name
    t0 = time.perf_counter()
    row = tasks.get_task("multi_table").generate(1, "128k", seed=3, tokenizer=tiny_tokenizer)[0]
    assert abs(row["extra_info"]["prompt_tokens"] - 131072) <= 13107
    assert time.perf_counter() - t0 < 10.0


def test_parse_length():
    assert parse_length("8k") == 8192 and parse_length("128K") == 131072 and parse_length("32768") == 32768
    assert parse_length(" 1.5k ") == 1536 and parse_length(500) == 500
    for bad in ("eight", "0", "-3k", ""):
        with pytest.raises(LengthError):
            parse_length(bad)


def test_approx_counter_rule():
    # letter runs in pieces of up to 4, one per digit, one per symbol
    assert approx_tokens("abcd") == 1 and approx_tokens("abcde") == 2
    assert approx_tokens("SH-40817 x.") == 1 + 1 + 5 + 1 + 1
