"""Build hook: the package `domaintl` is the repository root (pyproject.toml), but only its library
files, __init__.py and transforms.py (plus kit/), go into a wheel; the stage scripts beside them
(prepare_data.py, predict.py, ...) are run from a checkout and import the top-level `kit`."""
from setuptools import setup
from setuptools.command.build_py import build_py

LIBRARY = {"__init__", "transforms"}


class LibraryOnly(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if package != "domaintl" or m[1] in LIBRARY]


setup(cmdclass={"build_py": LibraryOnly})
