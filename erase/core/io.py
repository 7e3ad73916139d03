"""Files: outputs written atomically (whole under their final name or not at all, no temporary file
left behind when a write fails, e.g. on a full disk) and checked before any work starts; safetensors
inputs read with one clear error when they are missing, truncated or not safetensors at all."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from erase.errors import UserError


@contextmanager
def atomic_file(path):
    """Yield a temporary sibling path; on success it replaces `path`, on any failure it is removed, and a
    failed write (a full disk) is an OSError that names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        _raise_write_error(error, path)


@contextmanager
def atomic_directory(path):
    """Yield a temporary sibling folder; on success it replaces `path` (an old one is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_write_error(error, path)


def _raise_write_error(error: BaseException, path: Path):
    """Re-raise a failed write of `path`: an I/O failure (an OSError that names no file or the temporary
    one, or safetensors' own error) as an OSError naming `path`; anything else as it is."""
    if isinstance(error, SafetensorError):
        reason = str(error).rpartition("I/O error: ")[2] or str(error)
        raise OSError(errno.EIO, reason, str(path)) from error
    if isinstance(error, OSError) and error.filename in (None, str(path.with_name(path.name + ".tmp"))):
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    raise error


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def atomic_write_json(obj, path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"  # fails before any write
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def atomic_write_text(text: str, path) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def read_tensors(path, what: str = "weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a missing, truncated or foreign file is a UserError
    naming it and `what` it should hold."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such {what} file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except (SafetensorError, ValueError, RuntimeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise UserError(f"{path} is not a readable safetensors file of {what}: {reason}") from None


def check_output_folder(path, name: str) -> Path:
    """A folder the run may write: an existing folder, or one that can be made (not under a file, not in a
    read-only place). Checked before any work, so a bad output path costs nothing; `name` is the recipe
    key or option the path came from. Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{name} {path} exists and is not a folder")
    _check_writable(path, name)
    return path


def check_output_file(path, name: str) -> Path:
    """A file the command may write (its folder exists or can be made); not a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{name} {path} is a folder; give a file name")
    _check_writable(path.parent, f"{name} {path}: its folder")
    return path


def _check_writable(folder: Path, name: str) -> None:
    """Probe the folder, or its nearest existing ancestor, with a temporary file."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{name} {folder} cannot be created: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".erase-probe-")
    except OSError as error:
        raise UserError(f"{name} {folder} cannot be written: {existing}: {error.strerror}") from None
    os.close(fd)
    os.unlink(probe)


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
