"""Flags and numbers given as text are read one way, or refused naming the field."""

from __future__ import annotations

import pytest

from airflow_provider_seedream.arguments import as_flag, as_int, as_number
from airflow_provider_seedream.exceptions import SeedreamValidationError


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("false", False), ("True", True), (" no ", False), ("on", True), ("1", True), ("0", False)],
)
def test_flags(value, expected):
    assert as_flag("replace", value) is expected


@pytest.mark.parametrize("value", ["maybe", "", None, 1, 0, "2"])
def test_flags_refused(value):
    with pytest.raises(SeedreamValidationError, match=r"^replace: must be true or false, got "):
        as_flag("replace", value)


@pytest.mark.parametrize(("value", "expected"), [(3, 3), ("3", 3), (" 10 ", 10), (4.0, 4), (0, 0)])
def test_whole_numbers(value, expected):
    assert as_int("max_retries", value, 0) == expected


@pytest.mark.parametrize("value", [-1, "-3", 2.5, "2.5", True, None, "many", [3]])
def test_whole_numbers_refused(value):
    with pytest.raises(SeedreamValidationError, match=r"^max_retries: must be a whole number of at least 0, got "):
        as_int("max_retries", value, 0)


def test_whole_numbers_without_a_floor():
    assert as_int("offset", "-3") == -3
    with pytest.raises(SeedreamValidationError, match=r"^offset: must be a whole number, got 'x'"):
        as_int("offset", "x")


@pytest.mark.parametrize(("value", "expected"), [(60, 60.0), ("60", 60.0), ("0.5", 0.5), (0.01, 0.01)])
def test_numbers(value, expected):
    assert as_number("timeout", value, 0, exclusive=True) == expected


@pytest.mark.parametrize("value", [0, "0", -1, "nan", "soon", True, None])
def test_numbers_refused(value):
    with pytest.raises(SeedreamValidationError, match=r"^timeout: must be a number above 0, got "):
        as_number("timeout", value, 0, exclusive=True)


def test_a_number_at_its_floor():
    assert as_number("retry_min_wait", 0, 0) == 0.0
    with pytest.raises(SeedreamValidationError, match=r"must be a number of at least 0, got -0.5"):
        as_number("retry_min_wait", -0.5, 0)
    assert as_number("x", "-7") == -7.0
    with pytest.raises(SeedreamValidationError) as refused:
        as_number("x", "soon")
    assert str(refused.value) == "x: must be a number, got 'soon'"
