"""The shared report formatting helpers (srrlab.report.format), against hand-written expectations."""
from __future__ import annotations

import math

import pandas as pd

from srrlab.report.format import (colour_palette, fence, fmt, md_escape, md_table, p_clause, p_value, short_error,
                                  tau_interval)


def test_numbers_p_values_and_intervals():
    assert fmt(0.12345) == "0.123" and fmt(-0.0004) == "0.000" and fmt(math.nan) == "–" and fmt(None) == "–"
    assert fmt(1.23456, 2) == "1.23"
    assert p_value(0.0004) == "< 0.001" and p_value(0.0421) == "0.042" and p_value(math.nan) == "–"
    assert p_clause(0.0004) == "p < 0.001" and p_clause(0.5) == "p = 0.500"
    assert tau_interval(pd.Series({"tau_lo": -0.031, "tau_hi": 0.4299})) == "[-0.03, 0.43]"
    assert tau_interval(pd.Series({"tau_lo": math.nan, "tau_hi": 0.4})) == "–"


def test_markdown():
    assert md_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---:|\n| 1 | 2 |"
    assert md_escape("a_b|c") == "a\\_b\\|c"
    assert fence("x") == "```\nx\n```"
    assert fence("has ```` four") == "`````\nhas ```` four\n`````"


def test_errors_and_palette():
    tb = "Traceback (most recent call last):\n  File x\nValueError: bad lr"
    assert short_error(tb) == "ValueError: bad lr" and short_error("first\nsecond") == "first"
    assert short_error(None) == short_error(math.nan) == short_error("  ") == "(no error message)"
    assert short_error("x" * 300, limit=10) == "x" * 9 + "…"
    pal = colour_palette(["a", "b", "c"])
    assert list(pal) == ["a", "b", "c"] and len(set(pal.values())) == 3
