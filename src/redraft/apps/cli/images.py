"""`redraft invert`, `reconstruct`, `edit`, `generate` and `attention`: one image at a time."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ...errors import InputError
from .common import GUIDANCE, METHOD, METHOD_SETTING, STEPS, editor_from, friendly, main, method_setting_of
from .controls import control_options, controls_base


@main.command()
@click.argument("image")
@click.option("--prompt", "-p", default=None, help="the text that describes the image (default: its description).")
@click.option("--method", "-m", type=METHOD, default="negative-prompt", show_default=True)
@click.option("--steps", **STEPS)
@click.option("--guidance", **GUIDANCE)
@click.option("--null-init", type=click.Choice(["npi", "null", "source"]), default=None,
              help="null-text: npi (default: every step starts at NPI's null, relative tolerance, 2 updates a "
                   "step on average), null (the paper's Algorithm 1) or source (Algorithm 1 from the prompt's).")
@click.option("--global-null", is_flag=True, help="null-text: one embedding for all steps (ablation).")
@click.option("--keep-aspect", is_flag=True, help="keep the aspect ratio instead of a centre crop.")
@click.option("--method-setting", "settings", **METHOD_SETTING)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="the .safetensors file to write.")
@click.option("--force", is_flag=True, help="replace the output if it exists.")
@click.pass_context
@friendly
def invert(ctx, image, prompt, method, steps, guidance, null_init, global_null, keep_aspect, settings, output, force):
    """Invert IMAGE: save the trajectory that regenerates it."""
    from ...io.files import check_output
    from ...io.image import load_image

    chosen = method_setting_of(settings, method)
    check_output(output, force, image=False)  # any name: `edit` and `reconstruct` recognise the file by content
    load_image(image)  # fail on a bad image before loading the model
    editor = editor_from(ctx)
    inv = editor.invert(image, prompt, method=method, steps=steps, guidance_scale=guidance,
                        null_init=null_init, global_null=global_null, keep_aspect=keep_aspect, settings=chosen)
    inv.save(output, replace=force)  # of two runs writing one new path, exactly one wins
    if prompt is None:
        click.echo(f"described as: {inv.prompt}")
    c = inv.cost
    click.echo(f"wrote {output} ({method}, {steps} steps: {c.seconds:.1f} s, {c.unet_forward} UNet passes"
               + (f" + {c.unet_backward} backward" if c.unet_backward else "") + ")")


@main.command()
@click.argument("inversion", type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="the PNG to write.")
@click.option("--force", is_flag=True, help="replace the output if it exists.")
@click.pass_context
@friendly
def reconstruct(ctx, inversion, output, force):
    """Regenerate the image of a saved INVERSION."""
    from ...eval.metrics import psnr
    from ...io.files import check_output, save_image
    from ...io.inversion_file import Inversion

    check_output(output, force)
    inv = Inversion.load(inversion)
    editor = editor_from(ctx)
    image = editor.reconstruct(inv)
    save_image(image, output, replace=force)
    click.echo(f"wrote {output} (PSNR {psnr(inv.image, image):.2f} dB against the inverted input)")

def edit_outputs(fn):
    """The options of `edit` and `generate` beside the controls: targets and the output."""
    for option in reversed([
        click.option("--target", "-t", "targets", multiple=True, required=True, help="target prompt (repeatable)."),
        click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
                     help="PNG of the (last) edit; a grid is written beside it (NAME.grid.png)."),
        click.option("--force", is_flag=True, help="replace outputs that exist."),
    ]):
        fn = option(fn)
    return fn


def is_saved_inversion(source: str, prompt: str | None, what: str, needs_prompt: bool = True) -> bool:
    """SOURCE is a saved inversion (recognised by its content, whatever its name; a .safetensors that is
    not one is refused by `Inversion.load`), or an image that needs --prompt (unless it can be
    described: `needs_prompt=False`); checked before loading a model."""
    from ...io.image import load_image
    from ...io.inversion_file import is_inversion_file

    if source.endswith(".safetensors") or is_inversion_file(source):
        return True
    load_image(source)
    if needs_prompt and not prompt:
        raise InputError(f"{what} of an image needs its source prompt: give --prompt \"...\".")
    return False


def grid_path_of(output: str) -> Path:
    out = Path(output)
    return out.with_name(out.stem + ".grid.png")


def check_edit_outputs(output: str, force: bool) -> None:
    """The edit's PNG and its grid: image types that do not exist (unless --force), before any work."""
    from ...io.files import check_output

    check_output(output, force)
    check_output(grid_path_of(output), force)


def write_edit_outputs(result, first: list, first_captions: list[str], output: str, force: bool, **metadata) -> None:
    """The last edit at `output` and a grid of `first` pictures, then every branch, beside it; both PNGs
    carry the prompts and controls that made them (`Controls.load` reads them back)."""
    from ...io.draw import grid
    from ...io.files import save_image

    out, grid_path = Path(output), grid_path_of(output)
    meta = result.metadata(**metadata)
    save_image(result[-1], out, metadata=meta, replace=force)
    captions = first_captions + [f"edit: {p}" for p in result.prompts[1:]]
    save_image(grid([*first, *result], captions), grid_path, metadata=meta, replace=force)
    click.echo(f"wrote {out} and {grid_path}")


def mask_options(fn):
    """--mask, --keep-outside and --mask-stop of `edit` and `generate` (`Editor.edit(mask=...)`)."""
    for option in reversed([
        click.option("--mask", default=None, type=click.Path(dir_okay=False),
                     help="PNG: white where the edit may change the image, black what must stay; any size of the "
                          "image's aspect ratio (a mask of the original image's size is cropped as the image is)."),
        click.option("--keep-outside", type=click.Choice(["pixels", "latents"]), default="pixels", show_default=True,
                     help="with --mask: outside it the input's own pixels (pixels), or the latent blend alone (latents)."),
        click.option("--mask-stop", type=click.FloatRange(0, 1), default=None,
                     help="with --mask: fraction of the steps after which the latent blend ends (1: every step; "
                          "default: the model's editing recipe for the kind of edit, else 1)."),
    ]):
        fn = option(fn)
    return fn


def checked_mask(mask: str | None, size: tuple[int, int] | None):
    """The --mask file's values, judged against an image of `size` (width, height) before any model is
    loaded (not an image, empty, all white, another aspect ratio: an InputError); None without --mask."""
    from ...io.mask import load_mask, mask_array

    if mask is None:
        return None
    values = mask_array(mask)
    if size is not None:
        load_mask(values, size)
    return values


def echo_controls(result, recipe) -> None:
    """Print the controls each edit was made with, as the ones that differ from the P2P paper's."""
    for k in range(1, len(result.prompts)):
        part = result.part_of(k)[0]
        changed = {**part.controls.changed(), **({"direct": True} if part.direct else {}),
                   **({"mask_stop": part.region.mask_stop} if part.region is not None else {})}
        click.echo(f"controls of edit {k} ({result.prompts[k]!r}): "
                   + (json.dumps(changed) if changed else "the paper's defaults (Controls())"))
    if recipe is not None:
        click.echo(f"  (the model's editing recipe: {recipe.chosen})")


@main.command()
@click.argument("source")
@click.option("--prompt", "-p", default=None,
              help="source prompt (an image without one is described first; an inversion has its own).")
@click.option("--method", "-m", type=METHOD, default="negative-prompt", show_default=True)
@click.option("--steps", **STEPS)
@click.option("--direct/--no-direct", default=None,
              help="Direct Inversion: keep the source branch on its pivot (default: the model's editing recipe's).")
@click.option("--method-setting", "settings", **METHOD_SETTING)
@edit_outputs
@mask_options
@control_options()
@click.pass_context
@friendly
def edit(ctx, source, prompt, method, steps, direct, settings, targets, output, force, mask, keep_outside, mask_stop,
         **options):
    """Edit SOURCE (an image, or an inversion saved by `redraft invert`) towards the target prompts."""
    from PIL import Image

    from ...io.image import check_size
    from ...io.inversion_file import Inversion
    from ...io.mask import crop_like

    check_edit_outputs(output, force)
    base, given = controls_base(options)
    is_inversion = is_saved_inversion(source, prompt, "editing", needs_prompt=False)
    if is_inversion and settings:
        raise InputError("--method-setting applies when an image is inverted; a saved inversion keeps the settings "
                         "it was made with (invert the image again with them).")
    chosen = method_setting_of(settings, method)
    saved = Inversion.load(source) if is_inversion else None
    size = (saved.image.shape[1], saved.image.shape[0]) if saved is not None else check_size(source)
    values = checked_mask(mask, size)
    editor = editor_from(ctx)
    inv = saved if saved is not None else editor.invert(source, prompt, method=method, steps=steps, settings=chosen)
    if not is_inversion and prompt is None:
        click.echo(f"described as: {inv.prompt}")
    if values is not None and not is_inversion:  # a mask of the original's size: cropped as the image was
        values = crop_like(values, size, editor.resolution, multiple=editor.pipeline.vae_scale_factor)
    result = editor.edit(inv, list(targets), direct=direct, controls=base, mask=values,
                         keep_outside=keep_outside, mask_stop=mask_stop, **given)
    echo_controls(result, editor.recipe if base is None else None)
    write_edit_outputs(result, [Image.fromarray(inv.image)], [f"input: {inv.prompt}", f"reconstruction ({inv.method})"],
                       output, force, method=inv.method + (" + direct" if result.direct else ""), steps=inv.steps,
                       model=editor.model_id)


@main.command()
@click.option("--prompt", "-p", required=True, help="source prompt.")
@click.option("--seed", default=0, show_default=True)
@click.option("--steps", **STEPS)
@click.option("--guidance", **GUIDANCE)
@edit_outputs
@mask_options
@control_options(generation=True)
@click.pass_context
@friendly
def generate(ctx, prompt, seed, steps, guidance, targets, output, force, mask, keep_outside, mask_stop, **options):
    """Generate an image of PROMPT and its Prompt-to-Prompt edits, all from the same noise."""
    check_edit_outputs(output, force)
    base, given = controls_base(options)
    values = checked_mask(mask, None)
    editor = editor_from(ctx)
    result = editor.generate([prompt, *targets], seed=seed, steps=steps, guidance_scale=guidance, controls=base,
                             mask=values, keep_outside=keep_outside, mask_stop=mask_stop, **given)
    echo_controls(result, editor.recipe if base is None else None)
    write_edit_outputs(result, [], [f"source: {prompt}"], output, force, seed=seed, steps=steps, model=editor.model_id)


@main.command()
@click.argument("source")
@click.option("--prompt", "-p", default=None, help="the image's prompt (an inversion has its own).")
@click.option("--resolution", default=None, type=int, help="map size (default: every size the UNet has, averaged).")
@click.option("--steps", **STEPS)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="the PNG to write.")
@click.option("--force", is_flag=True, help="replace the output if it exists.")
@click.pass_context
@friendly
def attention(ctx, source, prompt, resolution, steps, output, force):
    """Per-word cross-attention heat maps over an image (or a saved inversion)."""
    from ...io.files import check_output, save_image
    from ...io.inversion_file import Inversion

    check_output(output, force)
    is_inversion = is_saved_inversion(source, prompt, "drawing attention maps")
    editor = editor_from(ctx)
    maps = editor.attention_maps(Inversion.load(source) if is_inversion else source, prompt,
                                 resolution=resolution, steps=steps)
    save_image(maps.draw(), output, replace=force)
    click.echo(f"wrote {output} ({len(maps.words)} words, maps {maps.maps.shape[1]}x{maps.maps.shape[2]})")
