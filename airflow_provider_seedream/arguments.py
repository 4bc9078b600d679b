"""Flags and numbers given as text (templated, from ``params``, from the connection form) read one way.

``"false"`` is false, ``"3"`` is 3; anything else is refused naming the field and what it takes,
before any request is sent.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_seedream.exceptions import SeedreamValidationError

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def as_flag(field: str, value: Any) -> bool:
    """``True``/``False``, or their text (``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise SeedreamValidationError(field, f"must be true or false, got {value!r}")


def _read(value: Any, convert: type) -> Any:
    """``value`` as a number of ``convert``'s kind, from a number or its text; ``None`` when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return convert(value.strip())
        except ValueError:
            return None
    if convert is int and isinstance(value, float):
        return int(value) if value.is_integer() else None
    return convert(value) if isinstance(value, (int, float)) else None


def as_int(field: str, value: Any, minimum: int | None = None) -> int:
    """A whole number (or its text) of at least ``minimum``."""
    number = _read(value, int)
    if number is None or (minimum is not None and number < minimum):
        bound = f" of at least {minimum}" if minimum is not None else ""
        raise SeedreamValidationError(field, f"must be a whole number{bound}, got {value!r}")
    return number


def as_number(field: str, value: Any, minimum: float | None = None, *, exclusive: bool = False) -> float:
    """A number (or its text) above (``exclusive``) or at least ``minimum``."""
    number = _read(value, float)
    too_small = minimum is not None and number is not None and (number <= minimum if exclusive else number < minimum)
    if number is None or number != number or too_small:
        bound = "" if minimum is None else f" {'above' if exclusive else 'of at least'} {minimum:g}"
        raise SeedreamValidationError(field, f"must be a number{bound}, got {value!r}")
    return number
