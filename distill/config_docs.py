"""The README's configuration table, generated from the config models' `Field(description=...)`.

The table is a view of `distill/config.py`, so it cannot drift from it: `python -m
distill.config_docs --write README.md` rewrites the block between the two markers, and a test
fails when README and config disagree (or a key has no description).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from distill.config import PipelineConfig, Section

BEGIN = (
    "<!-- config table: generated from distill/config.py by "
    "`python -m distill.config_docs --write README.md` -->"
)
END = "<!-- end of the generated config table -->"
HEADER = "| key | default | allowed | meaning |\n| --- | --- | --- | --- |"


@dataclass(frozen=True)
class Row:
    path: tuple[str, ...]
    owner: type[BaseModel]
    name: str
    default: str
    allowed: str
    description: str | None


def _optional_section(annotation: Any) -> type[Section] | None:
    """The section type of `X | None`, else None."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], Section):
        return options[0]
    return None


def _section(annotation: Any) -> type[Section] | None:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    return None


def format_value(value: Any) -> str:
    """A default as a reader would write it in YAML."""
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, Path):
        value = str(value)
    elif isinstance(value, tuple):
        value = list(value)
    elif isinstance(value, float):
        return f"`{value!r}`"
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def allowed_values(field: Any) -> str:
    """The field's bounds or choices, from its type and constraints."""
    choices = [arg for arg in typing.get_args(field.annotation) if isinstance(arg, str)]
    if typing.get_origin(field.annotation) is typing.Literal:
        return ", ".join(f"`{choice}`" for choice in choices)
    symbols = {
        annotated_types.Gt: (">", "gt"),
        annotated_types.Ge: (">=", "ge"),
        annotated_types.Lt: ("<", "lt"),
        annotated_types.Le: ("<=", "le"),
    }
    bounds = []
    for item in field.metadata:
        for kind, (symbol, attribute) in symbols.items():
            if isinstance(item, kind):
                bounds.append(f"{symbol} {getattr(item, attribute)}")
    return ", ".join(bounds)


def rows(
    model: type[BaseModel], defaults: BaseModel | None, path: tuple[str, ...] = ()
) -> Iterator[Row]:
    """One row per key, depth first, in declaration order; sections expand into their keys."""
    for name, field in model.model_fields.items():
        key = (*path, name)
        default = getattr(defaults, name) if defaults is not None else field.default
        section = _section(field.annotation)
        if section is not None:
            yield from rows(section, default, key)
            continue
        yield Row(key, model, name, format_value(default), allowed_values(field), field.description)
        optional = _optional_section(field.annotation)
        if optional is not None:  # an optional section's own keys, with their class defaults
            yield from rows(optional, None, key)


def _merge_key(paths: list[tuple[str, ...]]) -> str:
    """`{teacher,student}.training.epochs` for the paths of one shared field."""
    if len(paths) == 1:
        return ".".join(paths[0])
    parts = []
    for segments in zip(*paths, strict=True):
        distinct = list(dict.fromkeys(segments))
        parts.append(distinct[0] if len(distinct) == 1 else "{" + ",".join(distinct) + "}")
    return ".".join(parts)


def table(model: type[BaseModel] = PipelineConfig) -> str:
    """The markdown table: a shared section (e.g. training) is one row per key for all its uses."""
    groups: dict[tuple[type[BaseModel], str, int], list[Row]] = {}
    for row in rows(model, model()):
        groups.setdefault((row.owner, row.name, len(row.path)), []).append(row)
    lines = [HEADER]
    for group in groups.values():
        defaults = list(dict.fromkeys(row.default for row in group))
        cells = [
            f"`{_merge_key([row.path for row in group])}`",
            " / ".join(defaults),
            group[0].allowed,
            (group[0].description or "").replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def undocumented(model: type[BaseModel] = PipelineConfig) -> list[str]:
    """Dotted keys without a description."""
    return [".".join(row.path) for row in rows(model, model()) if not row.description]


def with_table(readme: str, generated: str) -> str:
    """README text with the block between the markers replaced by `generated`."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README lacks the config table markers {BEGIN!r} ... {END!r}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{generated}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="rewrite the table block of this README")
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"config keys without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.write is None:
        print(table())
        return 0
    args.write.write_text(with_table(args.write.read_text(), table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
