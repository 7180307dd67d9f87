"""Reading a space file: YAML with line numbers, --set overrides, errors pointing at lines."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from searchcomp.config.fields import line_of
from searchcomp.config.schema import DATASET_CHANNELS, Space
from searchcomp.errors import SpaceError


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice (YAML says keys are unique; PyYAML keeps the last)."""

    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"key {key!r} is given twice in one mapping (lines {first} and "
                         f"{again}); keep one")
        self.line = again


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (merge keys ``<<``
    aside: a key may override a merged one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
            except TypeError:  # an unhashable key: PyYAML refuses it itself
                continue
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _compose_lines(text: str) -> dict[tuple, int]:
    """Map every key path of the YAML document to its 1-based line."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def parse_override(text: str) -> tuple[str, Any]:
    """``"data.train_size=2000"`` -> ``("data.train_size", 2000)`` (value parsed as YAML)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.match(r'^[A-Za-z_]\w*(\.([\w*?\[\]-]+|"[^"]+"))*$', key):
        raise SpaceError(f"--set needs key=value with a dotted key (quote a key holding dots: "
                         f'blocks.per_block."layer1.*".prune=[0.0]), got {text!r}',
                         file="--set", field=key or None)
    try:
        return key, yaml.load(value, Loader=UniqueKeyLoader) if value.strip() else None
    except yaml.YAMLError as e:
        raise SpaceError(f"value is not valid YAML: {e}", file="--set", field=key) from None


def _key_parts(key: str) -> list[str]:
    """Split a dotted key; a double-quoted part may hold dots: ``a."layer1.*".b``."""
    return [p.strip('"') for p in re.findall(r'"[^"]+"|[^.]+', key)]


def _apply_override(data: dict, key: str, value: Any, origin: str,
                    line: int | None = None) -> None:
    parts = _key_parts(key)
    node = data
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise SpaceError(f"cannot set {key}: {'.'.join(parts[:i + 1])} is not a mapping",
                             file=origin, field=key, line=line)
        node = child
    node[parts[-1]] = value


def load_space(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
               quick: bool = False) -> Space:
    """Read, override and validate a space file.

    ``overrides`` are ``key=value`` strings as given to ``--set``; ``quick`` applies the file's
    own ``quick:`` overrides first (``--set`` wins over them) and, unless they set ``name``,
    suffixes the name with ``-quick`` so quick trials never mix with full ones. The ``quick:``
    section is checked either way, so a mistake there is found before ``--quick`` is used.
    """
    path = Path(path)
    if not path.is_file():
        raise SpaceError("file not found" if not path.exists() else "not a file",
                         file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"cannot read the file: {e}", file=str(path)) from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
        lines = _compose_lines(text)
    except DuplicateKeyError as e:
        raise SpaceError(str(e), file=str(path), line=e.line) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SpaceError(f"not valid YAML: {getattr(e, 'problem', e)}", file=str(path),
                         line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise SpaceError("the space file must be a YAML mapping (key: value lines)",
                         file=str(path), line=1)
    if not quick and data.get("quick"):
        _build(copy.deepcopy(data), dict(lines), path, (), quick=True, checking_quick=True)
    return _build(data, lines, path, overrides, quick)


def _build(data: dict, lines: dict[tuple, int], path: Path, overrides: list[str] | tuple[str, ...],
           quick: bool, checking_quick: bool = False) -> Space:
    origins: dict[tuple, str] = {}
    if quick:
        q = data.get("quick") or {}
        if not isinstance(q, dict):
            raise SpaceError("quick must be a mapping of dotted keys to values", file=str(path),
                             field="quick", line=lines.get(("quick",)))
        for key, value in q.items():
            _apply_override(data, str(key), value, str(path), lines.get(("quick", key)))
            _point_at(lines, tuple(int(p) if p.isdigit() else p for p in _key_parts(str(key))),
                      lines.get(("quick", key)))
        if "name" not in q and isinstance(data.get("name"), str):
            data["name"] = data["name"] + "-quick"  # its own study: other data, other base
    for text_override in overrides:
        key, value = parse_override(text_override)
        _apply_override(data, key, value, "--set")
        origins[tuple(int(p) if p.isdigit() else p for p in _key_parts(key))] = "--set"

    try:
        try:
            space = Space.model_validate(data)
        except ValidationError as e:
            raise _to_space_error(e, str(path), lines, origins) from None
        except ValueError as e:  # raised by a validator outside pydantic's wrapping
            raise SpaceError(str(e), file=str(path)) from None
        space._file = str(path)
        space._lines = lines
        space._overridden = tuple(".".join(map(str, p)) for p in origins)
        space._args = (str(path.resolve()), tuple(overrides), quick)
        want = DATASET_CHANNELS.get(space.data.dataset)
        if want is not None and space.model.in_channels != want:
            raise space.error("model.in_channels", f"is {space.model.in_channels} but "
                              f"{space.data.dataset} images have {want} channel(s)")
    except SpaceError as e:
        if checking_quick:
            raise SpaceError(f"{e.detail} (with the quick: overrides, which --quick applies)",
                             file=e.file, field=e.field, line=e.line) from None
        raise
    return space


def _point_at(lines: dict[tuple, int], path: tuple, line: int | None) -> None:
    """Errors under ``path`` (set by a quick: key) point at that key's line."""
    if line is None:
        return
    for k in [k for k in lines if k[:len(path)] == path]:
        del lines[k]
    lines[path] = line


def _to_space_error(e: ValidationError, file: str, lines: dict[tuple, int],
                    origins: dict[tuple, str]) -> SpaceError:
    err = e.errors()[0]
    loc = tuple(err["loc"])
    # Pydantic adds union member names ('str', 'tuple[...]') to loc; keep only real keys.
    known = [p for i, p in enumerate(loc) if isinstance(p, int) or not _is_type_tag(p)]
    path = tuple(known)
    field = ".".join(str(p) for p in path) or "(top level)"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {path[-1]!r}" + _did_you_mean(e, path)
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
        msg = f"{msg} (got {err['input']!r})"
    for p, origin in origins.items():
        if path[:len(p)] == p or (path and p[:len(path)] == path):
            return SpaceError(msg, file=origin, field=field)
    return SpaceError(msg, file=file, field=field, line=line_of(lines, path))


def _is_type_tag(p: Any) -> bool:
    return isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool", "dict"}
                                   or p.startswith("function-"))


def _did_you_mean(e: ValidationError, path: tuple) -> str:
    import difflib

    model: Any = Space
    for p in path[:-1]:
        if isinstance(p, int):
            continue
        field = getattr(model, "model_fields", {}).get(p)
        ann = getattr(field, "annotation", None)
        if ann is None or not hasattr(ann, "model_fields"):
            return ""
        model = ann
    options = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(path[-1]), options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(options)})" if options else hint
