"""Extension points: resolve a family's `type` (an alias or a dotted path) to its class.

Where it sits: the bottom layer, beside cartwise/config.py. Each family
(retrieval sources in serving/sources.py, business rules in serving/rules.py)
keeps an alias map such as `{"two_tower": "serving.sources.ScannSource"}`;
a `type` that is not an alias is read as a dotted path to a subclass of the
family's base class (STYLE.md section 6). Config parsing checks the `type`
(:func:`check_type`) and labels the declared items (:func:`labels`) the same
way for every family.
"""
from __future__ import annotations

import importlib
from typing import Mapping, Sequence


def load_class(aliases: Mapping[str, str], type_: str, base: type, error: type[Exception], family: str) -> type:
    """The class a `type` names.

    Args:
        aliases: alias -> dotted path.
        type_: an alias or a dotted path.
        base: the family's base class.
        error: exception raised on failure (the family's wiring error).
        family: "source", "rule", ... for the message.

    Raises:
        error: not importable, or not a subclass of `base`.
    """
    path = aliases.get(type_, type_)
    module, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise error(f"{family} type {type_!r}: cannot import {path!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise error(f"{family} type {type_!r}: {path!r} is not a {base.__module__}.{base.__name__} subclass")
    return cls


def check_type(value: object, family: str, types: Sequence[str]) -> None:
    """Raise ValueError unless a declared item's mapping has a known `type` or a dotted path."""
    t = value.get("type")
    if t is None:
        raise ValueError(f"a {family} needs a `type`: one of {', '.join(types)} or a dotted path")
    if not isinstance(t, str) or ("." not in t and t not in types):
        raise ValueError(f"unknown {family} type {t!r}; expected one of {', '.join(types)} or a dotted path")


def labels(items: Sequence) -> list[str]:
    """The label of each declared item: its `name`, else its type (suffixed `_<place>` when the type repeats)."""
    counts: dict[str, int] = {}
    for x in items:
        counts[x.type] = counts.get(x.type, 0) + 1
    return [x.name or (x.type if counts[x.type] == 1 else f"{x.type}_{i + 1}") for i, x in enumerate(items)]
