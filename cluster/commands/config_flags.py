"""Command-line flags generated from a job's pydantic config class.

Each flag takes its type, choices, default and help from the config field, so a default is
written once (in the config class) and `--help` shows it; `config_kwargs` turns the parsed
flags back into the config's keyword arguments. Fields with a default factory (resolved at run
time, e.g. the tracking store) show the factory's rule from the field description instead.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def field_default(model: type[BaseModel], name: str) -> Any:
    """The field's static default (None for required fields and default factories)."""
    info = model.model_fields[name]
    if info.default is PydanticUndefined:
        return None
    return info.default


def add_config_arguments(
    parser: argparse._ActionsContainer,
    model: type[BaseModel],
    *,
    skip: tuple[str, ...] = (),
    hidden: tuple[str, ...] = (),
    help_overrides: dict[str, str] | None = None,
) -> list[str]:
    """Add one flag per field of `model` (except `skip`); returns the field names added.

    bool fields become `--x/--no-x`; Literal fields get choices; a required field is a required
    flag. `hidden` fields are accepted but left out of --help (testing hooks).
    """
    added = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        annotation, _optional = _unwrap_optional(info.annotation)
        kwargs: dict[str, Any] = {"dest": name}
        default = field_default(model, name)
        text = (help_overrides or {}).get(name) or info.description or ""
        if info.is_required():
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if info.default_factory is None and "default" not in text:
                text = f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        if typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        elif annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif annotation in (int, float, str):
            kwargs["type"] = annotation
        else:  # tuples, lists, dicts: given as text and parsed by the config's validators
            kwargs["type"] = str
        kwargs["help"] = argparse.SUPPRESS if name in hidden else text
        parser.add_argument(flag_name(name), **kwargs)
        added.append(name)
    return added


def config_kwargs(args: argparse.Namespace, fields: list[str]) -> dict[str, Any]:
    """The parsed flags as config keyword arguments (None means 'the config's own default' for
    fields whose default is resolved at run time)."""
    return {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
