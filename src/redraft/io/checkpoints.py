"""Training checkpoints: modules, optimizer state and progress in one safetensors file, written atomically.

Used by every trainer here (the shapes model, the captioner, the describer), so that a run stopped at any
point resumes where its last checkpoint was. No pickle: the optimizer's tensors are tensors, the rest is
JSON metadata. `Checkpointer` is when they save: at the steps a trainer forces, every so many steps, and
every few minutes of wall time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, step: int, log: dict,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write the modules' weights, the optimizer's state, the step, the log and any `extra` tensors
    (read back by `checkpoint_extra`). Tensors are cloned, since safetensors refuses tensors that share
    memory (BLIP ties its output layer to its embeddings)."""
    tensors = {f"{name}.{k}": v.detach().cpu().clone() for name, m in modules.items() for k, v in m.state_dict().items()}
    tensors |= {f"extra.{k}": v.detach().cpu().clone() for k, v in (extra or {}).items()}
    state = optimizer.state_dict()
    for idx, s in state["state"].items():
        for k, v in s.items():
            tensors[f"optimizer.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().clone()
    meta = {"step": str(step), "log": json.dumps(log), "param_groups": json.dumps(state["param_groups"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer) -> tuple[int, dict]:
    """Restore what `save_checkpoint` wrote into `modules` and `optimizer`; returns (step, log)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    state: dict = {"state": {}, "param_groups": json.loads(meta["param_groups"])}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, idx, name = k.split(".", 2)
            state["state"].setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict(state)
    return int(meta["step"]), json.loads(meta["log"])


def checkpoint_extra(path: Path) -> dict[str, torch.Tensor]:
    """The `extra` tensors saved with a checkpoint."""
    with safe_open(str(path), "pt") as f:
        return {k.removeprefix("extra."): f.get_tensor(k) for k in f.keys() if k.startswith("extra.")}


def checkpoint_log(path: Path) -> dict:
    """The log stored in a checkpoint, without loading its tensors."""
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["log"])


class Checkpointer:
    """When a trainer writes its checkpoint `path`: at the steps it forces (the end of the run, of an
    epoch, of a cycle), every `every` steps, and once `minutes` of wall time have passed since the last
    save (or since this was made), so that a stop costs minutes, not hours. None turns a rule off."""

    def __init__(self, path: Path, minutes: float | None = None, every: int | None = None):
        self.path, self.every = Path(path), every
        self.seconds = None if minutes is None else minutes * 60
        self.last = time.time()

    def due(self, step: int, force: bool = False) -> bool:
        """Whether to save after `step` (call `saved` once saved)."""
        return (force or (self.every is not None and step % self.every == 0)
                or (self.seconds is not None and time.time() - self.last > self.seconds))

    def saved(self) -> None:
        """Restart the wall-time clock: a checkpoint was just written."""
        self.last = time.time()

    def maybe(self, force: bool, modules: dict[str, torch.nn.Module], optimizer, step: int, log: dict,
              extra: dict[str, torch.Tensor] | None = None) -> bool:
        """`save_checkpoint` to `path` when `due(step, force)`; True when it saved."""
        if not self.due(step, force):
            return False
        save_checkpoint(self.path, modules, optimizer, step, log, extra)
        self.saved()
        return True
