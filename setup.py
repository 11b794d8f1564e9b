"""Maps the fixed top-level folders under the one import namespace ``lukhas_context``.

The package list is derived from the folders, never typed by hand: a sub-package missing
from a hand-kept list still imports in an editable install but is absent from the wheel.
"""

from setuptools import find_packages, setup

ROOTS = {
    "lukhas_context.schemas": "schemas",
    "lukhas_context.streams": "streams",
    "lukhas_context.state": "state",
    "lukhas_context.processors": "processors",
    "lukhas_context.ops": "ops",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in ROOTS.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
