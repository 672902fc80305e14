"""The `redraft` command line: a thin layer over the Python API."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from ..errors import InputError

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
@click.option("--describer", default=None, type=click.Path(file_okay=False),
              help="describer folder (default: the model's own, <model>/describer).")
@click.pass_context
def main(ctx, model, device, describer):
    """redraft: describe, invert and edit images with Stable Diffusion."""
    ctx.obj = {"model": model, "device": device, "describer": describer}


def editor_from(ctx):
    from .. import load

    return load(ctx.obj["model"], device=ctx.obj["device"], describer=ctx.obj.get("describer"))


@main.command()
@click.argument("image")
@click.option("--prompt", "-p", default=None, help="the text that describes the image (default: its description).")
@click.option("--method", "-m", type=METHOD, default="negative-prompt", show_default=True)
@click.option("--steps", default=50, show_default=True)
@click.option("--guidance", type=click.FloatRange(min=0), default=None,
              help="classifier-free guidance scale (default: the model's; 7.5 for SD).")
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
    from ..io.files import refuse_overwrite
    from ..io.image import load_image

    refuse_overwrite(output, force)
    load_image(image)  # fail on a bad image before loading the model
    editor = editor_from(ctx)
    inv = editor.invert(image, prompt, method=method, steps=steps, guidance_scale=guidance,
                        null_init=null_init, global_null=global_null, keep_aspect=keep_aspect)
    inv.save(output)
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
    from ..io.files import refuse_overwrite, save_image
    from ..io.inversion_file import Inversion
    from ..eval.metrics import psnr

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
        click.option("--blend-exclude", multiple=True, metavar="WORD",
                     help="LocalBlend: this word's region is kept from the source (repeatable); without "
                     "--blend, everything else may change."),
        click.option("--reweight", multiple=True, metavar="WORD=FACTOR", help="re-weight a word (repeatable)."),
        click.option("--cross-steps", default=0.8, show_default=True, help="cross_replace_steps (fraction)."),
        click.option("--self-steps", default=0.4, show_default=True, help="self_replace_steps (fraction)."),
        click.option("--self-resolution", type=click.IntRange(min=0), default=None,
                     help="inject self-attention in layers up to this side (default: P2P's, half the latent's)."),
        click.option("--layout-guidance", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="layout guidance step size: keeps objects where the source has them (0: off)."),
        click.option("--layout-steps", default=0.5, show_default=True,
                     help="fraction of the steps (the first ones) that layout guidance acts on."),
        click.option("--feature-steps", type=click.FloatRange(min=0, max=1), default=0.0, show_default=True,
                     help="fraction of the first steps in which the source's decoder features replace the "
                     "edits' (Plug-and-Play; 0: off)."),
        click.option("--renoise-step", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
                     help="fraction of the steps after which the edits take one step with fresh noise (default: never)."),
        click.option("--renoise-strength", type=click.FloatRange(min=0, max=1), default=1.0, show_default=True,
                     help="share of fresh noise in that step."),
        click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
                     help="PNG of the (first) edit; a grid is written beside it (NAME.grid.png)."),
        click.option("--force", is_flag=True, help="replace outputs that exist."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def is_saved_inversion(source: str, prompt: str | None, what: str, needs_prompt: bool = True) -> bool:
    """SOURCE is a saved inversion (.safetensors), or an image that needs --prompt (unless it can be
    described: `needs_prompt=False`); checked before loading a model."""
    from ..io.image import load_image

    if source.endswith(".safetensors"):
        return True
    load_image(source)
    if needs_prompt and not prompt:
        raise InputError(f"{what} of an image needs its source prompt: give --prompt \"...\".")
    return False


def controls_from(kind, blend, reweight, cross_steps, self_steps, self_resolution=None, layout_guidance=0.0,
                  layout_steps=0.5, blend_exclude=(), feature_steps=0.0, renoise_step=None, renoise_strength=1.0) -> dict:
    weights = {}
    for item in reweight:
        word, sep, factor = item.partition("=")
        if not sep or not word:
            raise InputError(f"--reweight takes WORD=FACTOR (e.g. --reweight red=0.5); got {item!r}.")
        try:
            weights[word] = float(factor)
        except ValueError:
            raise InputError(f"--reweight {item!r}: the factor {factor!r} is not a number.") from None
    return dict(kind=kind, blend=list(blend), blend_exclude=list(blend_exclude), reweight=weights,
                cross_replace_steps=cross_steps, self_replace_steps=self_steps, self_max_resolution=self_resolution,
                layout_guidance=layout_guidance, layout_guidance_steps=layout_steps, feature_replace_steps=feature_steps,
                renoise_step=renoise_step, renoise_strength=renoise_strength)


def write_edit_outputs(images, prompts, first_caption: list[str], output: str, force: bool) -> None:
    from ..io.draw import grid
    from ..io.files import refuse_overwrite, save_image

    out = Path(output)
    grid_path = out.with_name(out.stem + ".grid.png")
    refuse_overwrite(grid_path, force)
    save_image(images[-len(prompts) + 1], out)
    captions = first_caption + [f"edit: {p}" for p in prompts[1:]]
    save_image(grid(images, captions), grid_path)
    click.echo(f"wrote {out} and {grid_path}")


@main.command()
@click.argument("source")
@click.option("--prompt", "-p", default=None,
              help="source prompt (an image without one is described first; an inversion has its own).")
@click.option("--method", "-m", type=METHOD, default="negative-prompt", show_default=True)
@click.option("--steps", default=50, show_default=True)
@click.option("--direct", is_flag=True, help="Direct Inversion: keep the source branch on its pivot (with --method ddim).")
@click.option("--skip-steps", default=0.0, show_default=True,
              help="fraction of the first steps to skip: the edits start from the inversion's pivot there.")
@edit_options
@click.pass_context
@friendly
def edit(ctx, source, prompt, method, steps, direct, skip_steps, targets, kind, blend, blend_exclude, reweight,
         cross_steps, self_steps, self_resolution, layout_guidance, layout_steps, feature_steps, renoise_step,
         renoise_strength, output, force):
    """Edit SOURCE (an image, or an inversion saved by `redraft invert`) towards the target prompts."""
    from ..io.files import refuse_overwrite
    from ..io.inversion_file import Inversion

    refuse_overwrite(output, force)
    controls = controls_from(kind, blend, reweight, cross_steps, self_steps, self_resolution, layout_guidance,
                             layout_steps, blend_exclude, feature_steps, renoise_step, renoise_strength)
    is_inversion = is_saved_inversion(source, prompt, "editing", needs_prompt=False)
    editor = editor_from(ctx)
    inv = Inversion.load(source) if is_inversion else editor.invert(source, prompt, method=method, steps=steps)
    if not is_inversion and prompt is None:
        click.echo(f"described as: {inv.prompt}")
    images = editor.edit(inv, list(targets), direct=direct, skip_steps=skip_steps, **controls)
    from PIL import Image

    prompts = [inv.prompt, *targets]
    write_edit_outputs([Image.fromarray(inv.image), *images], prompts,
                       [f"input: {inv.prompt}", f"reconstruction ({inv.method})"], output, force)


@main.command()
@click.option("--prompt", "-p", required=True, help="source prompt.")
@click.option("--seed", default=0, show_default=True)
@click.option("--steps", default=50, show_default=True)
@click.option("--guidance", type=click.FloatRange(min=0), default=None,
              help="classifier-free guidance scale (default: the model's; 7.5 for SD).")
@edit_options
@click.pass_context
@friendly
def generate(ctx, prompt, seed, steps, guidance, targets, kind, blend, blend_exclude, reweight, cross_steps,
             self_steps, self_resolution, layout_guidance, layout_steps, feature_steps, renoise_step, renoise_strength,
             output, force):
    """Generate an image of PROMPT and its Prompt-to-Prompt edits, all from the same noise."""
    from ..io.files import refuse_overwrite

    refuse_overwrite(output, force)
    controls = controls_from(kind, blend, reweight, cross_steps, self_steps, self_resolution, layout_guidance,
                             layout_steps, blend_exclude, feature_steps, renoise_step, renoise_strength)
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
    from ..io.files import refuse_overwrite, save_image
    from ..io.inversion_file import Inversion

    refuse_overwrite(output, force)
    is_inversion = is_saved_inversion(source, prompt, "drawing attention maps")
    editor = editor_from(ctx)
    maps = editor.attention_maps(Inversion.load(source) if is_inversion else source, prompt,
                                 resolution=resolution, steps=steps)
    save_image(maps.draw(), output)
    click.echo(f"wrote {output} ({len(maps.words)} words, maps {maps.maps.shape[1]}x{maps.maps.shape[2]})")


@main.group(invoke_without_command=True)
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench(ctx, out_dir):
    """Benchmarks: print a table, save JSON and a chart. Alone: inversion, editing, generation and
    describe, run small, in one summary table."""
    if ctx.invoked_subcommand is not None:
        return
    from ..bench import summary

    result = summary.run(editor_from(ctx))
    click.echo(summary.table(result))
    click.echo("wrote " + ", ".join(str(p) for p in summary.save(result, Path(out_dir))))


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
    from ..bench import inversion as b

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
@click.option("--describe", "n_describe", default=256, show_default=True, help="scenes to describe (0: none).")
@click.option("--methods", default="negative-prompt,direct,null-text", show_default=True,
              help="inversion methods to edit from; direct = Direct Inversion over DDIM.")
@click.option("--self-steps", default=0.4, show_default=True, help="self_replace_steps of the edits.")
@click.option("--cross-steps", default=0.8, show_default=True, help="cross_replace_steps of the edits.")
@click.option("--blend", is_flag=True, help="blend every edit locally (LocalBlend) on the changed part's words.")
@click.option("--self-resolution", type=click.IntRange(min=0), default=None,
              help="self_max_resolution of the edits (default: P2P's, half the latent's side).")
@click.option("--layout-guidance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="layout guidance step size of the edits (0: off).")
@click.option("--layout-steps", default=0.5, show_default=True, help="fraction of the steps layout guidance acts on.")
@click.option("--feature-steps", type=click.FloatRange(min=0, max=1), default=0.0, show_default=True,
              help="feature_replace_steps of the edits (Plug-and-Play feature injection; 0: off).")
@click.option("--background-feature-steps", type=click.FloatRange(min=0, max=1), default=None,
              help="feature_replace_steps of the background edits (swaps and added backgrounds; default: "
                   "--feature-steps). The demo's: 0, since a new background changes what the features keep.")
@click.option("--demo-controls", is_flag=True,
              help="edit with the demo's controls for each kind (redraft.demo.editing) instead of the options above.")
@click.option("--guidance", type=click.FloatRange(min=0), default=None,
              help="classifier-free guidance scale of generation and inversion (default: the model's).")
@click.option("--seed", default=3, show_default=True,
              help="seed of the held-out scenes and prompts: 3 is the benchmark's; choose controls on another.")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_shapes(ctx, n_generation, n_edit, n_describe, methods, self_steps, cross_steps, blend, self_resolution,
                 layout_guidance, layout_steps, feature_steps, background_feature_steps, demo_controls, guidance, seed, out_dir):
    """The built-in model against the shapes world (held-out scenes): generation, VAE, inversion, editing, describe."""
    from ..bench import shapes as b
    from ..shapes.world import BACKGROUND_KINDS

    controls = dict(self_replace_steps=self_steps, cross_replace_steps=cross_steps, self_max_resolution=self_resolution,
                    layout_guidance=layout_guidance, layout_guidance_steps=layout_steps, feature_replace_steps=feature_steps)
    by_kind = {} if background_feature_steps is None else {
        kind: {"feature_replace_steps": background_feature_steps} for kind in BACKGROUND_KINDS}
    if demo_controls:
        from .demo import EDITING, EDITING_BY_KIND

        given = [f"--{name.replace('_', '-')}" for name in ("self_steps", "cross_steps", "self_resolution", "layout_guidance",
                                                            "layout_steps", "feature_steps", "background_feature_steps")
                 if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--demo-controls sets every control; leave out {', '.join(given)}, or --demo-controls.")
        controls = {k: v for k, v in EDITING.items() if k != "direct"}  # --methods says which inversion
        by_kind = EDITING_BY_KIND
    editor = editor_from(ctx)
    result = b.run(editor, n_generation, n_edit, methods.split(","), blend=blend, guidance_scale=guidance, seed=seed,
                   by_kind=by_kind, n_describe=n_describe, **controls)
    click.echo(b.table(result))
    click.echo(f"wrote {b.save(result, Path(out_dir))}")


@bench.command("describe")
@click.option("-n", "count", default=256, show_default=True, help="held-out shapes scenes to describe.")
@click.option("--train-size", default=10000, show_default=True, help="training scenes of every ablation row.")
@click.option("--epochs", default=3, show_default=True, help="epochs of every ablation row.")
@click.option("--rows", default=None, help="comma-separated rows (default: all but the last): shipped, regression, "
              "heads1, heads2, heads3, curriculum, unet-frozen, curriculum-shuffled.")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_describe(ctx, count, train_size, epochs, rows, out_dir):
    """Prompt prediction on held-out shapes: cosine, exact prompt, attributes; the paper's ablation in small."""
    from ..bench import describe as b

    result = b.run(ctx.obj.get("describer"), count, train_size=train_size, epochs=epochs,
                   rows=rows.split(",") if rows else None, work=Path(out_dir) / "describe-runs")
    click.echo(b.table(result))
    click.echo(f"wrote {b.save(result, Path(out_dir))}")


@bench.command("caption")
@click.option("--seeds", default="0,1,2", show_default=True, help="comma-separated training seeds (the spread "
              "between seeds is large: keep several).")
@click.option("--variants", default="vanilla,enhanced", show_default=True,
              help="comma-separated: vanilla, enhanced, vocabulary (BCE only), curriculum (curriculum only).")
@click.option("--train", "n_train", default=2000, show_default=True, help="training scenes.")
@click.option("--test", "n_test", default=300, show_default=True, help="held-out scenes to score.")
@click.option("--steps", default=600, show_default=True, help="training steps of every run (batch 32).")
@click.option("--noise", default=0.0, show_default=True, help="share of training prompts swapped for another scene's.")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@friendly
def bench_caption(seeds, variants, n_train, n_test, steps, noise, out_dir):
    """Vanilla against enhanced BLIP (a small one, from scratch) on held-out shapes: exact prompt, cosine, attributes."""
    from ..bench import caption as b
    from ..describe.caption import CaptionRecipe

    result = b.run(Path(out_dir), [int(s) for s in seeds.split(",")], variants.split(","), n_train=n_train,
                   n_test=n_test, noise=noise, recipe=CaptionRecipe(steps=steps))
    click.echo(b.table(result))
    json_path, png_path = b.save(result, Path(out_dir))
    click.echo(f"wrote {json_path} and {png_path}")


@bench.command("discovery")
@click.option("-n", "count", default=128, show_default=True, help="held-out prompts to generate.")
@click.option("--steps", default=50, show_default=True)
@click.option("--from-step", default=1, show_default=True, help="first sampling step that uses the tuned encoder.")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_discovery(ctx, count, steps, from_step, out_dir):
    """The paper's discovery: generation accuracy with the model's U-Net encoder and with the fine-tuned
    one of --describer (trained with --backbone unet --finetune)."""
    from ..bench import describe as b

    if not ctx.obj.get("describer"):
        raise InputError("give the describer whose U-Net encoder to try: redraft --describer FOLDER bench discovery")
    result = b.discovery(editor_from(ctx), ctx.obj["describer"], count, steps=steps, from_step=from_step)
    click.echo(b.discovery_table(result))
    out = Path(out_dir) / "discovery.json"
    b.save(result, Path(out_dir), name="discovery.json")
    click.echo(f"wrote {out}")


@main.group()
def train():
    """Training."""


@train.command("shapes-model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="work folder; run again to resume after a stop.")
def train_shapes_model(out_dir):
    """Train the built-in shapes model from scratch (resumable; 2 to 3 h on 2 CPU cores)."""
    from ..shapes.train import train as run

    click.echo(f"model written to {run(out_dir)}")


@train.command("describer")
@click.option("--data", required=True, help="'shapes' (scenes drawn on the fly), or a folder with prompts.csv / "
              "prompts.jsonl (columns image, prompt), or with DiffusionDB's part-*.zip files.")
@click.option("--backbone", default="resnet-tiny", show_default=True,
              help="resnet-tiny / vit-tiny (from scratch), config:PATH (a transformers config, from scratch), "
                   "a transformers model folder or hub id (e.g. openai/clip-vit-base-patch32), or unet "
                   "(the U-Net encoder of --model).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="the describer folder; run again to resume after a stop.")
@click.option("--finetune/--frozen", default=None,
              help="train or freeze a pretrained backbone or the U-Net (default: frozen; from-scratch ones train).")
@click.option("--heads", type=click.Choice(["1", "2", "3"]), default="3", show_default=True,
              help="head configuration: 1 side by side, 2 logits into the regression, 3 words from the embedding.")
@click.option("--hidden", type=int, default=None, help="heads' hidden width, 0 for linear (default: 512 on a "
              "frozen backbone, else linear).")
@click.option("--regression-only", is_flag=True, help="no vocabulary classification (ablation).")
@click.option("--curriculum", default=0, show_default=True, help="curriculum stages (0: none).")
@click.option("--warmup-epochs", default=2, show_default=True, help="curriculum: epochs of the scoring run.")
@click.option("--epochs", default=4, show_default=True, help="epochs (with a curriculum: per stage).")
@click.option("--batch-size", default=64, show_default=True, help="per device.")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--backbone-lr", type=float, default=None, help="a trained backbone's learning rate (default: --lr).")
@click.option("--weight-decay", default=0.01, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--train-size", default=20000, show_default=True, help="shapes: training scenes.")
@click.option("--image-size", type=int, default=None, help="input size (default: the backbone's; 64 on shapes).")
@click.option("--timestep", default=50, show_default=True, help="unet: the timestep of the latents.")
@click.option("--context", type=click.Choice(["empty", "caption"]), default="empty", show_default=True,
              help="unet: the text context (caption: needs --captioner).")
@click.option("--captioner", default=None, help="unet with --context caption: a BLIP captioner folder or hub id.")
@click.option("--vocab-size", default=1000, show_default=True)
@click.option("--workers", default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--keep-checkpoint", is_flag=True, help="keep the last checkpoint when training ends.")
@click.pass_context
@friendly
def train_describer(ctx, data, backbone, out_dir, finetune, heads, hidden, regression_only, curriculum, warmup_epochs,
                    epochs, batch_size, lr, backbone_lr, weight_decay, seed, train_size, image_size, timestep, context, captioner,
                    vocab_size, workers, keep_checkpoint):
    """Train a describer (image -> prompt); many GPUs: accelerate launch -m redraft train describer ..."""
    from ..describe.train import TrainOptions, train as run

    options = TrainOptions(
        data=data, backbone=backbone, model=ctx.obj["model"], finetune=finetune, heads=int(heads), hidden=hidden,
        words=not regression_only, curriculum=curriculum, warmup_epochs=warmup_epochs, epochs=epochs,
        batch_size=batch_size, lr=lr, backbone_lr=backbone_lr, weight_decay=weight_decay, seed=seed, train_size=train_size,
        image_size=image_size, timestep=timestep, context=context, captioner=captioner, vocab_size=vocab_size,
        num_workers=workers)
    click.echo(f"describer written to {run(options, out_dir, keep_checkpoint=keep_checkpoint)}")


@train.command("captioner")
@click.option("--data", default="shapes", show_default=True,
              help="'shapes', or a folder with prompts.csv / prompts.jsonl, or with DiffusionDB's part-*.zip files.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="work folder (the captioner is written to OUT/model); run again to resume after a stop.")
@click.option("--base", default=None, help="a BLIP folder or hub id to fine-tune (default: a small BLIP from scratch).")
@click.option("--variant", type=click.Choice(["vanilla", "enhanced", "vocabulary", "curriculum"]), default="enhanced",
              show_default=True, help="enhanced = + vocabulary BCE + curriculum (the paper's); the others ablate.")
@click.option("--warmup", default=None, type=click.Path(file_okay=False),
              help="a finished vanilla run (its OUT folder) to take the curriculum from (default: train one first).")
@click.option("--steps", default=600, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="default: 2e-3 from scratch, 1e-5 with --base.")
@click.option("--bce-weight", default=0.1, show_default=True, help="weight of the vocabulary BCE (the paper's 0.1).")
@click.option("--stages", default=3, show_default=True, help="curriculum stages.")
@click.option("--seed", default=0, show_default=True)
@click.option("--scenes", default=2000, show_default=True, help="shapes: training scenes.")
@friendly
def train_captioner(data, out_dir, base, variant, warmup, steps, batch_size, lr, bce_weight, stages, seed, scenes):
    """Train a BLIP captioner that writes the prompt of an image (vanilla or enhanced)."""
    from ..describe.caption import CaptionRecipe, train_captioner as run
    from ..describe.data import open_pairs
    from ..describe.embed import SentenceEmbedder

    recipe = CaptionRecipe(variant=variant, seed=seed, steps=steps, batch_size=batch_size, bce_weight=bce_weight,
                           stages=stages, lr=lr if lr is not None else (1e-5 if base else 2e-3))
    result = run(out_dir, open_pairs(data, seed=seed, n=scenes), recipe, base=base, warmup=warmup,
                 embedder=SentenceEmbedder())
    click.echo(f"captioner written to {result.folder} ({result.seconds / 60:.1f} min of training)")


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
@click.argument("images", nargs=-1, required=True)
@click.option("-k", "k", default=5, show_default=True, help="nearest known prompts to show.")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per image.")
@click.pass_context
@friendly
def describe(ctx, images, k, as_json):
    """The prompt behind each image (Reverse Stable Diffusion): text, words, nearest known prompts."""
    import json

    from ..io.image import load_image

    from ..describe.model import Describer, describer_folder
    from ..io.loading import default_device

    loaded = [load_image(path) for path in images]  # fail on a bad image before loading the model
    describer = Describer.load(describer_folder(ctx.obj["model"], ctx.obj.get("describer")),
                               device=ctx.obj["device"] or default_device())  # the describer alone
    for path, d in zip(images, describer.describe(loaded, k=k)):
        if as_json:
            click.echo(json.dumps({"image": path, **d.to_json()}))
            continue
        click.echo(f"{path}: {d.prompt}")
        if d.words:
            click.echo("  words: " + ", ".join(f"{w} {p:.2f}" for w, p in d.words))
        click.echo("  nearest: " + "; ".join(f"{t} ({c:.3f})" for t, c in d.neighbours))


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="results folder; run the same command again to resume.")
@click.option("--images", default=None, type=click.Path(file_okay=False),
              help="PIE-Bench: its annotation_images folder (default: beside mapping_file.json).")
@click.option("--method", "-m", type=METHOD, default="negative-prompt", show_default=True,
              help="inversion method of the items that set none.")
@click.option("--steps", default=50, show_default=True)
@click.option("--guidance", type=click.FloatRange(min=0), default=None,
              help="classifier-free guidance scale (default: the model's; 7.5 for SD).")
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

    Resumable. Scale out with `accelerate launch --multi_gpu --num_processes N -m redraft batch ...`.
    """
    from . import batch as b
    from ..io.loading import BUILTIN

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
    from .web import serve as run

    run(editor_from(ctx), host=host, port=port)


if __name__ == "__main__":
    main()
