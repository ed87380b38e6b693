"""Typed dataclasses from YAML: presets, inheritance, dotted overrides and one-line errors.

A generic engine, independent of what the config classes hold (bert/config.py has the project's schema):

- `load_config(cls, path, overrides)`: a YAML file whose top-level keys are the fields (sections) of `cls`,
  then dotted `key=value` overrides (values parsed as YAML);
- `base: other.yaml` at the top level inherits another file (relative to this one) and overrides it;
- a section given as a string loads a preset: `model: mini` reads `configs/model/mini.yaml`, and a string
  ending in `.yaml` is a path relative to the file that names it. On the command line `model=base` replaces
  the whole section (what the file set there included), and later `model.x=...` overrides apply to it;
- every error is one line that names the key: an unknown key lists the closest valid keys, a wrong type names
  the field and the type it expects; a dataclass's own `__post_init__` checks (ValueError) become the same.

`save_config` writes a resolved config that `load_config` reads back; `field_docs` reads the docstring after
each field, for `--list-keys`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml


def _config_root() -> Path:
    """The shipped configs: the `configs/` of the checkout this package was imported from, else package
    data (`bert/configs` in an installed wheel). The checkout comes first: an editable install maps
    `bert.configs` to the checkout it was installed from, and code imported from another checkout (a
    worktree) must read its own configs."""
    from importlib.resources import files

    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / "model").is_dir():
        return checkout / "configs"
    try:
        root = Path(str(files("bert.configs")))
        if (root / "model").is_dir():
            return root
    except (ModuleNotFoundError, TypeError):  # not installed (PYTHONPATH=checkout) or a namespace view
        pass
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_ROOT = _config_root()
"""The shipped `configs/` folder, where presets (`model: mini`) and recipes are looked up."""

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be loaded; the message is one line meant for the user."""


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Load `cls` from a YAML file (or its defaults when `path` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        # as given, else the shipped config of that name: `configs/pretrain/demo.yaml` outside a checkout
        path = _resolve_relative(str(path), Path())
        data = _read_yaml_tree(Path(path))
        base_dir = Path(path).resolve().parent
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (for example train.max_steps=100)"
            )
        _set_dotted(data, key.strip(), _parse_value(raw))
    complete = getattr(cls, "complete_raw", None)
    if complete is not None:  # a schema may fill what the user left unset from elsewhere (a model folder)
        complete(data)
    return build(cls, data, base_dir=base_dir)


def build(cls: type[T], data: dict[str, Any], base_dir: Path | None = None, prefix: str = "") -> T:
    """Turn a nested dict into the dataclass `cls`, checking every key and type."""
    base_dir = base_dir or Path.cwd()
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            renamed = getattr(cls, "RENAMED_KEYS", {}).get(key)
            if renamed:  # a key this section had, or that another command's section has
                raise ConfigError(f"unknown config key '{dotted}': {renamed}")
            raise ConfigError(_unknown_key_message(dotted, prefix, list(fields)))
        kwargs[key] = _coerce(value, hints[key], dotted, base_dir, section=key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a config (tuples become lists), ready for YAML or a tracker."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML; `load_config(type(config), path)` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'train': {'lr': 1}}` -> `{'train.lr': 1}`; for trackers that want flat hyper-parameters."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_keys(cls: type) -> list[str]:
    """Every dotted key of a config class, for help texts and suggestions."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{k}" for k in config_keys(hints[f.name])]
        else:
            keys.append(f.name)
    return keys


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings of every field (the string literal after each field), by dotted key."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        tree = None
    if tree is not None:
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update({f"{f.name}.{k}": v for k, v in field_docs(hints[f.name]).items()})
        else:
            out[f.name] = docs.get(f.name, "")
    return out


# ------------------------------------------------------------------------------------------------ helpers


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}"
        )
    return data


def _read_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file, resolving `base:` inheritance and string presets relative to its folder."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' inheritance loops back to itself")
    data = _read_yaml(path)
    for key, value in list(data.items()):
        if isinstance(value, str) and value.endswith((".yaml", ".yml")) and key != "base":
            data[key] = _read_yaml_tree(_resolve_relative(value, path.parent), seen + (path,))
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a path to another YAML file")
    merged = _read_yaml_tree(_resolve_relative(base, path.parent), seen + (path,))
    _deep_update(merged, data)
    return merged


def _resolve_relative(value: str, base_dir: Path) -> Path:
    """`value` relative to `base_dir` when it exists there, else relative to the shipped configs' parent
    (`configs/model/mini.yaml` resolves in a checkout and in an installed wheel alike)."""
    candidate = Path(value)
    if candidate.is_absolute():
        return candidate
    local = base_dir / candidate
    if local.exists():
        return local
    root = CONFIG_ROOT.parent / candidate
    return root if root.exists() else local


def _deep_update(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None or isinstance(child, str):
            # A string section (a preset name) stays: the override lands beside it and is merged later.
            node[part] = {"_preset": child} if isinstance(child, str) else {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = node[part]
    last = parts[-1]
    if isinstance(node.get(last), dict) and isinstance(value, str):
        # `model=mini` names the whole section: the preset replaces what the file (or an earlier override)
        # set there, as its place on the command line says; fields after it (model.x=...) land on it
        node[last] = {"_preset": value}
    else:
        node[last] = value


def _load_preset(section: str, name: str, base_dir: Path, dotted: str) -> dict[str, Any]:
    if name.endswith((".yaml", ".yml")):
        path = _resolve_relative(name, base_dir)
    else:
        path = CONFIG_ROOT / section / f"{name}.yaml"
        if not path.is_file():
            options = sorted(p.stem for p in (CONFIG_ROOT / section).glob("*.yaml"))
            hint = f"; presets: {', '.join(options)}" if options else ""
            raise ConfigError(f"{dotted}: no preset named {name!r} in {CONFIG_ROOT / section}{hint}")
    return _read_yaml_tree(path)


def _unknown_key_message(dotted: str, prefix: str, valid: list[str]) -> str:
    name = dotted[len(prefix) :]
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?"
    else:
        hint = "valid keys: " + ", ".join(f"{prefix}{v}" for v in valid)
    return f"unknown config key '{dotted}'; {hint}"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_type_name(args[0])}"
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a section (mapping) or a preset name"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, dotted: str, base_dir: Path, section: str) -> Any:
    """Check `value` against the annotation `tp` and convert where it is lossless (int -> float)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _coerce_section(value, tp, dotted, base_dir, section)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, dotted, base_dir, section)
            except ConfigError:
                continue
        raise _mismatch(value, tp, dotted)
    if origin is Literal:
        return _coerce_literal(value, tp, dotted)
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, dotted, base_dir, section)
    return _coerce_scalar(value, tp, dotted)


def _mismatch(value: Any, tp: Any, dotted: str) -> ConfigError:
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return ConfigError(f"{dotted}: expected {_type_name(tp)}, got {type(value).__name__} {shown}")


def _coerce_section(value: Any, tp: Any, dotted: str, base_dir: Path, section: str) -> Any:
    """A section: a mapping, a preset name, or a preset with fields beside it (`_preset`)."""
    if isinstance(value, str):
        value = {"_preset": value}
    if isinstance(value, dict) and "_preset" in value:
        preset = value["_preset"]
        rest = {k: v for k, v in value.items() if k != "_preset"}
        value = _load_preset(section, preset, base_dir, dotted) if preset else {}
        _deep_update(value, rest)
    if not isinstance(value, dict):
        raise _mismatch(value, tp, dotted)
    return build(tp, value, base_dir=base_dir, prefix=f"{dotted}.")


def _coerce_literal(value: Any, tp: Any, dotted: str) -> Any:
    if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans; take the word back
        words = [
            w for w in (("no", "off", "false") if not value else ("yes", "on", "true")) if w in get_args(tp)
        ]
        if words:
            return words[0]
    if value in get_args(tp):
        return value
    raise ConfigError(f"{dotted}: expected one of {_type_name(tp)}, got {value!r}")


def _coerce_sequence(value: Any, tp: Any, dotted: str, base_dir: Path, section: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if not isinstance(value, (list, tuple)):
        if origin is list and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single item where a list is expected
        else:
            raise _mismatch(value, tp, dotted)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _mismatch(value, tp, dotted)
        return tuple(
            _coerce(v, a, f"{dotted}[{i}]", base_dir, section) for i, (v, a) in enumerate(zip(value, args))
        )
    item = args[0] if args else Any
    items = [_coerce(v, item, f"{dotted}[{i}]", base_dir, section) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_scalar(value: Any, tp: Any, dotted: str) -> Any:
    """bool, int, float (finite; YAML's '1e-4' string read as a number), str, dict, or any other type."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if tp is Any:
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and number and isinstance(value, int):
        return value
    if tp is float:
        parsed = float(value) if number else _float_or_none(value)
        if parsed is None:
            raise _mismatch(value, tp, dotted)
        if not math.isfinite(parsed):  # .inf, .nan: no setting of this project means either
            raise ConfigError(f"{dotted}: expected a finite number, got {value!r}")
        return parsed
    if tp is str and (isinstance(value, str) or number):
        return value if isinstance(value, str) else str(value)
    if (get_origin(tp) is dict or tp is dict) and isinstance(value, dict):
        return value
    if tp not in (bool, int, float, str, dict) and isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _mismatch(value, tp, dotted)


def _float_or_none(value: Any) -> float | None:
    if not isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        return None
    try:
        return float(value)
    except ValueError:
        return None
