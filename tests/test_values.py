"""Numbers for people: rounded to a few significant digits, and never two different numbers
that read alike where they decide a label."""

from __future__ import annotations

import numpy as np
import pytest

from covidzoo.values import MOST_DIGITS, format_apart, format_number


@pytest.mark.parametrize(("value", "text"), [
    (0.6493055555555556, "0.6493"),
    (0.98437, "0.9844"),
    (184.234, "184.2"),
    (12345.6, "12346"),
    (0.9, "0.9000"),
    (1e-9, "1e-09"),
    (0.0, "0"),
    (None, "n/a"),
    (48, "48"),
    (np.int64(48), "48"),
    (np.float64(0.25), "0.2500"),
    (float("nan"), "nan"),
])
def test_format_number(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize(("value", "reference", "texts"), [
    (0.73, 0.42, ("0.7300", "0.4200")),          # apart already: the usual digits
    (0.5000123, 0.5, ("0.50001", "0.50000")),    # as many digits as tell them apart
    (0.49996, 0.5, ("0.49996", "0.50000")),      # just under never rounds up to the threshold
    (0.42, 0.42, ("0.4200", "0.4200")),          # equal: equal
])
def test_format_apart(value, reference, texts):
    assert format_apart(value, reference) == texts


def test_format_apart_stops_at_the_most_digits():
    shown = format_apart(0.5 + 1e-15, 0.5)
    assert shown == (format_number(0.5 + 1e-15, MOST_DIGITS), format_number(0.5, MOST_DIGITS))
