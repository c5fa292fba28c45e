"""Command-line flags derived from a config dataclass: one flag per field, help from its metadata.

A field marked `part(...)` holds a nested config dataclass (a part several processes share, e.g. the
tiers' sizes): its fields become flags of their own, unprefixed, and the part is built from them."""
from __future__ import annotations

import argparse
import dataclasses
import re


def part(factory, **metadata):
    """A field holding a nested config dataclass; `factory` makes its default (the part's defaults
    for this process)."""
    return dataclasses.field(default_factory=factory, metadata={**metadata, "part": True})


def _parts(cls):
    return [f for f in dataclasses.fields(cls) if f.metadata.get("part")]


def add_dataclass_flags(parser, cls, skip: set[str] = frozenset(), defaults=None) -> None:
    """--field-name for every field of `cls` (but `skip`) and of its parts; help from
    field(metadata={"help": ...}). `defaults`: an instance whose values are the flags' defaults."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.metadata.get("part"):
            inner = getattr(defaults, f.name) if defaults is not None else f.default_factory()
            add_dataclass_flags(parser, type(inner), skip, inner)
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = (getattr(defaults, f.name) if defaults is not None else
                   f.default if f.default is not dataclasses.MISSING else f.default_factory())
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


def dataclass_from_args(cls, args: argparse.Namespace, given: set[str] = frozenset()):
    """Build `cls` from parsed flags (fields without a flag keep their defaults); its __post_init__
    validates and names any bad field. A class with SETTINGS_FILE = "<field>" takes its settings
    from that JSON file first; the flags in `given` (typed on the command line) override them."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if hasattr(args, f.name) and not f.metadata.get("part")}
    for f in _parts(cls):
        values[f.name] = dataclass_from_args(type(f.default_factory()), args, given)
    field_name = getattr(cls, "SETTINGS_FILE", None)
    if field_name and values.get(field_name):
        for name, value in read_settings(values[field_name], cls).items():
            if name not in given:
                values[name] = value
    return cls(**values)


def read_settings(path: str, cls) -> dict:
    """A JSON object of `cls`'s settings: keys are field names or flags ("max_message_mb",
    "max-message-mb" or "--max-message-mb"); unknown keys and wrong types are refused, naming them."""
    import json
    from pathlib import Path
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"--{cls.SETTINGS_FILE.replace('_', '-')} {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of settings, e.g. {{\"db\": \"data/tables\", \"port\": 50051}}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        name = key.lstrip("-").replace("-", "_")
        if name not in fields or name == cls.SETTINGS_FILE:
            raise ValueError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(fields))})")
        default = fields[name].default if fields[name].default is not dataclasses.MISSING else fields[name].default_factory()
        kind = type(default)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{path}: {key!r} must be {kind.__name__} (got {value!r})")
        out[name] = float(value) if kind is float else value
    return out


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The field names whose flags appear in argv (so a settings file does not override them)."""
    options = {}
    for action in parser._actions:
        for option in action.option_strings:
            options[option] = action.dest
    return {options[a.split("=", 1)[0]] for a in argv if a.split("=", 1)[0] in options}


def flag_of(cls, name: str) -> str | None:
    """The flag a user types for field `name` of `cls` or of its parts (None: not one of them)."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("part"):
            found = flag_of(type(f.default_factory()), name)
            if found:
                return found
        elif f.name == name:
            return f.metadata.get("flag", "--" + f.name.replace("_", "-"))
    return None


_FIELD = re.compile(r"\b[A-Z]\w*(?:Config|Command)\.(\w+)")


def in_flag_terms(message: str, cls) -> str:
    """A config's error as its command's user reads it: `ServiceConfig.shard` becomes `--shard`
    for the fields that are flags of `cls` (config-file fields such as EngramConfig's stay)."""
    return _FIELD.sub(lambda m: flag_of(cls, m.group(1)) or m.group(0), message)
