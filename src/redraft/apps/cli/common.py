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
@click.option("--dtype", "dtype_name", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="UNet and text encoders' dtype (default: fp16 on CUDA, fp32 on the CPU); the VAE stays fp32.")
@click.option("--describer", default=None, type=click.Path(file_okay=False),
              help="describer folder (default: the model's own, <model>/describer).")
@click.option("--offload", type=click.Choice(["model", "sequential"]), default=None,
              help="diffusers' CPU offloading: 'model' keeps one component at a time on the device, 'sequential' "
                   "one layer at a time (least memory, slowest). Default: none.")
@click.pass_context
def main(ctx, model, device, dtype_name, describer, offload):
    """redraft: describe, invert and edit images with Stable Diffusion."""
    ctx.obj = {"model": model, "device": device, "describer": describer, "dtype": dtype_name, "offload": offload}


def editor_from(ctx):
    from ... import load

    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(ctx.obj.get("dtype") or "")
    return load(ctx.obj["model"], device=ctx.obj["device"], dtype=dtype, describer=ctx.obj.get("describer"),
                offload=ctx.obj.get("offload"))


def finite_guidance(ctx, param, value):
    """--guidance: a finite number of at least 0 (None: the model's own), checked before any work."""
    from ...checks import finite

    if value is None:
        return None
    try:
        return finite("--guidance", value, 0, fix="leave it out for the model's own (7.5 for SD, 4 for the built-in model)")
    except InputError as e:
        raise click.BadParameter(str(e).removeprefix("--guidance is "), ctx, param) from None


GUIDANCE = dict(type=float, default=None, callback=finite_guidance,
                help="classifier-free guidance scale, 0 or more (default: the model's; 7.5 for SD).")
STEPS = dict(type=click.IntRange(1, 1000), default=50, show_default=True, help="sampling steps (1 to 1000).")

METHOD_SETTING = dict(multiple=True, metavar="[METHOD:]KEY=VALUE",
                      help="a setting of an inversion method (repeatable), e.g. edict:mix=0.9 or rounds=10 (to every "
                           "chosen method that has it); the keys: redraft.inversions.methods.SETTINGS.")


def method_settings(pairs, methods) -> dict:
    """--method-setting texts as {method: settings}, checked (an error names the valid keys) before any work."""
    from ...inversions.methods import parse_settings

    return parse_settings(list(pairs), list(dict.fromkeys(methods)))


def method_setting_of(pairs, method: str) -> dict | None:
    """--method-setting texts of a command that runs one inversion `method`: its settings (None: none
    given), checked before any work (an unknown key names the keys `method` takes)."""
    return method_settings(pairs, [method]).get(method)
