"""Maps the fixed top-level folders under the one import namespace ``lukhas_context``, and
builds the optional native parts: the fold's hot loop and the change stream's decoder.

The package list is derived from the folders, never typed by hand: a sub-package missing
from a hand-kept list still imports in an editable install but is absent from the wheel.
The extension is ``optional``: without a C compiler the install still succeeds and the fold
runs its pure-Python loop (same results, slower).
"""

from setuptools import Extension, find_packages, setup

ROOTS = {
    "lukhas_context": "lukhas_context",  # only __init__.py: the public names and __version__
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


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    native = [
        Extension(name, [source], optional=True, extra_compile_args=["-O2"])
        for name, source in (
            ("lukhas_context.processors._fastfold", "processors/_fastfold.pyx"),
            ("lukhas_context.schemas._fastchange", "schemas/_fastchange.pyx"),
            ("lukhas_context.schemas._fastjson", "schemas/_fastjson.pyx"),
            ("lukhas_context.streams._fastrecords", "streams/_fastrecords.pyx"),
        )
    ]
    return list(cythonize(native, language_level=3, quiet=True))


PACKAGES, PACKAGE_DIR = _packages()

setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=_extensions())
