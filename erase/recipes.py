"""Recipes: TOML files in pipelines/ that fully describe a run, with `--set key=value` overrides."""

from __future__ import annotations

import copy
import tomllib
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
