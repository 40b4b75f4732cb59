"""A small training loop for models trained on "the loss of a batch": AdamW, a warm-up then
cosine (or constant) learning rate, optional gradient clipping, a periodic atomic resume state
and an exact resume, a tqdm bar.

The evaluation detectors train with it (``eval.detectors.train_detectors``). The world model's
trainer (``train.trainer``) shares its :class:`Schedule` but keeps its own step loop, for what
this one has no place for: DDP over torchrun, the EMA, per-step noise generators that make a
split run equal a single process, learning-curve snapshots and the JSONL log. Exactness: the
learning rate is a function of the step alone, the resume state holds the modules' weights, the
optimizer and the step, and the caller's ``batches(start)`` yields the batches of steps
``start, start + 1, ...`` fixed up front; so a run stopped and rerun ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import torch
from tqdm import tqdm

from actionparty.atomic import atomic_path


@dataclass(frozen=True)
class Schedule:
    """Learning rate ``lr`` x a linear warm-up over ``warmup_steps`` x the decay over ``steps``."""

    lr: float
    steps: int
    warmup_steps: int
    decay: Literal["cosine", "constant"] = "cosine"

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.decay == "constant":
            return warm
        return warm * 0.5 * (1 + math.cos(math.pi * step / self.steps))

    def at(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based). A constant schedule computes its
        warm-up as ``lr * (step + 1) / warmup_steps`` (the world model's training has always
        done so; another order of the same operations can differ in the last bit)."""
        if self.decay == "constant":
            return self.lr * (step + 1) / self.warmup_steps if self.warmup_steps and step < self.warmup_steps else self.lr
        return self.lr * self.factor(step)


@dataclass
class FitResult:
    step: int  # steps done, resumed ones included
    finished: bool  # step == schedule.steps: the weights are final
    logs: dict[str, float] = field(default_factory=dict)  # the last step's loss terms


def _resume(path: Path, fingerprint: str, modules: dict[str, torch.nn.Module], optimizer) -> int:
    """Load the resume state at ``path`` written for ``fingerprint``; its step (0: none, or
    another run's, which is then overwritten at the first checkpoint)."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        print(f"{path}: written with other settings or data; starting from step 0")
        return 0
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _save(path: Path, fingerprint: str, modules: dict[str, torch.nn.Module], optimizer, step: int) -> None:
    state = {"fingerprint": fingerprint, "step": step, "optimizer": optimizer.state_dict(),
             "modules": {name: module.state_dict() for name, module in modules.items()}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def fit(modules: dict[str, torch.nn.Module], loss_fn: Callable[[dict], tuple[torch.Tensor, dict[str, float]]],
        batches: Callable[[int], Iterable[dict]], schedule: Schedule, resume: str | Path, fingerprint: dict,
        checkpoint_every: int, *, weight_decay: float = 0.0, grad_clip: float | None = None,
        stop_after: int | None = None, progress: bool = True, desc: str = "train") -> FitResult:
    """Train ``modules`` (together, one AdamW over their parameters in order) for
    ``schedule.steps`` steps of ``loss_fn(batch) -> (loss, {term: value})``.

    ``resume``: the resume state, written atomically every ``checkpoint_every`` steps and at the
    last one; a rerun with the same ``fingerprint`` (what makes the state reusable: settings,
    data) continues from it. ``stop_after``: return once this many steps are done in total
    (tests of resuming; ``finished`` is then False). The caller removes ``resume`` once it has
    stored the final weights.
    """
    resume, key = Path(resume), json.dumps(fingerprint, sort_keys=True)
    params = [p for module in modules.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=weight_decay)
    step = _resume(resume, key, modules, optimizer)
    bar = tqdm(total=schedule.steps, initial=step, desc=desc, unit="step", disable=not progress)
    for module in modules.values():
        module.train()
    logs: dict[str, float] = {}
    for batch in batches(step):
        for group in optimizer.param_groups:
            group["lr"] = schedule.at(step)
        loss, logs = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        step += 1
        bar.update()
        bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
        if step % checkpoint_every == 0 or step == schedule.steps:
            _save(resume, key, modules, optimizer, step)
        if stop_after is not None and stop_after <= step < schedule.steps:
            break
    bar.close()
    return FitResult(step, step >= schedule.steps, logs)
