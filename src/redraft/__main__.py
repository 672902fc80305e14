"""`python -m redraft ...` is the `redraft` command (e.g. under `accelerate launch -m redraft`)."""

from .apps.cli import main

main(prog_name="redraft")
