import math

import pytest

from mobilenet.values import is_finite, is_int, is_number, is_of_type


@pytest.mark.parametrize("value, whole, number, finite", [
    (3, True, True, True),
    (0, True, True, True),
    (2.5, False, True, True),
    (True, False, False, False),  # JSON's true is not 1 in a file a hand edited
    (False, False, False, False),
    (math.nan, False, True, False),
    (math.inf, False, True, False),
    (10**400, True, True, True),  # too large for a float: finite all the same, not an OverflowError
    ("3", False, False, False),
    (None, False, False, False),
])
def test_value_kinds(value, whole, number, finite):
    assert (is_int(value), is_number(value), is_finite(value)) == (whole, number, finite)


@pytest.mark.parametrize("value, annotation, fits", [
    (3, "int", True), (3, "float", True), (2.5, "int", False), (True, "int", False), (True, "bool", True),
    (1, "bool", False), ("a", "str", True), (None, "str", False), ("3", "float", False),
])
def test_a_value_fits_a_field_of_its_annotation(value, annotation, fits):
    assert is_of_type(value, annotation) == fits


def test_two_shares_are_shown_with_the_decimals_that_tell_them_apart() -> None:
    from mobilenet.display import percents_apart

    assert percents_apart(0.30, 0.4211) == ("30%", "42%")
    assert percents_apart(0.419, 0.4211) == ("41.9%", "42.1%")  # not "42% below the 42%"
    assert percents_apart(0.4209, 0.4211) == ("42.09%", "42.11%")
