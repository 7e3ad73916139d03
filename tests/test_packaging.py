"""The wheel carries pipelines/, prompts/ and assets/, and an installed erase finds them from any directory.

The wheel is built the way `python -m build` does it (a source distribution, then a wheel from that), so
MANIFEST.in and setup.py are both checked; a copy of the sources keeps build output out of the checkout.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from erase.recipes import DATA_ROOT, REPO_ROOT, resolve_path

DATA_FOLDERS = ("pipelines", "prompts", "assets")
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "erase", *DATA_FOLDERS)
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def shipped_files() -> set[str]:
    """Every file under the data folders of the checkout, as the wheel should name it."""
    return {
        f"erase/_data/{path.relative_to(REPO_ROOT).as_posix()}"
        for folder in DATA_FOLDERS for path in (REPO_ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=SKIP)
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    build_sdist = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    sdist = subprocess.run([sys.executable, "-c", build_sdist, str(tmp / "dist")], cwd=source, env=env,
                           capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    with tarfile.open(tmp / "dist" / sdist) as archive:
        archive.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(unpacked), "-w", str(tmp / "wheels")], env=env, capture_output=True, check=True)
    (built,) = (tmp / "wheels").glob("erase-*.whl")
    return built


def test_wheel_holds_recipes_prompts_and_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not shipped_files() - names, "the wheel misses data files"
    assert "erase/cli.py" in names
    for folder, suffix in (("pipelines", ".toml"), ("prompts", ".csv"), ("assets", ".safetensors")):
        assert any(n.startswith(f"erase/_data/{folder}/") and n.endswith(suffix) for n in names), folder
    assert not [name for name in names if "__pycache__" in name]


def test_unpacked_wheel_resolves_recipe_paths_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    show = ("import erase.recipes as r; "
            "print(r.DATA_ROOT); print(r.resolve_path('assets')); print(r.PIPELINES_DIR.is_dir())")
    out = subprocess.run([sys.executable, "-c", show], cwd=empty, env={**os.environ, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(site / "erase" / "_data"), str(site / "erase" / "_data" / "assets"), "True"]


def test_resolve_path_prefers_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("pipelines") == DATA_ROOT / "pipelines"  # shipped
    (tmp_path / "pipelines").mkdir()
    assert resolve_path("pipelines") == Path("pipelines")  # the user's own folder wins
    assert resolve_path("assets/nothing-here") == Path("assets/nothing-here")  # the error names what was written
    assert resolve_path(tmp_path) == tmp_path
