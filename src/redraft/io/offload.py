"""diffusers' CPU offloading (through accelerate's hooks) under redraft's editor.

Two modes, diffusers' own:
- "model" (`enable_model_cpu_offload`): each component (text encoders, UNet, VAE) moves whole to the
  execution device when it is called and back to the CPU when the next one in the pipeline's order is;
- "sequential" (`enable_sequential_cpu_offload`): every layer's weights stay in CPU memory and are
  copied to the execution device for the layer's own forward; the modules' parameters are left on the
  meta device in between.

redraft reads neither a parameter's device nor calls `.to()` on a component while offloading is on:
tensors go to `execution_device(pipeline)` (the device the hooks compute on), and weights it reads
(the model fingerprint) come from the hooks' CPU copies (`stored_weight`). Its attention processors are
plain attributes of the attention modules that call the hooked `to_q`, `to_k`, ... layers, so the
hooks fire for them as for diffusers' own processors.
"""

from __future__ import annotations

import torch

from ..errors import InputError

MODES = ("model", "sequential")


def check_mode(mode: str | None) -> str | None:
    """`mode` if it is None (no offloading) or one of `MODES`; else an InputError naming the choices."""
    if mode is not None and mode not in MODES:
        raise InputError(f"unknown offload mode {mode!r}; choose 'model' (enable_model_cpu_offload: one component "
                         f"at a time on the device) or 'sequential' (enable_sequential_cpu_offload: one layer at a "
                         f"time, the least memory), or None for no offloading.")
    return mode


def enable_offload(pipeline, mode: str, device: torch.device | str) -> None:
    """Turn on diffusers' offloading of `mode` onto `device` (the weights go to the CPU first).

    diffusers refuses to guess a CPU device and, given one, names it "cpu:0"; sequential offloading onto
    "cpu:0" breaks inside accelerate (`set_module_tensor_to_device` copies each weight with
    `Parameter.to("cpu:0")`, which gives a plain tensor that the next offload cannot wrap: diffusers'
    own pipeline fails the same way). On a CPU, sequential mode therefore attaches the same accelerate
    hooks as `enable_sequential_cpu_offload` (`accelerate.cpu_offload` per component) with "cpu" as
    the execution device: the weights still live in the hooks' CPU copies and are loaded per layer.
    """
    device = torch.device(device)
    if check_mode(mode) == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif mode == "sequential" and device.type != "cpu":
        pipeline.enable_sequential_cpu_offload(device=device)
    elif mode == "sequential":
        from accelerate import cpu_offload

        pipeline.remove_all_hooks()
        pipeline.to("cpu")
        for name, component in pipeline.components.items():
            if isinstance(component, torch.nn.Module) and name not in pipeline._exclude_from_cpu_offload:
                cpu_offload(component, torch.device("cpu"), offload_buffers=len(component._parameters) > 0)


def execution_device(pipeline) -> torch.device:
    """The device a pipeline's components compute on: with offload hooks, the hooks' execution device (the
    parameters are on the CPU or the meta device); without, the UNet's (a freed component may be on the
    meta device: `bench.scale`). A `cpu:0` is `cpu`."""
    hooked = any(hasattr(m, "_hf_hook") for m in getattr(pipeline, "components", {}).values())
    device = torch.device(pipeline._execution_device) if hooked else pipeline.unet.device
    return torch.device("cpu") if device.type == "cpu" else device


def stored_weight(module: torch.nn.Module, name: str = "weight") -> torch.Tensor:
    """`module`'s parameter `name`, or, when sequential offloading left it on the meta device, the CPU
    copy that its accelerate hook loads from (a tensor on the meta device if there is none)."""
    tensor = getattr(module, name)
    if not tensor.is_meta:
        return tensor
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", (hook,)):
        weights = getattr(h, "weights_map", None)
        if weights is not None and name in weights:
            return weights[name]
    return tensor
