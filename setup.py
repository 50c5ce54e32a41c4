"""Ships the repository's ``configs/`` (experiment configs and edit presets) inside the wheel as ``mkejax/configs``.

The project metadata is in ``pyproject.toml``; this file only extends ``build_py``. A source checkout or an
editable install reads ``configs/`` in place (see :func:`mkejax.config.configs_dir`).
"""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        source = pathlib.Path(__file__).resolve().parent / "configs"
        target = pathlib.Path(self.build_lib) / "mkejax" / "configs"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))


setup(cmdclass={"build_py": BuildPyWithConfigs})
