"""Results as values: each analysis returns one, the CLI writes its `to_json()`, and the report reads it
back with `from_json`. The JSON is a result's fields: nested results as objects, nodes by name, stages
and contrasts by value.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Ends(Result):
...     clean: float
...     corrupted: float
...     writer: Node
>>> Ends(1.5, -0.5, Node.attn(0, 1)).to_json()
{'clean': 1.5, 'corrupted': -0.5, 'writer': 'L0H1'}
>>> Ends.from_json({'clean': 1.5, 'corrupted': -0.5, 'writer': 'L0H1'}).writer
Node(kind='head', layer=0, head=1, port=None)
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing

from training.vocabulary.words import Node


class Result:
    """A dataclass whose JSON is its fields; `from_json` reads each field back as its annotated type
    (a field missing from the JSON keeps its default)."""

    def to_json(self) -> dict:
        return {f.name: encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, obj: dict):
        return decode_fields(cls, obj)


def encode(value):
    """`value` as JSON: results by their `to_json`, nodes by name, enums by value."""
    if isinstance(value, Result):
        return value.to_json()
    if isinstance(value, Node):
        return value.name
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    return value


def decode(kind, value):
    """`value`, read from JSON, as a `kind` (a field's annotation)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if value is None:
        return None
    if origin in (types.UnionType, typing.Union):
        return decode(next(a for a in args if a is not type(None)), value)
    if origin is list:
        return [decode(args[0], item) for item in value]
    if origin is dict:
        return {key: decode(args[1], item) for key, item in value.items()}
    if kind is Node:
        return Node.parse(value)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(value)
    if isinstance(kind, type) and issubclass(kind, Result):
        return kind.from_json(value)
    if dataclasses.is_dataclass(kind):
        return decode_fields(kind, value)
    return value


def decode_fields(cls, obj: dict):
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: decode(hints[f.name], obj[f.name])
                  for f in dataclasses.fields(cls) if f.name in obj})
