"""Command-line flags derived from a config dataclass: one flag per field, help from its metadata."""
from __future__ import annotations

import argparse
import dataclasses
import re


def add_dataclass_flags(parser, cls, skip: set[str] = frozenset()) -> None:
    """--field-name for every field of `cls` (but `skip`); help from field(metadata={"help": ...})."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # argparse %-formats help strings: a literal "1%" would crash --help
        help_raw = f.metadata.get("help", "").replace("%", "%%")
        if f.metadata.get("required"):
            parser.add_argument(flag, dest=f.name, required=True, help=help_raw,
                                type=f.metadata.get("type", str), metavar=f.metadata.get("metavar"))
            continue
        help_text = help_raw + f" (default: {default!r})".replace("%", "%%")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        elif isinstance(default, list):
            item = f.metadata.get("type") or (type(default[0]) if default else str)
            parser.add_argument(flag, dest=f.name, nargs="*", type=item, default=default, help=help_text)
        else:
            kind = f.metadata.get("type", type(default) if default is not None else str)
            parser.add_argument(flag, dest=f.name, type=kind, default=default, help=help_text,
                                metavar=f.metadata.get("metavar"))


def dataclass_from_args(cls, args: argparse.Namespace):
    """Build `cls` from parsed flags (fields without a flag keep their defaults); its __post_init__
    validates and names any bad field."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def flag_of(cls, name: str) -> str | None:
    """The flag a user types for field `name` of `cls` (None: not one of its fields)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("flag", "--" + f.name.replace("_", "-"))
    return None


_FIELD = re.compile(r"\b[A-Z]\w*(?:Config|Command)\.(\w+)")


def in_flag_terms(message: str, cls) -> str:
    """A config's error as its command's user reads it: `ServiceConfig.shard` becomes `--shard`
    for the fields that are flags of `cls` (config-file fields such as EngramConfig's stay)."""
    return _FIELD.sub(lambda m: flag_of(cls, m.group(1)) or m.group(0), message)
