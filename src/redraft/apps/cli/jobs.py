"""`redraft demo`, `batch`, `describe` and `serve`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ...errors import InputError
from .common import GUIDANCE, METHOD, METHOD_SETTING, STEPS, editor_from, friendly, main, method_settings
from ...p2p.controls import Controls
from ...p2p.recipe import PAPER
from .controls import control_options, controls_base


@main.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", default=7, show_default=True, help="which held-out scene to use.")
@click.option("--force", is_flag=True, help="replace the demo's files in OUT if they exist.")
@click.pass_context
@friendly
def demo(ctx, out_dir, seed, force):
    """The main job on the built-in model: a new scene, inverted, reconstructed and edited."""
    from ...io.files import refuse_overwrite
    from ..demo import OUTPUTS, run

    for name in OUTPUTS:  # before any work
        refuse_overwrite(Path(out_dir) / name, force)
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

    from ...io.image import load_image

    from ...describe.model import Describer, describer_folder
    from ...io.loading import default_device

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
@click.option("--steps", **STEPS)
@click.option("--guidance", **GUIDANCE)
@click.option("--direct/--no-direct", default=None,
              help="Direct Inversion for the items that set none (default: the model's editing recipe's).")
@click.option("--clip", default=None, help="CLIP weights for CLIP scores (e.g. openai/clip-vit-large-patch14).")
@click.option("--dino", default=None, help="DINO ViT weights for structure distance (e.g. facebook/dino-vitb8).")
@click.option("--lpips", default=None, help="LPIPS weights: a .safetensors file (see redraft.metrics.Lpips).")
@click.option("--limit", type=int, default=None, help="only the first N items.")
@click.option("--force", is_flag=True, help="redo items whose saved results were made with other settings.")
@click.option("--use-pie-masks", is_flag=True, help="confine each edit to its annotated mask (PIE-Bench's, or the "
              "manifest's mask column): the table then says 'mask given', not comparable with unmasked rows.")
@click.option("--inversions", default=None, help="comma-separated inversions (and direct = Direct Inversion over "
              "DDIM): every item is run with each, one results row per (inversion, editor) pair; with --editors.")
@click.option("--editors", default=None, help="comma-separated editors (p2p, masactrl, pnp) for --inversions "
              "(default: the items' own).")
@click.option("--method-setting", "settings", **METHOD_SETTING)
@control_options()
@click.pass_context
@friendly
def batch(ctx, manifest, out_dir, images, method, steps, guidance, direct, clip, dino, lpips, limit, force,
          use_pie_masks, inversions, editors, settings, **options):
    """Invert and edit every item of MANIFEST (JSONL, CSV or PIE-Bench's mapping_file.json), with metrics.

    Resumable. Scale out with `accelerate launch --multi_gpu --num_processes N -m redraft batch ...`.
    The control options apply to every item that does not set its own (the manifest's columns), over
    the paper's defaults (PIE-Bench's cross-steps 0.4 and self-steps 0.6 for its mapping_file.json).
    """
    from .. import batch as b
    from ...io.loading import BUILTIN

    names = [x.strip() for x in inversions.split(",") if x.strip()] if inversions else None
    if editors and names is None:
        raise InputError("--editors goes with --inversions (the pairs to run); give both, or set the editor with --editing.")
    chosen = [("ddim" if x == "direct" else x) for x in names] if names else [method]
    base, given = controls_base(options)
    whole = base is not None  # a --controls file or "paper": a whole set, in place of the model's recipe
    given = {**(Controls.make(None if base == PAPER else base).to_json() if whole else {}), **given}
    defaults = b.Defaults(method=method, steps=steps, guidance=guidance, direct=direct,
                          controls=given, whole=whole, use_pie_masks=use_pie_masks,
                          settings=method_settings(settings, chosen))
    items = b.read_manifest(manifest, defaults, images)[:limit]
    if names:
        fallback = given.get("editing", "p2p")
        items = b.cross(items, names, [x.strip() for x in (editors or fallback).split(",") if x.strip()], defaults)

    def load_editor(device):  # each process on its own device (accelerate's), unless --device says otherwise
        ctx.obj["device"] = device
        return editor_from(ctx)

    report = b.run(items, out_dir, load_editor, model=ctx.obj["model"] or BUILTIN, device=ctx.obj["device"],
                   weights=dict(clip=clip, dino=dino, lpips=lpips), force=force)
    if report.summary is not None:
        s = report.summary
        for key, value in s["means"].items():
            click.echo(f"  {key:28s} {value:10.4f}  (n={s['counts'][key]})")
        if s.get("mask_given"):
            click.echo(f"  mask given: {s['mask_given']} of {s['ok']} edits were confined to a given mask "
                       "(compare them only with masked rows)")
        click.echo(f"{s['ok']} ok, {s['failed']} failed of {s['items']} items ({report.skipped} already done); "
                   f"wrote {Path(out_dir) / 'results.csv'} and results.jsonl")
        if s["failed"]:  # scripts can tell: exit status 1 (2 is a bad command line)
            click.echo(f"error: {s['failed']} item(s) failed (their rows in results.csv say why); fix them and run "
                       "the same command again to retry only those.", err=True)
            sys.exit(1)


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
    from ..web import serve as run

    run(editor_from(ctx), host=host, port=port)


@main.command()
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="replace OUTPUT if it exists.")
@friendly
def example(output, force):
    """Write a held-out scene of the built-in model to OUTPUT (the README's scene.png) and print its prompt."""
    from ...io.files import check_output, save_image
    from ...shapes import world

    scene = world.Scene("circle", "red", "large", "white", 31, 30)  # never seen in training (scene.split == "test")
    check_output(output, force)
    save_image(world.render(scene), output, replace=force)
    click.echo(f"wrote {output}: {scene.prompt()} (held out from training: {scene.split == 'test'})")


@main.command()
@click.pass_context
@friendly
def vocabulary(ctx):
    """The words the model's tokenizer knows (a word-level one, as the built-in model's), or that it reads any text."""
    from ...core.prompts import known_words

    tokenizer = editor_from(ctx).pipeline.tokenizer
    words = known_words(tokenizer)
    limit = tokenizer.model_max_length - 2
    if words is None:
        click.echo(f"this model's tokenizer reads any text (sub-word pieces), up to {limit} tokens.")
        return
    click.echo(f"this model knows {len(words)} words and reads at most {limit} of them:")
    click.echo(" ".join(words))
