"""Declared parameters: a default, a type and a range, checked before any model runs.

A task declares its protocol parameters as a mapping name -> Param; validate_params fills
in the defaults and checks every value, so a benchmark YAML with `batch_size: "big"` or
`stride: 0` is a one-line error when the benchmark is loaded, never a traceback later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from silc_eval.core.errors import UserError


@dataclass(frozen=True)
class Param:
    """One parameter: its default, a check (True for a valid value) and what a valid value is, in words."""

    default: Any
    check: Callable[[Any], bool]
    expected: str
    doc: str = ""

    def valid(self, value: Any) -> bool:
        """Return whether value is acceptable."""
        return bool(self.check(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def integer(default: int | None, minimum: int | None = None, nullable: bool = False, doc: str = "") -> Param:
    """Return an integer Param (>= minimum when given; null allowed when nullable)."""
    expected = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if nullable else "")
    return Param(default, lambda v: (nullable and v is None) or (_is_int(v) and (minimum is None or v >= minimum)),
                 expected, doc)


def number(default: float | None, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, nullable: bool = False, doc: str = "", finite: bool = False) -> Param:
    """Return a number Param: >= minimum, <= maximum, > above (each when given); null allowed when nullable;
    infinity refused when finite."""
    bounds = [f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else "",
              f"> {above}" if above is not None else ""]
    noun = "a finite number" if finite else "a number"
    expected = " and ".join([noun] + [b for b in bounds if b]).replace("number and", "number") + \
        (" or null" if nullable else "")

    def check(value: Any) -> bool:
        if nullable and value is None:
            return True
        return _is_number(value) and (not finite or math.isfinite(value)) and \
            (minimum is None or value >= minimum) and (maximum is None or value <= maximum) and \
            (above is None or value > above)

    return Param(default, check, expected, doc)


def boolean(default: bool, doc: str = "") -> Param:
    """Return a true/false Param."""
    return Param(default, lambda v: isinstance(v, bool), "true or false", doc)


def choice(default: str, options: tuple[str, ...], doc: str = "") -> Param:
    """Return a Param taking one of options."""
    return Param(default, lambda v: isinstance(v, str) and v in options, f"one of {', '.join(options)}", doc)


def int_list(default: list[int] | None, minimum: int | None = None, nullable: bool = False, doc: str = "") -> Param:
    """Return a Param holding a non-empty list of integers (each >= minimum when given)."""
    def check(value: Any) -> bool:
        if nullable and value is None:
            return True
        return isinstance(value, list) and bool(value) and all(
            _is_int(v) and (minimum is None or v >= minimum) for v in value)

    expected = "a non-empty list of integers" + (f" >= {minimum}" if minimum is not None else "") + \
        (" or null" if nullable else "")
    return Param(default, check, expected, doc)


def str_list(default: list[str], doc: str = "") -> Param:
    """Return a Param holding a (possibly empty) list of strings."""
    return Param(default, lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
                 "a list of names", doc)


def string(default: str | None, pattern: str | None = None, nullable: bool = False, doc: str = "",
           expected: str | None = None) -> Param:
    """Return a Param holding a non-empty string (matching the regular expression pattern in full, when given)."""
    import re

    def check(value: Any) -> bool:
        if nullable and value is None:
            return True
        return isinstance(value, str) and bool(value.strip()) and (pattern is None or re.fullmatch(pattern, value))

    return Param(default, check, (expected or "a non-empty string") + (" or null" if nullable else ""), doc)


def custom(default: Any, check: Callable[[Any], bool], expected: str, doc: str = "") -> Param:
    """Return a Param with its own check."""
    return Param(default, check, expected, doc)


def defaults(spec: Mapping[str, Param]) -> dict[str, Any]:
    """Return {name: default} of a parameter spec."""
    return {name: param.default for name, param in spec.items()}


def validate_params(spec: Mapping[str, Param], params: Mapping[str, Any], where: str,
                    prefix: str = "") -> dict[str, Any]:
    """Return the defaults of spec overlaid with params, after checking every name and value.

    An unknown name, or a value its Param rejects, is a UserError naming where, the parameter
    (after prefix, e.g. 'optim.'), the value and what was expected.
    """
    unknown = sorted(set(params) - set(spec), key=str)
    if unknown:
        raise UserError(f"{where}: unknown parameter '{prefix}{unknown[0]}'; allowed: {', '.join(sorted(spec))}")
    merged = {**defaults(spec), **params}
    for name, param in spec.items():
        if not param.valid(merged[name]):
            raise UserError(f"{where}: parameter {prefix}{name} is {merged[name]!r}; expected {param.expected}")
    return merged
