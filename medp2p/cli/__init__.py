"""The ``medp2p`` command line: each command parses its arguments and calls one library function.

Heavy modules (torch, MONAI, nibabel...) are imported inside the commands, so ``medp2p --help``
stays fast. Exit codes: 0 success, 1 the command ran and found problems (bad data, a failed
case), 2 usage error (bad option, unrecognised data layout, refused overwrite). Every error a
user can cause is one line naming the file (or case and key) and the problem; a traceback only
with ``medp2p --debug`` or ``MEDP2P_DEBUG=1``.

The commands live in one module each (``data_commands``: validate, phantom, tasks;
``train_command``; ``predict_commands``: predict, evaluate; ``demo_command``), registered on
:data:`app` by importing them here.
"""

from __future__ import annotations

from medp2p.cli import data_commands, demo_command, predict_commands, train_command
from medp2p.cli.app import app

__all__ = ["app", "data_commands", "demo_command", "main", "predict_commands", "train_command"]


def main() -> None:
    """Console-script entry point."""
    app()
