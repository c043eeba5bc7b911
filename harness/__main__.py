"""``python -m harness``: the kvconform command line (see ``harness.cli``)."""

from harness.cli import main

raise SystemExit(main(prog="python -m harness"))
