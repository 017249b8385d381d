"""What a value read from a file (JSON, a card, ONNX metadata) is: in Python True is an int, so each check says so."""

from __future__ import annotations

import math


def is_int(value: object) -> bool:
    """A whole number, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, not a bool (NaN and infinities included: see is_finite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: object) -> bool:
    """A number that is neither NaN nor infinite (any int is: math.isfinite would overflow on a huge one)."""
    return is_int(value) or is_number(value) and math.isfinite(value)


_OF_TYPE = {"int": is_int, "float": is_number, "str": lambda value: isinstance(value, str),
            "bool": lambda value: isinstance(value, bool)}


def is_of_type(value: object, annotation: str) -> bool:
    """Whether a value fits a dataclass field annotated "int", "float" (an int too), "str" or "bool"."""
    return _OF_TYPE[annotation](value)
