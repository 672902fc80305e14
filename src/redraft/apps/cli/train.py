"""`redraft train ...`: the built-in model, describers and captioners."""

from __future__ import annotations

import click

from .common import friendly, main


@main.group()
def train():
    """Training."""


@train.command("shapes-model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="work folder; run again to resume after a stop.")
def train_shapes_model(out_dir):
    """Train the built-in shapes model from scratch (resumable; 2 to 3 h on 2 CPU cores)."""
    from ...shapes.train import train as run

    click.echo(f"model written to {run(out_dir)}")


@train.command("decoder")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="work folder; run again to resume after a stop.")
@click.option("--from", "source", default=None, type=click.Path(file_okay=False),
              help="a trained shapes model folder (default: the built-in model).")
@click.option("--first-phase", default=1, show_default=True, type=click.IntRange(1),
              help="the recipe's stage 1c phase to start from (the ones before it are in the model already).")
@friendly
def train_decoder(out_dir, source, first_phase):
    """Tune a shapes model's VAE decoder alone against its ghosts, dark frame and rounded tips (stage 1c of
    the recipe; the encoder and the UNet stay as they are). Writes OUT/vae, to put in the model's place."""
    from ...shapes.train import retune_model

    click.echo(f"tuned VAE written to {retune_model(out_dir, source, first=first_phase - 1)}")


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
    from ...describe.train import TrainOptions, train as run

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
    from ...describe.caption import CaptionRecipe, train_captioner as run
    from ...describe.data import open_pairs
    from ...describe.embed import SentenceEmbedder

    recipe = CaptionRecipe(variant=variant, seed=seed, steps=steps, batch_size=batch_size, bce_weight=bce_weight,
                           stages=stages, lr=lr if lr is not None else (1e-5 if base else 2e-3))
    result = run(out_dir, open_pairs(data, seed=seed, n=scenes), recipe, base=base, warmup=warmup,
                 embedder=SentenceEmbedder())
    click.echo(f"captioner written to {result.folder} ({result.seconds / 60:.1f} min of training)")
