"""What every workflow's typed settings share, written once: the SFR-on config builder, the output-folder
check and the sections several workflows have. Each workflow declares its recipe as dataclasses
(erase.recipes.key and read_settings), so every key is known, typed and range-checked before any work;
the loader builder is erase.data.loader.loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from erase.core.io import check_output_folder
from erase.core.sfron import SFRonConfig
from erase.recipes import key, read_settings


def sfron_config(table: dict | None, where: str = "sfron", defaults: dict | None = None) -> SFRonConfig:
    """A recipe table ([sfron], [train], [sfron] + [per_method.NAME]) over `defaults` as a validated
    SFRonConfig; a bad key or value is refused naming it (`sfron.lr`)."""
    return read_settings(SFRonConfig, table, where, base=SFRonConfig(**(defaults or {})))


@dataclass
class Output:
    dir: str = key("")  # the workflow's default run folder when empty

    def folder(self, default: str) -> Path:
        """The run folder: an existing folder or one that can be made; checked, not created."""
        return check_output_folder(self.dir or default, "output.dir")


@dataclass
class Method:
    """[method] of the diffusion class workflows (class DDPM, DiT)."""

    name: str = key("sfron")
    negative_guidance: float = key(1.0, above=0)  # ESD's η
