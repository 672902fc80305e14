"""Training checkpoints: a resumed optimizer continues exactly where the saved one was."""

from __future__ import annotations

import torch

from redraft.io.checkpoints import checkpoint_log, load_checkpoint, save_checkpoint


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
    model[1].weight = model[0].weight  # tied, as BLIP's output layer and embeddings are
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 5, (8,), generator=g)
    loss = torch.nn.functional.cross_entropy(model(x), x)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_resume_equals_straight_through(tmp_path):
    straight, opt = make()
    for s in range(4):
        step(straight, opt, s)

    first, opt = make()
    for s in range(2):
        step(first, opt, s)
    save_checkpoint(tmp_path / "run.ckpt", {"model": first}, opt, 2, {"loss": [1.5]})
    resumed, opt = make()
    at, log = load_checkpoint(tmp_path / "run.ckpt", {"model": resumed}, opt)
    assert (at, log) == (2, {"loss": [1.5]}) and checkpoint_log(tmp_path / "run.ckpt") == log
    for s in range(at, 4):
        step(resumed, opt, s)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left behind
