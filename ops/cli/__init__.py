"""The ``lukhas`` command.

Exit codes: 0 success; 1 an error (one line on stderr: ``lukhas: error: <reason>``); 2 a usage
error (one line: ``lukhas: usage error: <reason>``); 3 not found (the context, or the WAL
position); and for a write waited on (``--wait``), ``lukhas outcome`` and a dry run: 4 conflict,
5 rejected, 6 dead-lettered.

| module | job |
|---|---|
| ``app`` | the command group: logging, ``--version``, the commands below |
| ``cluster`` | ``up``, ``down``, ``status``, ``demo``: the local cluster |
| ``worker`` | ``worker``: one processor in the foreground |
| ``restore`` | ``restore``: partition stores rebuilt offline |
| ``writes`` | ``put``, ``patch``, ``touch``, ``delete``, their outcomes and exit codes |
| ``reads`` | ``get``, ``outcome``, ``watch`` |
| ``checkpoint`` | ``checkpoint`` |
| ``transactions`` | ``transactions list/describe/open/find-hanging/abort`` |
| ``options`` | the options several commands share |
| ``params`` | bounded parameter types: numbers, positions, JSON arguments |
| ``client`` | a client config from the command's sources, and one client call |
| ``errors`` | exit codes, one-line errors and usage errors |
| ``output`` | what several commands print |
"""

from lukhas_context.ops.cli.app import cli, main

__all__ = ["cli", "main"]
