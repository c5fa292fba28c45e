"""Flags derived from config dataclasses, parts (nested configs) included."""
import argparse
from dataclasses import dataclass, field

import pytest

from core.flags import add_dataclass_flags, dataclass_from_args, flag_of, in_flag_terms, part


@dataclass
class InnerConfig:
    size_mb: float = field(default=1.0, metadata={"help": "a size"})
    mode: str = field(default="a", metadata={"help": "a or b"})

    def __post_init__(self):
        if self.mode not in ("a", "b"):
            raise ValueError(f"InnerConfig.mode must be a or b (got {self.mode!r})")


@dataclass
class OuterConfig:
    inner: InnerConfig = part(lambda: InnerConfig(mode="b"))     # this process's own default for the part
    name: str = field(default="x", metadata={"help": "a name"})


def parse(argv):
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, OuterConfig)
    return dataclass_from_args(OuterConfig, parser.parse_args(argv))


def test_a_parts_fields_are_flags_with_the_processs_defaults():
    assert parse([]) == OuterConfig(InnerConfig(1.0, "b"), "x")
    assert parse(["--size-mb", "0.5", "--name", "y", "--mode", "a"]) == OuterConfig(InnerConfig(0.5, "a"), "y")
    assert flag_of(OuterConfig, "size_mb") == "--size-mb" and flag_of(OuterConfig, "nope") is None


def test_a_parts_error_names_the_flag():
    with pytest.raises(ValueError, match="InnerConfig.mode must be a or b") as e:
        parse(["--mode", "c"])
    assert in_flag_terms(str(e.value), OuterConfig).startswith("--mode must be a or b")
