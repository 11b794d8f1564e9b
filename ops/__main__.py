"""``python -m lukhas_context.ops``: the ``lukhas`` command."""

from lukhas_context.ops.entry import main

main()
