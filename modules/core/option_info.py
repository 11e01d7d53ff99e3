"""`OptionInfo`: the description and validation rules of one runtime option (a config.json key)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from modules.core.errors import ValidationError

OPTION_TYPES: tuple[type, ...] = (bool, int, float, str, list)

Choices = Sequence[object] | Callable[[], Sequence[object]]
Validator = Callable[[object], object]
"""Called with a type-checked value; returns the value to store or raises ValidationError."""
OnChange = Callable[[str, object], None]
"""Called with (key, new value) after an option changed."""


@dataclass(frozen=True, kw_only=True)
class OptionInfo:
    """One option: its key in config.json, default, UI label/section and validation rules.

    `choices` may be a callable (e.g. the current checkpoint list); static choices are checked
    on every write, callable ones on `set`/`update` but not on `load` (files come and go).
    For list options, choices constrain the items. `restrict_api`: an API client may not
    change it (paths and security switches). `readonly`: only the app sets it
    (`Options.set_readonly`); clients' values are ignored. The infotext key an option is written
    as lives in `modules.core.fields` (the one table of infotext keys, request fields and options).
    """

    key: str
    default: object
    label: str
    section: str
    type: type
    choices: Choices | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    restrict_api: bool = False
    requires_restart: bool = False
    readonly: bool = False
    implemented: bool = True
    """False: accepted and stored (clients send it; /options lists it) but nothing acts on it yet;
    the Settings tab does not show it and a request overriding it gets a warning."""
    note: str = ""
    """Why an option is not implemented (shown in warnings)."""
    comment: str = ""
    validator: Validator | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise TypeError(f"option {self.key}: type must be one of bool/int/float/str/list, not {self.type}")
        self._coerce_type(self.default)  # a default of the wrong type is a programming error

    def default_value(self) -> object:
        """A fresh copy of the default (lists are new lists)."""
        return copy.deepcopy(self.default)

    def choice_list(self) -> list[object] | None:
        """The current choices, or None when unrestricted."""
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def coerce(self, value: object, *, check_dynamic_choices: bool = True) -> object:
        """Type-check/convert `value` and check choices and range; ValidationError names the key."""
        result = self._coerce_type(value)
        if self.validator is not None:
            try:
                result = self.validator(result)
            except ValidationError:
                raise
            except (ValueError, TypeError) as exc:
                raise ValidationError(f"setting {self.key}: {exc}") from exc
        if self.choices is not None and (check_dynamic_choices or not callable(self.choices)):
            allowed = self.choice_list() or []
            items = result if isinstance(result, list) else [result]
            bad = [item for item in items if item not in allowed]
            if bad:
                shown = ", ".join(repr(c) for c in allowed[:20])
                raise ValidationError(f"setting {self.key}: {bad[0]!r} is not one of {shown}")
        if isinstance(result, (int, float)) and not isinstance(result, bool):
            if self.minimum is not None and result < self.minimum:
                raise ValidationError(f"setting {self.key}: {result} is below the minimum {self.minimum}")
            if self.maximum is not None and result > self.maximum:
                raise ValidationError(f"setting {self.key}: {result} is above the maximum {self.maximum}")
        return result

    def _coerce_type(self, value: object) -> object:
        expected = self.type
        if expected is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
        elif expected is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif expected is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    return float(value)
                raise ValidationError(f"setting {self.key}: {value} is not a finite number")
        elif expected is str:
            if isinstance(value, str):
                return value
        elif expected is list and isinstance(value, (list, tuple)):
            return copy.deepcopy(list(value))
        raise ValidationError(f"setting {self.key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
