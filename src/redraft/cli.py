"""The `redraft` command line: a thin layer over the Python API."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .errors import InputError

METHOD = click.Choice(["ddim", "null-text", "negative-prompt"])


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
@click.pass_context
def main(ctx, model, device):
    """redraft: describe, invert and edit images with Stable Diffusion."""
    ctx.obj = {"model": model, "device": device}


def editor_from(ctx):
    from . import load

    return load(ctx.obj["model"], device=ctx.obj["device"])


@main.command()
@click.argument("image")
@click.option("--prompt", "-p", required=True, help="the text that describes the image.")
@click.option("--method", "-m", type=METHOD, default="negative-prompt", show_default=True)
@click.option("--steps", default=50, show_default=True)
@click.option("--guidance", default=7.5, show_default=True, help="classifier-free guidance scale.")
@click.option("--null-init", type=click.Choice(["null", "source"]), default="null", show_default=True,
              help="null-text: start from the empty prompt's embedding (paper) or the source prompt's.")
@click.option("--global-null", is_flag=True, help="null-text: one embedding for all steps (ablation).")
@click.option("--keep-aspect", is_flag=True, help="keep the aspect ratio instead of a centre crop.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="the .safetensors file to write.")
@click.option("--force", is_flag=True, help="replace the output if it exists.")
@click.pass_context
@friendly
def invert(ctx, image, prompt, method, steps, guidance, null_init, global_null, keep_aspect, output, force):
    """Invert IMAGE: save the trajectory that regenerates it."""
    from .files import refuse_overwrite
    from .image import load_image

    refuse_overwrite(output, force)
    load_image(image)  # fail on a bad image before loading the model
    editor = editor_from(ctx)
    inv = editor.invert(image, prompt, method=method, steps=steps, guidance_scale=guidance,
                        null_init=null_init, global_null=global_null, keep_aspect=keep_aspect)
    inv.save(output)
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
    from .files import refuse_overwrite, save_image
    from .inversion import Inversion
    from .metrics import psnr

    refuse_overwrite(output, force)
    inv = Inversion.load(inversion)
    editor = editor_from(ctx)
    image = editor.reconstruct(inv)
    save_image(image, output)
    click.echo(f"wrote {output} (PSNR {psnr(inv.image, image):.2f} dB against the inverted input)")


def edit_options(fn):
    """Prompt-to-Prompt controls shared by `edit` and `generate`."""
    options = [
        click.option("--target", "-t", "targets", multiple=True, required=True, help="target prompt (repeatable)."),
        click.option("--kind", type=click.Choice(["replace", "refine", "reweight"]), default=None,
                     help="edit kind (default: chosen from the prompts)."),
        click.option("--blend", multiple=True, help="LocalBlend word (repeatable): only its region changes."),
        click.option("--reweight", multiple=True, metavar="WORD=FACTOR", help="re-weight a word (repeatable)."),
        click.option("--cross-steps", default=0.8, show_default=True, help="cross_replace_steps (fraction)."),
        click.option("--self-steps", default=0.4, show_default=True, help="self_replace_steps (fraction)."),
        click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
                     help="PNG of the (first) edit; a grid is written beside it (NAME.grid.png)."),
        click.option("--force", is_flag=True, help="replace outputs that exist."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def is_saved_inversion(source: str, prompt: str | None, what: str) -> bool:
    """SOURCE is a saved inversion (.safetensors), or an image that needs --prompt; checked before loading a model."""
    from .image import load_image

    if source.endswith(".safetensors"):
        return True
    load_image(source)
    if not prompt:
        raise InputError(f"{what} of an image needs its source prompt: give --prompt \"...\".")
    return False


def controls_from(kind, blend, reweight, cross_steps, self_steps) -> dict:
    weights = {}
    for item in reweight:
        word, sep, factor = item.partition("=")
        if not sep or not word:
            raise InputError(f"--reweight takes WORD=FACTOR (e.g. --reweight red=0.5); got {item!r}.")
        try:
            weights[word] = float(factor)
        except ValueError:
            raise InputError(f"--reweight {item!r}: the factor {factor!r} is not a number.") from None
    return dict(kind=kind, blend=list(blend), reweight=weights, cross_replace_steps=cross_steps,
                self_replace_steps=self_steps)


def write_edit_outputs(images, prompts, first_caption: list[str], output: str, force: bool) -> None:
    from .draw import grid
    from .files import refuse_overwrite, save_image

    out = Path(output)
    grid_path = out.with_name(out.stem + ".grid.png")
    refuse_overwrite(grid_path, force)
    save_image(images[-len(prompts) + 1], out)
    captions = first_caption + [f"edit: {p}" for p in prompts[1:]]
    save_image(grid(images, captions), grid_path)
    click.echo(f"wrote {out} and {grid_path}")


@main.command()
@click.argument("source")
@click.option("--prompt", "-p", default=None, help="source prompt (needed for an image; an inversion has its own).")
@click.option("--method", "-m", type=METHOD, default="negative-prompt", show_default=True)
@click.option("--steps", default=50, show_default=True)
@click.option("--direct", is_flag=True, help="Direct Inversion: keep the source branch on its pivot (with --method ddim).")
@edit_options
@click.pass_context
@friendly
def edit(ctx, source, prompt, method, steps, direct, targets, kind, blend, reweight, cross_steps, self_steps,
         output, force):
    """Edit SOURCE (an image, or an inversion saved by `redraft invert`) towards the target prompts."""
    from .files import refuse_overwrite
    from .inversion import Inversion

    refuse_overwrite(output, force)
    controls = controls_from(kind, blend, reweight, cross_steps, self_steps)
    is_inversion = is_saved_inversion(source, prompt, "editing")
    editor = editor_from(ctx)
    inv = Inversion.load(source) if is_inversion else editor.invert(source, prompt, method=method, steps=steps)
    images = editor.edit(inv, list(targets), direct=direct, **controls)
    from PIL import Image

    prompts = [inv.prompt, *targets]
    write_edit_outputs([Image.fromarray(inv.image), *images], prompts,
                       [f"input: {inv.prompt}", f"reconstruction ({inv.method})"], output, force)


@main.command()
@click.option("--prompt", "-p", required=True, help="source prompt.")
@click.option("--seed", default=0, show_default=True)
@click.option("--steps", default=50, show_default=True)
@click.option("--guidance", default=7.5, show_default=True)
@edit_options
@click.pass_context
@friendly
def generate(ctx, prompt, seed, steps, guidance, targets, kind, blend, reweight, cross_steps, self_steps, output,
             force):
    """Generate an image of PROMPT and its Prompt-to-Prompt edits, all from the same noise."""
    from .files import refuse_overwrite

    refuse_overwrite(output, force)
    controls = controls_from(kind, blend, reweight, cross_steps, self_steps)
    editor = editor_from(ctx)
    images = editor.generate([prompt, *targets], seed=seed, steps=steps, guidance_scale=guidance, **controls)
    write_edit_outputs(images, [prompt, *targets], [f"source: {prompt}"], output, force)


@main.command()
@click.argument("source")
@click.option("--prompt", "-p", default=None, help="the image's prompt (an inversion has its own).")
@click.option("--resolution", default=None, type=int, help="map size (default: every size the UNet has, averaged).")
@click.option("--steps", default=50, show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="the PNG to write.")
@click.option("--force", is_flag=True, help="replace the output if it exists.")
@click.pass_context
@friendly
def attention(ctx, source, prompt, resolution, steps, output, force):
    """Per-word cross-attention heat maps over an image (or a saved inversion)."""
    from .files import refuse_overwrite, save_image
    from .inversion import Inversion

    refuse_overwrite(output, force)
    is_inversion = is_saved_inversion(source, prompt, "drawing attention maps")
    editor = editor_from(ctx)
    maps = editor.attention_maps(Inversion.load(source) if is_inversion else source, prompt,
                                 resolution=resolution, steps=steps)
    save_image(maps.draw(), output)
    click.echo(f"wrote {output} ({len(maps.words)} words, maps {maps.maps.shape[1]}x{maps.maps.shape[2]})")


@main.group()
def bench():
    """Benchmarks: print a table, save JSON and a chart."""


@bench.command("inversion")
@click.option("--images", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL of {\"image\": path, \"prompt\": text}; default: held-out shapes scenes.")
@click.option("-n", "count", default=8, show_default=True, help="shapes scenes to use (without --images).")
@click.option("--steps", default="10,20,50", show_default=True, help="comma-separated step counts.")
@click.option("--methods", default=None, help="comma-separated labels (default: all).")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_inversion(ctx, images, count, steps, methods, out_dir):
    """Reconstruction PSNR/SSIM, VAE ceiling, seconds, UNet passes, ratio to the UNet floor, memory."""
    from .bench import inversion as b

    labels = methods.split(",") if methods else list(b.METHODS)
    unknown = [m for m in labels if m not in b.METHODS]
    if unknown:
        raise InputError(f"unknown method label(s) {unknown}; choose from {list(b.METHODS)}.")
    cases = b.cases_from_file(Path(images)) if images else b.shapes_cases(count)
    editor = editor_from(ctx)
    click.echo(b.HEADER)
    result = b.run(editor, cases, labels, [int(s) for s in steps.split(",")])
    json_path, png_path = b.save(result, Path(out_dir))
    click.echo(f"wrote {json_path} and {png_path}")


@bench.command("shapes")
@click.option("--generation", "n_generation", default=200, show_default=True, help="prompts to generate.")
@click.option("--edits", "n_edit", default=24, show_default=True, help="scenes to invert and edit, per method.")
@click.option("--methods", default="negative-prompt,direct,null-text", show_default=True,
              help="inversion methods to edit from; direct = Direct Inversion over DDIM.")
@click.option("--self-steps", default=0.4, show_default=True, help="self_replace_steps of the edits.")
@click.option("--cross-steps", default=0.8, show_default=True, help="cross_replace_steps of the edits.")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_shapes(ctx, n_generation, n_edit, methods, self_steps, cross_steps, out_dir):
    """The built-in model against the shapes world (held-out scenes): generation, VAE, inversion, editing."""
    from .bench import shapes as b

    editor = editor_from(ctx)
    result = b.run(editor, n_generation, n_edit, methods.split(","), self_replace_steps=self_steps,
                   cross_replace_steps=cross_steps)
    click.echo(b.table(result))
    click.echo(f"wrote {b.save(result, Path(out_dir))}")


@main.group()
def train():
    """Training."""


@train.command("shapes-model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="work folder; run again to resume after a stop.")
def train_shapes_model(out_dir):
    """Train the built-in shapes model from scratch (resumable; about 1.5 h on 2 CPU cores)."""
    from .shapes.train import train as run

    click.echo(f"model written to {run(out_dir)}")


@main.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", default=7, show_default=True, help="which held-out scene to use.")
@click.pass_context
@friendly
def demo(ctx, out_dir, seed):
    """The main job on the built-in model: a new scene, inverted, reconstructed and edited."""
    from .demo import run

    run(editor_from(ctx), Path(out_dir), seed=seed)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every network interface; anyone who reaches it can use it).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.pass_context
@friendly
def serve(ctx, host, port):
    """A web page to describe, invert and edit images (needs: pip install 'redraft[app]')."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise InputError("the web app needs Gradio: install it with pip install 'redraft[app]'.")
    from .app import serve as run

    run(editor_from(ctx), host=host, port=port)


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="results folder; run the same command again to resume.")
@click.option("--images", default=None, type=click.Path(file_okay=False),
              help="PIE-Bench: its annotation_images folder (default: beside mapping_file.json).")
@click.option("--method", "-m", type=METHOD, default="negative-prompt", show_default=True,
              help="inversion method of the items that set none.")
@click.option("--steps", default=50, show_default=True)
@click.option("--guidance", default=7.5, show_default=True)
@click.option("--direct", is_flag=True, help="Direct Inversion for the items that set none (with --method ddim).")
@click.option("--cross-steps", type=float, default=None, help="cross_replace_steps (default 0.8; PIE-Bench 0.4).")
@click.option("--self-steps", type=float, default=None, help="self_replace_steps (default 0.4; PIE-Bench 0.6).")
@click.option("--clip", default=None, help="CLIP weights for CLIP scores (e.g. openai/clip-vit-large-patch14).")
@click.option("--dino", default=None, help="DINO ViT weights for structure distance (e.g. facebook/dino-vitb8).")
@click.option("--lpips", default=None, help="LPIPS weights: a .safetensors file (see redraft.metrics.Lpips).")
@click.option("--limit", type=int, default=None, help="only the first N items.")
@click.option("--force", is_flag=True, help="redo items whose saved results were made with other settings.")
@click.pass_context
@friendly
def batch(ctx, manifest, out_dir, images, method, steps, guidance, direct, cross_steps, self_steps, clip, dino,
          lpips, limit, force):
    """Invert and edit every item of MANIFEST (JSONL, CSV or PIE-Bench's mapping_file.json), with metrics.

    Resumable. Scale out with `accelerate launch --multi_gpu --num_processes N -m redraft.cli batch ...`.
    """
    from . import batch as b
    from .loading import BUILTIN

    defaults = b.Defaults(method=method, steps=steps, guidance=guidance, direct=direct, cross_steps=cross_steps,
                          self_steps=self_steps)
    items = b.read_manifest(manifest, defaults, images)[:limit]

    def load_editor(device):  # each process on its own device (accelerate's), unless --device says otherwise
        ctx.obj["device"] = device
        return editor_from(ctx)

    report = b.run(items, out_dir, load_editor, model=ctx.obj["model"] or BUILTIN, device=ctx.obj["device"],
                   weights=dict(clip=clip, dino=dino, lpips=lpips), force=force)
    if report.summary is not None:
        s = report.summary
        for key, value in s["means"].items():
            click.echo(f"  {key:28s} {value:10.4f}  (n={s['counts'][key]})")
        click.echo(f"{s['ok']} ok, {s['failed']} failed of {s['items']} items ({report.skipped} already done); "
                   f"wrote {Path(out_dir) / 'results.csv'} and results.jsonl")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every network interface; anyone who reaches it can use it).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.pass_context
@friendly
def serve(ctx, host, port):
    """A web page to describe, invert and edit images (needs: pip install 'redraft[app]')."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise InputError("the web app needs Gradio: install it with pip install 'redraft[app]'.")
    from .app import serve as run

    run(editor_from(ctx), host=host, port=port)


if __name__ == "__main__":
    main()
