"""Ships the repository's pipelines/, prompts/ and assets/ inside the wheel as erase/_data/.

They stay at the top of the repository (where the README and recipes name them); an installed erase
finds them through erase.recipes.DATA_ROOT. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA_FOLDERS = ("pipelines", "prompts", "assets")


class BuildWithData(build_py):
    """build_py plus a copy of each data folder, sub-folders included, into erase/_data/."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads them from the checkout
            return
        for name in DATA_FOLDERS:
            target = Path(self.build_lib) / "erase" / "_data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(HERE / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithData})
