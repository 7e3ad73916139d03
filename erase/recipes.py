"""Recipes: TOML files in pipelines/ that fully describe a run, with `--set key=value` overrides."""

from __future__ import annotations

import copy
import difflib
import math
import tomllib
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass, replace
from pathlib import Path

from erase.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# pipelines/, prompts/ and assets/ sit next to erase/ in a checkout (or an editable install); an installed
# wheel carries them in erase/_data/ (setup.py copies them there).
DATA_ROOT = REPO_ROOT if (REPO_ROOT / "pipelines").is_dir() else PACKAGE_DIR / "_data"
PIPELINES_DIR = DATA_ROOT / "pipelines"
PROMPTS_DIR = DATA_ROOT / "prompts"
ASSETS_DIR = DATA_ROOT / "assets"


def load_recipe(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such recipe: {path}")
    try:
        return tomllib.loads(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 text file (a recipe is TOML)") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML: {error}") from None


def parse_override(text: str) -> tuple[list[str], object]:
    """'sfron.lr=1e-3' -> (['sfron', 'lr'], 0.001); values are TOML, bare words are strings."""
    if "=" not in text:
        raise UserError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise UserError(f"--set has an empty key: {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return keys, value


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    """A copy of `recipe` with each dotted key set; tables are created as needed."""
    result = copy.deepcopy(recipe)
    for text in overrides or []:
        keys, value = parse_override(text)
        table = result
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise UserError(f"--set {text!r}: {key} is not a table")
        table[keys[-1]] = value
    return result


def apply_options(cls, recipe: dict, options: dict, given: tuple[str, ...] = ()) -> dict:
    """A copy of `recipe` with Python keyword options set, for the recipe dataclass `cls`: a key by its
    own name where one section alone has it (`lr=3e-4` is sfron.lr), a section as a dict
    (`data={"seed": 1}`) or dotted (`**{"data.seed": 1}`). The values are checked with the recipe
    (read_settings); a name no section has, or several have, is a UserError. `given`: the sections the
    caller fills itself (the model: the pipeline it was handed)."""
    hints = typing.get_type_hints(cls)
    sections = {f.name: [g.metadata.get("name") or g.name for g in fields(hints[f.name])]
                for f in fields(cls) if is_dataclass(hints[f.name])}
    result = copy.deepcopy(recipe)
    for name, value in options.items():
        keys = name.split(".")
        if len(keys) == 1 and name in sections:
            if not isinstance(value, dict):
                raise UserError(f"option {name} is a section: give a dict of its keys, e.g. {name}={{...}}")
            pairs = [([name, k], v) for k, v in value.items()]
        elif len(keys) == 1:
            owners = [section for section, names in sections.items() if name in names and section not in given]
            if len(owners) > 1:
                choices = ", ".join(f"{section}.{name}" for section in owners)
                raise UserError(f"option {name} is a key of several sections ({choices}): say which, "
                                f"e.g. {owners[0]}={{{name!r}: ...}}")
            if not owners:
                known = sorted({k for section, names in sections.items() if section not in given for k in names})
                raise UserError(unknown_key(name, known).replace("recipe key", "option"))
            pairs = [([owners[0], name], value)]
        else:
            pairs = [(keys, value)]
        for path, item in pairs:
            if path[0] in given:
                raise UserError(f"option {'.'.join(path)}: the {path[0]} is given as an argument, not an option")
            table = result
            for part in path[:-1]:
                table = table.setdefault(part, {})
                if not isinstance(table, dict):
                    raise UserError(f"option {name}: {part} is not a section")
            table[path[-1]] = item
    return result


# --- typed settings: each workflow declares its recipe as dataclasses, one per section -----------------


def key(default=None, *, factory=MISSING, low=None, high=None, above=None, below=None, choices=None,
        name: str | None = None, required: bool = False):
    """A recipe key with its default and the values it takes: low ≤ v ≤ high, above < v < below, or one
    of `choices`; `name` when the recipe's key is not a Python name (`class`); `required` when a recipe
    must give it."""
    metadata = {"low": low, "high": high, "above": above, "below": below, "choices": choices, "name": name,
                "required": required}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def read_settings(cls, table, where: str = "", base=None):
    """An instance of the dataclass `cls` (over the instance `base`, if given) from a recipe table; a
    field whose type is a dataclass reads its own table (a section), and a `validate()` it has is called.
    Every key is checked before any work: an unknown or misspelled key (the closest known one is
    suggested), a missing required key, a wrong type, a number that is not finite or out of range is a
    UserError naming the recipe key, e.g. `data.num_images`."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise UserError(f"{where or 'the recipe'} must be a table of keys, got {table!r}")
    known = {f.metadata.get("name") or f.name: f for f in fields(cls) if f.init}
    for name in table:
        if name not in known:
            raise UserError(unknown_key(f"{where}.{name}" if where else name, list(known), where))
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in known.items():
        dotted = f"{where}.{name}" if where else name
        hint = hints[f.name]
        if is_dataclass(hint):
            default = f.default_factory() if f.default_factory is not MISSING else None
            values[f.name] = read_settings(hint, table.get(name), dotted, base=default)
        elif name in table:
            values[f.name] = _checked(_typed(table[name], hint, dotted), f.metadata, dotted)
        elif f.metadata.get("required"):
            raise UserError(f"the recipe has no {dotted}")
    settings = replace(base, **values) if base is not None else cls(**values)
    if hasattr(settings, "validate"):
        try:
            settings.validate()
        except ValueError as error:
            raise UserError(f"{where}.{error}" if where else str(error)) from None
    return settings


def unknown_key(dotted: str, known: list[str], where: str = "") -> str:
    """'unknown recipe key data.num_image (did you mean data.num_images?)'."""
    name = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    prefix = f"{where}." if where else ""
    hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(prefix + k for k in known)})"
    return f"unknown recipe key {dotted}{hint}"


def _typed(value, hint, name: str):
    """`value` as the annotated type, or a UserError that says what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _typed(value, arg, name)
            except UserError:
                pass
        kinds = " or ".join(_describe(a) for a in args if a is not type(None))
        raise UserError(f"{name} must be {kinds}, got {value!r}")
    if origin is list:
        items = value if isinstance(value, list) else [value]  # one value stands for a list of one
        return [_typed(item, args[0], f"{name}[{i}]") for i, item in enumerate(items)] if args else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name} must be a table, got {value!r}")
        return value
    if hint is bool and not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{name} must be a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise UserError(f"{name} must be a string, got {value!r}")
    return value


def _describe(hint) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return names.get(hint, "a list" if typing.get_origin(hint) is list else str(hint))


def _checked(value, rules, name: str):
    """Range and choice rules of a key (numbers, or each element of a list)."""
    for item in value if isinstance(value, list) else [value]:
        if rules.get("choices") is not None and item not in rules["choices"]:
            raise UserError(f"{name} must be one of {', '.join(map(str, rules['choices']))}, got {item!r}")
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        for rule, ok, text in (("low", lambda v, b: v >= b, "at least"), ("high", lambda v, b: v <= b, "at most"),
                               ("above", lambda v, b: v > b, "above"), ("below", lambda v, b: v < b, "below")):
            bound = rules.get(rule)
            if bound is not None and not ok(item, bound):
                raise UserError(f"{name} must be {text} {bound:g}, got {item!r}")
    return value


def resolve_path(value) -> Path:
    """A path from a recipe or the command line: as given (absolute or from the working directory) if it
    exists, else the file shipped with erase (`assets/digits-ddpm` from any directory, installed or not);
    as given when neither exists, so that the error names what the user wrote."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path
    shipped = DATA_ROOT / path
    return shipped if shipped.exists() else path


def to_toml(data: dict) -> str:
    """Write the resolved config back as TOML (tables of scalars, lists and nested tables)."""
    lines: list[str] = []
    _write_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _write_table(table: dict, prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if prefix and scalars:
        lines.append(f"\n[{'.'.join(prefix)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        _write_table(value, prefix + [key], lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
