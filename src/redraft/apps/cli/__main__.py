"""`python -m redraft.apps.cli ...` is the `redraft` command."""

from redraft.apps.cli import main

main(prog_name="redraft")
