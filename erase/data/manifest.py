"""`DIR/manifest.csv`: what each image of a generated folder was made from, and what it should show.

`erase generate` writes one row per image (file name relative to DIR, prompt, seed, guidance, label,
case number) so the folder can be judged later without the prompt file: `erase evaluate classifier
DIR` reads the labels from it. On resume it is rewritten with the rows of every image in the folder.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from erase.data.prompts import PromptRow, read_prompts
from erase.errors import UserError

MANIFEST = "manifest.csv"
COLUMNS = ("image", "prompt", "seed", "guidance", "label", "case_number")
IDENTITY = ("prompt", "seed", "guidance", "label")  # an image listed with other values is another image


def manifest_entries(rows: list[PromptRow], samples_per_prompt: int, guidance_of) -> list[dict[str, str]]:
    """One entry per image `erase generate` makes from `rows`; guidance_of(row) is its guidance scale."""
    from erase.families.sd import image_name

    return [
        {"image": image_name(row, k), "prompt": row.prompt, "seed": str(row.seed), "guidance": str(guidance_of(row)),
         "label": row.label or "", "case_number": row.case_number or ""}
        for row in rows for k in range(samples_per_prompt)
    ]


def check_manifest(folder, entries: list[dict[str, str]]) -> None:
    """Refuse to resume into a folder whose images of the same names came from other prompts, seeds or labels."""
    folder = Path(folder)
    before = read_manifest(folder)
    for entry in entries:
        old = before.get(entry["image"])
        if old is not None and (folder / entry["image"]).exists():
            changed = [key for key in IDENTITY if old.get(key, "") != entry[key]]
            if changed:
                raise UserError(f"{folder} already holds {entry['image']} made with another {', '.join(changed)}; "
                                f"use another --out")


def write_manifest(folder, entries: list[dict[str, str]]) -> Path:
    """Merge `entries` into the folder's manifest (new values win), keep only images that exist, write atomically."""
    from erase.core.io import atomic_write_text

    folder = Path(folder)
    merged = read_manifest(folder) | {entry["image"]: entry for entry in entries}
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(entry for name, entry in merged.items() if (folder / name).is_file())
    atomic_write_text(text.getvalue(), folder / MANIFEST)
    return folder / MANIFEST


def read_manifest(folder) -> dict[str, dict[str, str]]:
    """image name -> its row; {} when the folder has no manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    if "image" not in (reader.fieldnames or []):
        raise UserError(f"{path} has no 'image' column; it is not a manifest written by erase generate")
    return {record["image"]: {key: (value or "") for key, value in record.items() if key} for record in reader}


def image_labels(folder, files: list[Path], prompts=None) -> list[str] | None:
    """The label of each image file: from a prompt CSV's `label` column (matched by the `{name}_{k}`
    file name) when `prompts` is given, else from the folder's manifest. None when the images carry no
    labels (no prompt file and no labelled manifest); a UserError when some image has none."""
    folder = Path(folder)
    if prompts is not None:
        rows = read_prompts(prompts)
        by_name = {row.name: row.label for row in rows}
        if not any(by_name.values()):
            raise UserError(f"{prompts} has no 'label' column (or no row has a label); add one to judge images by label")
        source, hint = str(prompts), " (images are named {case_number or row index}_{k}.png)"
        labels = [by_name.get(_row_name(path)) for path in files]
    else:
        manifest = read_manifest(folder)
        if not any(entry.get("label") for entry in manifest.values()):
            return None
        source, hint = str(folder / MANIFEST), " (an interrupted erase generate? run it again to finish)"
        labels = [manifest.get(path.relative_to(folder).as_posix(), {}).get("label") or None for path in files]
    missing = [path.relative_to(folder).as_posix() for path, label in zip(files, labels) if label is None]
    if missing:
        raise UserError(f"{len(missing)} image(s) have no label in {source}, e.g. {missing[0]}{hint}")
    return labels


def _row_name(path: Path) -> str | None:
    """The prompt row an image `{name}_{k}.png` came from."""
    name, _, k = path.stem.rpartition("_")
    return name if name and k.isdigit() else None
