"""`redraft bench ...`: the benchmarks, each printing a table and saving JSON and a chart."""

from __future__ import annotations

from pathlib import Path

import click

from ...errors import InputError
from ...p2p.controls import Controls
from .common import METHOD_SETTING, editor_from, friendly, main, method_settings

PAPER = Controls()  # the defaults of the benchmarks' edits: the P2P paper's


@main.group(invoke_without_command=True)
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench(ctx, out_dir):
    """Benchmarks: print a table, save JSON and a chart. Alone: inversion, editing, generation and
    describe, run small, in one summary table."""
    if ctx.invoked_subcommand is not None:
        return
    from ...bench import summary

    result = summary.run(editor_from(ctx))
    click.echo(summary.table(result))
    click.echo("wrote " + ", ".join(str(p) for p in summary.save(result, Path(out_dir))))


@bench.command("inversion")
@click.option("--images", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL of {\"image\": path, \"prompt\": text}; default: held-out shapes scenes.")
@click.option("-n", "count", default=8, show_default=True, help="shapes scenes to use (without --images).")
@click.option("--steps", default="10,20,50", show_default=True, help="comma-separated step counts.")
@click.option("--methods", default=None, help="comma-separated labels (default: all).")
@click.option("--method-setting", "settings", **METHOD_SETTING)
@click.option("--list", "list_methods", is_flag=True, help="print the method labels and their settings, and stop.")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_inversion(ctx, images, count, steps, methods, settings, list_methods, out_dir):
    """Reconstruction PSNR/SSIM, VAE ceiling, seconds, UNet passes, ratio to the UNet floor, memory."""
    from ...bench import inversion as b
    from ...inversions.methods import SETTINGS

    if list_methods:
        for label, kwargs in b.METHODS.items():
            known = SETTINGS.get(kwargs["method"], {})
            click.echo(f"{label:<24} " + (", ".join(f"{k}={v!r}" for k, v in known.items()) or "(no settings)"))
        return
    labels = choose("method label", methods, list(b.METHODS))
    chosen = method_settings(settings, [b.METHODS[label]["method"] for label in labels])
    step_counts = [int(s) for s in choose_steps(steps)]
    cases = b.cases_from_file(Path(images)) if images else b.shapes_cases(count)
    editor = editor_from(ctx)
    click.echo(b.HEADER)
    result = b.run(editor, cases, labels, step_counts, settings=chosen)
    json_path, png_path = b.save(result, Path(out_dir))
    click.echo(f"wrote {json_path} and {png_path}")


@bench.command("shapes")
@click.option("--generation", "n_generation", default=200, show_default=True, help="prompts to generate.")
@click.option("--edits", "n_edit", default=24, show_default=True, help="scenes to invert and edit, per method.")
@click.option("--describe", "n_describe", default=256, show_default=True, help="scenes to describe (0: none).")
@click.option("--methods", default="negative-prompt,direct,null-text", show_default=True,
              help="inversion methods to edit from; direct = Direct Inversion over DDIM.")
@click.option("--self-steps", default=PAPER.self_replace_steps, show_default=True, help="self_replace_steps of the edits.")
@click.option("--cross-steps", default=PAPER.cross_replace_steps, show_default=True, help="cross_replace_steps of the edits.")
@click.option("--blend", is_flag=True, help="blend every edit locally (LocalBlend) on the changed part's words.")
@click.option("--self-resolution", type=click.IntRange(min=0), default=None,
              help="self_max_resolution of the edits (default: the reference's, half the latent's side for inverted images).")
@click.option("--layout-guidance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="layout guidance step size of the edits (0: off).")
@click.option("--layout-steps", default=0.5, show_default=True, help="fraction of the steps layout guidance acts on.")
@click.option("--feature-steps", type=click.FloatRange(min=0, max=1), default=0.0, show_default=True,
              help="feature_replace_steps of the edits (Plug-and-Play feature injection; 0: off).")
@click.option("--background-feature-steps", type=click.FloatRange(min=0, max=1), default=None,
              help="feature_replace_steps of the background edits (swaps and added backgrounds; default: "
                   "--feature-steps). The demo's: 0, since a new background changes what the features keep.")
@click.option("--recipe", "--demo-controls", "recipe", is_flag=True,
              help="edit with no controls passed: the model's editing recipe chooses them for each kind of edit "
                   "(p2p.recipe), instead of the options above.")
@click.option("--masks", is_flag=True, help="region edits instead (redraft.bench.masks): masked and unmasked colour, "
              "shape and background swaps with the model's recipe, PSNR outside the mask (--edits scenes).")
@click.option("--guidance", type=click.FloatRange(min=0), default=None,
              help="classifier-free guidance scale of generation and inversion (default: the model's).")
@click.option("--seed", default=3, show_default=True,
              help="seed of the held-out scenes and prompts: 3 is the benchmark's; choose controls on another.")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_shapes(ctx, n_generation, n_edit, n_describe, methods, self_steps, cross_steps, blend, self_resolution,
                 layout_guidance, layout_steps, feature_steps, background_feature_steps, recipe, masks, guidance, seed,
                 out_dir):
    """The built-in model against the shapes world (held-out scenes): generation, VAE, inversion, editing, describe."""
    from ...bench import shapes as b
    from ...shapes.world import BACKGROUND_KINDS

    if masks:
        from ...bench import masks as m
        from ...io.files import write_json

        result = m.run(editor_from(ctx), n_edit, seed=seed)
        click.echo(m.table(result))
        click.echo(f"wrote {write_json(Path(out_dir) / 'masks.json', result)}")
        return
    controls = dict(self_replace_steps=self_steps, cross_replace_steps=cross_steps, self_max_resolution=self_resolution,
                    layout_guidance=layout_guidance, layout_guidance_steps=layout_steps, feature_replace_steps=feature_steps)
    by_kind = {} if background_feature_steps is None else {
        kind: {"feature_replace_steps": background_feature_steps} for kind in BACKGROUND_KINDS}
    if recipe:
        given = [f"--{name.replace('_', '-')}" for name in ("self_steps", "cross_steps", "self_resolution", "layout_guidance",
                                                            "layout_steps", "feature_steps", "background_feature_steps")
                 if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--recipe leaves every control to the model's recipe; leave out {', '.join(given)}, "
                                   "or --recipe.")
        controls, by_kind = {}, {}  # `Editor.edit` with no controls: the recipe's, per kind (--methods: the inversion)
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
    from ...bench import describe as b

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
    from ...bench import caption as b
    from ...describe.caption import CaptionRecipe

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
    from ...bench import describe as b

    if not ctx.obj.get("describer"):
        raise InputError("give the describer whose U-Net encoder to try: redraft --describer FOLDER bench discovery")
    result = b.discovery(editor_from(ctx), ctx.obj["describer"], count, steps=steps, from_step=from_step)
    click.echo(b.discovery_table(result))
    out = Path(out_dir) / "discovery.json"
    b.save(result, Path(out_dir), name="discovery.json")
    click.echo(f"wrote {out}")


@bench.command("matrix")
@click.option("--scenes", "n", default=8, show_default=True, type=click.IntRange(min=1),
              help="held-out scenes of the built-in model (each inverted once per inversion).")
@click.option("--inversions", default=None, help="comma-separated inversions (default: every one of "
              "redraft.inversions.METHODS, and direct = Direct Inversion over DDIM).")
@click.option("--editors", default=None, help="comma-separated editors (default: p2p,masactrl,pnp).")
@click.option("--kinds", default="color,shape,background", show_default=True,
              help="comma-separated edit kinds (swaps: color, shape, size, background).")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1), help="sampling steps.")
@click.option("--seed", default=3, show_default=True, help="seed of the held-out scenes (choose settings on another).")
@click.option("--method-setting", "settings", **METHOD_SETTING)
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_matrix(ctx, n, inversions, editors, kinds, steps, seed, settings, out_dir):
    """Every inversion x editor pair: reconstruction PSNR vs the VAE ceiling, edits right with the position
    kept per kind, background PSNR, seconds, UNet passes, ratio to the floor. Resumes a stopped run."""
    from ...bench import matrix as b
    from ...p2p.controls import EDITORS
    from ...shapes.world import SWAPS

    methods = choose("inversion", inversions, b.inversions())
    chosen = choose("editor", editors, list(EDITORS))
    kinds = choose("edit kind", kinds, list(SWAPS))
    per_method = method_settings(settings, methods)
    result = b.run(editor_from(ctx), n, methods, chosen, kinds, steps=steps, seed=seed, out_dir=Path(out_dir),
                   method_settings=per_method)
    click.echo(b.table(result))
    click.echo("wrote " + ", ".join(str(p) for p in b.save(result, Path(out_dir))))


def choose_steps(text: str) -> list[int]:
    """--steps: comma-separated whole numbers of at least 1, or an error saying so."""
    try:
        counts = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise InputError(f"--steps takes comma-separated step counts of at least 1 (e.g. 10,20,50); got {text!r}.")
    return counts


def choose(what: str, given: str | None, known: list[str]) -> list[str]:
    """The comma-separated names of `given` (None: all of `known`), or an error listing the known ones."""
    names = [x.strip() for x in given.split(",") if x.strip()] if given else list(known)
    unknown = [x for x in names if x not in known]
    if unknown or not names:
        raise InputError(f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; the {what}s are: {', '.join(known)}.")
    return names


@bench.command("scale")
@click.option("--family", type=click.Choice(["sd15", "sd21-v", "sdxl"]), required=True,
              help="the architecture to build from its published configuration, with random weights.")
@click.option("--steps", type=click.IntRange(min=1), default=2, show_default=True, help="sampling steps (keep it small on a CPU).")
@click.option("--inner-steps", type=click.IntRange(min=0), default=2, show_default=True, help="null-text's inner steps.")
@click.option("--methods", default=",".join(("ddim", "negative-prompt", "null-text", "direct", "p2p-swap")),
              show_default=True, help="comma-separated: ddim, negative-prompt, null-text, direct, p2p-swap.")
@click.option("--dtype", "dtype_name", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="the UNet's and text encoders' dtype (the VAE stays fp32). On a CPU without bf16 units, fp32.")
@click.option("--out", "out_dir", default="out/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
@friendly
def bench_scale(ctx, family, steps, inner_steps, methods, dtype_name, out_dir):
    """Full-size architecture, random weights, native size: seconds, UNet samples, ratio to the bare
    floor and peak memory per method (DDIM, NPI, NTI, Direct, a P2P swap edit)."""
    import torch

    from ...bench import scale

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    device = ctx.obj["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    result = scale.run(family, steps=steps, inner_steps=inner_steps, methods=methods.split(","), dtype=dtype,
                       device=device)
    click.echo(scale.table(result))
    click.echo(f"built in {result['build_seconds']:.0f} s, {result['total_seconds']:.0f} s in all; "
               f"wrote {scale.save(result, Path(out_dir))}")
