"""Where tensor work runs: the GPU when there is one, else the CPU; ``--device`` checked."""

from __future__ import annotations

import torch

from actionparty.errors import UserError


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None, option: str = "--device") -> str:
    """``name`` (cpu, cuda or cuda:N; None: :func:`default_device`) if this machine has it, else
    a UserError naming ``option``."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} {name}: not a device (cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} {name}: no CUDA GPU is available here (use {option} cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return str(device)
