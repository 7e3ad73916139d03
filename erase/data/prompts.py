"""Prompt files: the I2P format, simple `prompt[,seed]` CSVs, and plain one-prompt-per-line text.

Every row gets a seed, so every image it produces can be regenerated exactly:
  * I2P (`prompt`, `evaluation_seed`, `evaluation_guidance`, `case_number`, `categories`): its own seed,
    guidance and case number;
  * a CSV with a `prompt` column and optionally `seed` (or `evaluation_seed`), `guidance`, `case_number`;
  * a `.txt` file, one prompt per line: the seed is the line's index.
A row without a case number is named by its index in the file.
Any CSV may also have a `label` column (a class id or name, e.g. "7" or "golden retriever"): what the
row's images should show, for judging them with a classifier (`erase evaluate classifier`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from erase.errors import UserError

SEED_COLUMNS = ("evaluation_seed", "seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance")


@dataclass(frozen=True)
class PromptRow:
    """One prompt with everything needed to reproduce its images."""

    index: int
    prompt: str
    seed: int
    guidance: float | None = None
    case_number: str | None = None
    categories: tuple[str, ...] = ()
    label: str | None = None

    @property
    def name(self) -> str:
        """File-name stem of the row's images: its case number, else its index in the file."""
        return self.case_number if self.case_number is not None else str(self.index)


def read_prompts(path, category: str | None = None, limit: int | None = None) -> list[PromptRow]:
    """Rows of a prompt file, filtered by category (I2P `categories`) and cut to `limit`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such prompt file: {path}")
    rows = _read_text(path) if path.suffix.lower() == ".txt" else _read_csv(path)
    if not rows:
        raise UserError(f"{path} holds no prompts")
    if category is not None:
        wanted = category.strip().lower()
        rows = [row for row in rows if wanted in row.categories]
        if not rows:
            raise UserError(f"{path} has no prompts in category {category!r}")
    if limit is not None:
        rows = rows[:limit]
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise UserError(f"{path} repeats a case_number; image names would collide")
    return rows


def expand_prompts(rows: list[PromptRow], count: int) -> list[PromptRow]:
    """`count` rows cycling through `rows`; round r adds r·1,000,003 to the seed so images differ."""
    if not rows:
        raise UserError("no prompts to generate from")
    out = []
    for i in range(count):
        row = rows[i % len(rows)]
        round_ = i // len(rows)
        out.append(PromptRow(index=i, prompt=row.prompt, seed=row.seed + round_ * 1_000_003, guidance=row.guidance,
                             label=row.label))
    return out


def prompt_rows(prompts: list[str], seed: int = 0) -> list[PromptRow]:
    """Rows for prompts given on the command line: seeds seed, seed+1, ..."""
    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise UserError("a prompt is empty")
    return [PromptRow(index=i, prompt=p, seed=seed + i) for i, p in enumerate(prompts)]


def _read_text(path: Path) -> list[PromptRow]:
    lines = [line.strip() for line in _read(path).splitlines()]
    return [PromptRow(index=i, prompt=line, seed=i) for i, line in enumerate(line for line in lines if line)]


def _read_csv(path: Path) -> list[PromptRow]:
    reader = csv.DictReader(io.StringIO(_read(path), newline=""), strict=True)
    try:  # strict: a truncated file (an unclosed quote) or a NUL byte is an error, not a silently odd row
        fieldnames, records = reader.fieldnames, list(reader)
    except csv.Error as error:
        raise UserError(f"{path} is not a valid CSV file: {error}") from None
    columns = {(name or "").strip().lower(): name for name in fieldnames or []}
    if "prompt" not in columns:
        raise UserError(f"{path} has no 'prompt' column (columns: {', '.join(columns) or 'none'})")
    seed_column = next((columns[c] for c in SEED_COLUMNS if c in columns), None)
    guidance_column = next((columns[c] for c in GUIDANCE_COLUMNS if c in columns), None)
    case_column = columns.get("case_number")
    category_column = columns.get("categories")
    label_column = columns.get("label")
    rows = []
    for line, record in enumerate(records, start=2):
        prompt = (record.get(columns["prompt"]) or "").strip()
        if not prompt:
            continue
        index = len(rows)
        seed = _number(record, seed_column, int, path, line, default=index)
        guidance = _number(record, guidance_column, float, path, line, default=None)
        case = (record.get(case_column) or "").strip() if case_column else ""
        categories = (record.get(category_column) or "") if category_column else ""
        label = (record.get(label_column) or "").strip() if label_column else ""
        rows.append(
            PromptRow(
                index=index, prompt=prompt, seed=seed, guidance=guidance, case_number=case or None,
                categories=tuple(c.strip().lower() for c in categories.split(",") if c.strip()),
                label=label or None,
            )
        )
    return rows


def _number(record: dict, column: str | None, kind, path: Path, line: int, default):
    text = (record.get(column) or "").strip() if column else ""
    if not text:
        return default
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise UserError(f"{path}, line {line}: {column} is not a number: {text!r}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 text file") from None
