"""The command line's shared parts: the `redraft` group, its global options, and turning user mistakes
into one line and exit status 2."""

from __future__ import annotations

import functools
import sys

import click

from ...errors import InputError

from ...inversions import METHODS

METHOD = click.Choice(list(METHODS))


def friendly(fn):
    """Turn a user mistake into one line on stderr and exit status 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.option("--model", default=None, help="diffusers folder or hub id (default: the built-in shapes model).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when present).")
@click.option("--describer", default=None, type=click.Path(file_okay=False),
              help="describer folder (default: the model's own, <model>/describer).")
@click.pass_context
def main(ctx, model, device, describer):
    """redraft: describe, invert and edit images with Stable Diffusion."""
    ctx.obj = {"model": model, "device": device, "describer": describer}


def editor_from(ctx):
    from ... import load

    return load(ctx.obj["model"], device=ctx.obj["device"], describer=ctx.obj.get("describer"))
