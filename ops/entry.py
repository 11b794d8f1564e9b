"""The ``lukhas`` executable's entry point. It is installed with every install, the base
one (the client library) too; without the ``cli`` extra it says what to install instead of
failing with a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        import click  # noqa: F401
        import tqdm  # noqa: F401
    except ModuleNotFoundError as exc:
        sys.stderr.write(
            f"lukhas: error: the lukhas command needs the {exc.name} package: pip install "
            "'lukhas-context[cli]' (or [server] to run workers too)\n"
        )
        sys.exit(1)
    from lukhas_context.ops.cli import main as cli_main

    cli_main()
