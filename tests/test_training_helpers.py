"""The helpers the three trainers share: one warm-up + cosine learning rate (the same numbers as each
trainer's formula before it was shared, so retraining gives the same model), one checkpoint cadence,
and one rule for "a local folder or a hub id"."""

from __future__ import annotations

import math

import pytest

from redraft.core.schedules import warmup_cosine
from redraft.errors import InputError
from redraft.io.checkpoints import Checkpointer
from redraft.io.loading import folder_or_hub_id


def steps_of(total: int) -> list[int]:
    """Every step of a short run; of a long one the first, the warm-up's edge, a spread, the last."""
    if total <= 400:
        return list(range(total))
    return sorted({0, 1, 2, 29, 30, 31, 49, 50, 99, 100, 101, 199, 200, 201, total // 3, total // 2,
                   total - 2, total - 1, *range(0, total, 97)})


# The formulas as each trainer wrote them before `warmup_cosine` (kept here verbatim, as the reference).

def old_describer(step, total, base):  # describe/train.py, cosine_lr
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def old_captioner(step, lr, warmup_steps, steps):  # describe/caption.py, lr_at
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    return lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))


def old_vae(s, lr, n):  # shapes/train.py, train_vae (both phases)
    return lr * 0.5 * (1 + math.cos(math.pi * s / n))


def old_decoder(step, decoder_lr, decoder_steps):  # shapes/train.py, finetune_decoder
    return decoder_lr * min(1, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / decoder_steps))


def old_unet(step, r):  # shapes/train.py, unet_lr
    s = step
    for n, peak, warmup in [(r.unet_steps, r.unet_lr, r.unet_warmup),
                            *((n, lr, r.unet_restart_warmup) for n, lr in
                              [(r.unet_restart_steps, r.unet_restart_lr), *r.unet_more_restarts] if n)]:
        if s < n:
            break
        s -= n
    return peak * min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / n))


@pytest.mark.parametrize("total, base", [(4, 1e-3), (63, 3e-3), (157, 1e-3), (1250, 3e-4), (1, 1e-3)])
def test_describer_learning_rates_are_unchanged(total, base):
    """`Run.go` sets every group's lr to warmup_cosine(step, total, initial_lr): no warm-up."""
    from redraft.describe.train import TrainOptions, cosine_lr

    for step in steps_of(total):
        assert warmup_cosine(step, total, base) == old_describer(step, total, base)
        assert cosine_lr(step, total, base) == old_describer(step, total, base)
    lr = TrainOptions().lr
    assert [warmup_cosine(s, 313, lr) for s in range(313)] == [old_describer(s, 313, lr) for s in range(313)]


@pytest.mark.parametrize("changes", [{}, dict(steps=8, warmup_steps=2, lr=1e-3), dict(steps=40, warmup_steps=0),
                                     dict(steps=5, warmup_steps=30), dict(lr=1e-5, steps=3000, warmup_steps=1)])
def test_captioner_learning_rates_are_unchanged(changes):
    from redraft.describe.caption import CaptionRecipe, lr_at

    r = CaptionRecipe(**changes)
    for step in steps_of(r.steps):
        assert lr_at(step, r) == old_captioner(step, r.lr, r.warmup_steps, r.steps)


@pytest.mark.parametrize("changes", [{}, dict(vae_steps=5, vae_mean_steps=3, decoder_steps=7),
                                     dict(vae_lr=1e-3, vae_mean_lr=3e-4, decoder_steps=40, decoder_lr=2e-3)])
def test_vae_and_decoder_learning_rates_are_unchanged(changes):
    """The VAE's two phases (cosines without warm-up) and the decoder's run (50 warm-up steps), with the
    arguments `train_vae` and `finetune_decoder` pass."""
    from redraft.shapes.train import DECODER_WARMUP, Recipe

    r = Recipe(**changes)
    for step in range(r.vae_steps + r.vae_mean_steps):
        sampled = step < r.vae_steps
        lr, s, n = (r.vae_lr, step, r.vae_steps) if sampled else (r.vae_mean_lr, step - r.vae_steps, r.vae_mean_steps)
        assert warmup_cosine(s, n, lr) == old_vae(s, lr, n)
    for step in range(r.decoder_steps):
        assert warmup_cosine(step, r.decoder_steps, r.decoder_lr, DECODER_WARMUP) == \
            old_decoder(step, r.decoder_lr, r.decoder_steps)


@pytest.mark.parametrize("changes", [{}, dict(unet_steps=1000, unet_warmup=100, unet_lr=1e-3, unet_restart_steps=500,
                                              unet_restart_lr=4e-4, unet_restart_warmup=50),
                                     dict(unet_steps=30, unet_warmup=7, unet_restart_steps=0, unet_more_restarts=()),
                                     dict(unet_steps=20, unet_restart_steps=11, unet_more_restarts=((9, 1e-4), (5, 5e-5)))])
def test_unet_learning_rates_are_unchanged(changes):
    from redraft.shapes.train import Recipe, unet_cycles, unet_lr

    r = Recipe(**changes)
    total = sum(n for n, _, _ in unet_cycles(r))
    for step in steps_of(total) + [n - 1 for n in (r.unet_steps, r.unet_steps + 1, r.unet_steps + r.unet_restart_steps)
                                   if 0 < n <= total]:
        assert unet_lr(step, r) == old_unet(step, r), step


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 1.0, warmup=10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert warmup_cosine(9, 100, 1.0, warmup=10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert warmup_cosine(50, 100, 2.0) == pytest.approx(1.0)
    assert warmup_cosine(0, 100, 2.0, warmup=1) == warmup_cosine(0, 100, 2.0, warmup=0) == 2.0
    assert warmup_cosine(100, 100, 1.0) == 0.0 and warmup_cosine(150, 100, 1.0) == 0.0  # stays at 0


def test_checkpoint_cadence(monkeypatch):
    import redraft.io.checkpoints as C

    now = [1000.0]
    monkeypatch.setattr(C.time, "time", lambda: now[0])
    by_steps = Checkpointer("ckpt.safetensors", every=5)
    assert [s for s in range(1, 16) if by_steps.due(s)] == [5, 10, 15]
    assert by_steps.due(7, force=True) and not by_steps.due(7)
    now[0] += 10 ** 6  # no wall-time rule without minutes
    assert not by_steps.due(7)

    by_time = Checkpointer("ckpt.safetensors", minutes=3)
    now[0] += 179
    assert not by_time.due(1)
    now[0] += 2
    assert by_time.due(2)
    by_time.saved()
    assert not by_time.due(3) and by_time.due(3, force=True)
    both = Checkpointer("ckpt.safetensors", minutes=1, every=4)
    assert both.due(4) and not both.due(5)
    now[0] += 61
    assert both.due(5)


def test_checkpointer_saves_when_due(tmp_path, monkeypatch):
    import torch

    from redraft.io.checkpoints import load_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = Checkpointer(tmp_path / "run.ckpt", minutes=60)
    assert not ckpt.maybe(False, {"m": model}, opt, 1, {}) and not ckpt.path.exists()
    assert ckpt.maybe(True, {"m": model}, opt, 2, {"loss": [1.0]})
    assert load_checkpoint(ckpt.path, {"m": model}, opt) == (2, {"loss": [1.0]})


def test_folder_or_hub_id(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(b"")
    assert folder_or_hub_id(tmp_path / "model") == tmp_path / "model"
    assert folder_or_hub_id(str(tmp_path / "weights.safetensors")) == tmp_path / "weights.safetensors"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert folder_or_hub_id("~/model") == tmp_path / "model"
    monkeypatch.chdir(tmp_path)
    assert folder_or_hub_id("model") == tmp_path.joinpath("model").relative_to(tmp_path)
    assert folder_or_hub_id("owner/name") == "owner/name"
    for bad in ("missing", "a/b/c", "./x/y", "/x/y", "~/x"):
        with pytest.raises(InputError, match="no such folder, and not a hub id of the form owner/name$"):
            folder_or_hub_id(bad)
    with pytest.raises(InputError, match=r"no such file or folder, .*owner/name; give the CLIP weights"):
        folder_or_hub_id("missing", missing="file or folder", hint="; give the CLIP weights")
