"""TOML tables → frozen dataclasses, validated: one generic reader for every lpmr-edge config file.

``parse_table(cls, table)`` builds ``cls`` from a parsed TOML mapping, checking every key against
the dataclass's type hints:

* unknown keys and missing required fields (fields without a default) are errors naming the
  valid keys;
* ``int``, ``float`` (an integer is accepted), ``str``, ``bool`` are matched strictly (``true`` is
  not an integer); ``tuple[X, ...]`` reads a TOML array; ``dict[str, X]`` a table of X; a nested
  dataclass a table (named ``[key]``; in a tuple, ``[[key]]``); ``X | None`` and unions try each
  option in turn; ``Any`` takes the value as it is;
* a dataclass checks its own rules in ``__post_init__`` by raising ``UserError`` (see ``require``);
  the message is prefixed with the table it came from.

Every problem is one ``UserError`` line naming the key; callers prefix the file and add the fix.
"""
from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from lpmr_edge.errors import UserError

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def require(holds: bool, problem: str) -> None:
    """Raise ``UserError(problem)`` unless ``holds`` (for ``__post_init__`` rules)."""
    if not holds:
        raise UserError(problem)


def describe_type(hint: Any) -> str:
    """How a type reads in an error message ("an integer", "a list of strings", "a [x] table")."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        return f"a list of {describe_type(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (dict, Mapping):
        return f"a table of {describe_type(typing.get_args(hint)[1]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(option) for option in typing.get_args(hint) if option is not type(None))
    return _NAMES.get(hint, f"a [{getattr(hint, '__name__', hint)}] table")


def _is_table(hint: Any) -> bool:
    return any(dataclasses.is_dataclass(option) for option in (hint, *typing.get_args(hint)))


def _key_name(key: str, hint: Any, where: str) -> str:
    """How a key is named in messages: ``[key]`` for a table, ``[[key]]`` for a list of tables, else
    ``<table> key``."""
    if typing.get_origin(hint) is tuple and _is_table(typing.get_args(hint)[0]):
        return f"[[{key}]]"
    if _is_table(hint):
        return f"[{key}]"
    return f"{where} {key}".strip()


def parse_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked (and converted: arrays to tuples, integers to floats) against type ``hint``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:
            return parse_value(value, options[0], where)
        for option in options:
            with contextlib.suppress(UserError):
                return parse_value(value, option, where)
        raise UserError(f"{where} must be {' or '.join(map(describe_type, options))}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return parse_table(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise UserError(f"{where} must be {describe_type(hint)}, got {value!r}")
        return tuple(parse_value(item, typing.get_args(hint)[0], where if _is_table(typing.get_args(hint)[0])
                                 else f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise UserError(f"{where} must be {describe_type(hint)}, got {value!r}")
        item_hint = typing.get_args(hint)[1]
        return {key: parse_value(item, item_hint, f"[{where.strip('[]')}.{key}]" if _is_table(item_hint)
                                 else f"{where}.{key}") for key, item in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type(value) is hint:
        return value
    raise UserError(f"{where} must be {describe_type(hint)}, got {value!r}")


def parse_table(cls: type, table: Any, where: str = "") -> Any:
    """An instance of dataclass ``cls`` from a TOML table; ``where`` names the table in messages ("" for
    the top level, "[name]" for a table). Raises a one-line ``UserError``."""
    if not isinstance(table, Mapping):
        raise UserError(f"{where or 'the file'} must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise UserError(f"unknown key '{unknown[0]}' in {where or 'the top level'}; valid keys: {', '.join(fields)}")
    missing = [name for name, field in fields.items() if name not in table
               and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"missing key '{missing[0]}' in {where or 'the top level'}")
    values = {key: parse_value(value, hints[key], _key_name(key, hints[key], where)) for key, value in table.items()}
    try:
        return cls(**values)
    except UserError as error:
        raise UserError(f"{where} {error}".strip()) from None
