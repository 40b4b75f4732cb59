"""The training loop: deterministic global batches, AdamW, EMA, clipping, checkpoints, JSONL log.

Layout of a run's output folder ``out``::

    out/checkpoint.pt         final checkpoint (written last: its presence means the run finished)
    out/train_log.jsonl       one JSON object per logged step (copied from work/ at the end)
    out/work/last.pt          latest periodic checkpoint; a rerun resumes from it exactly
    out/work/train_log.jsonl  the log while training

Each step's global batch of clip indices and its noise come from generators seeded by
(seed, step), so a resumed run and a run split over torchrun processes see exactly what an
uninterrupted single-process run sees.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from actionparty.atomic import write_text
from actionparty.config import FinetuneConfig, Profile, TrainConfig
from actionparty.data.latent_cache import CachedLatentClips, LatentCache, codec_identity, dataset_identity
from actionparty.data.lmdb_dataset import ClipDataset, split_first_step
from actionparty.errors import UserError
from actionparty.games.actions import PLAYER_SLOTS
from actionparty.model.checkpoint import (
    check_compatible,
    PRETRAIN_STAGE,
    SOURCE_KEYS,
    list_snapshots,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    snapshot_path,
)
from actionparty.model.conditioning import STATE_DIM
from actionparty.train.distributed import DistInfo, init_distributed, rank_slice, shutdown_distributed, step_generator
from actionparty.train.ema import EMA
from actionparty.train.loop import Schedule
from actionparty.train.objective import (
    ClipNoise,
    draw_context_noise,
    draw_noise,
    draw_own_frame,
    draw_state_sigmas,
    flow_matching_loss,
)


# Up to this many clips a batch is the head of a random permutation; above it (paper: 18.5 M
# windows, where one permutation takes about a second) draws are rejected when repeated, which
# costs O(batch) instead of O(clips). Both are uniform without replacement within a batch.
PERMUTATION_MAX_ITEMS = 1 << 20


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start..steps-1``, this rank's slice of the global batch of step s,
    drawn uniformly (without replacement within a batch) from a generator seeded by (seed, s)."""

    def __init__(self, num_items: int, global_batch: int, seed: int, start: int, steps: int, part: slice):
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.start, self.steps, self.part = start, steps, part

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def batch(self, step: int) -> list[int]:
        return self.global_indices(step)[self.part]

    def global_indices(self, step: int) -> list[int]:
        """The global batch of ``step`` (every rank's slices)."""
        g = step_generator(self.seed, step, stream=1)
        if self.global_batch > self.num_items:
            return torch.randint(self.num_items, (self.global_batch,), generator=g).tolist()
        if self.num_items <= PERMUTATION_MAX_ITEMS:
            return torch.randperm(self.num_items, generator=g)[: self.global_batch].tolist()
        drawn: dict[int, None] = {}  # insertion-ordered: the draws in the order first drawn
        while len(drawn) < self.global_batch:
            drawn.update(dict.fromkeys(torch.randint(self.num_items, (self.global_batch - len(drawn),),
                                                     generator=g).tolist()))
        return list(drawn)

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.batch(step)


@dataclass
class TrainJob:
    """One training run of a profile's model on an LMDB."""

    profile: Profile
    cfg: TrainConfig
    train_lmdb: Path
    out: Path
    stage: str  # "pretrain" or a finetune variant name (recorded in the checkpoint)
    build: Callable  # (profile, device) -> (model, frame_codec, text_conditioner)
    init_from: Path | None = None  # checkpoint whose (EMA) weights initialise the model
    stop_after: int | None = None  # stop after this many steps of this invocation (tests: a "kill")
    progress: bool = True
    extra_meta: dict = field(default_factory=dict)


def _own_contexts(core, first: dict, g: torch.Generator, cfg: TrainConfig, part: slice, shape, codec, text,
                  games: list[str], device):
    """Self-generated contexts: which of this rank's clips get one (a ``cfg.self_context`` share
    of the global batch) and the model's own drawing of their context frame from the frame
    before it (:func:`draw_own_frame`); None when no clip does. Draws from ``g`` in the same
    order on every rank, so a split run sees what a single process sees."""
    b = cfg.batch_size
    chosen = torch.rand((b,), generator=g) < cfg.self_context
    noise = torch.randn((b, shape[1], 1, *shape[3:]), generator=g)
    state_noise = torch.randn((b, 1, PLAYER_SLOTS, STATE_DIM), generator=g) if core.has_state else None
    pick = chosen[part].nonzero().flatten()
    if not len(pick):
        return None
    sub = {k: v[pick] for k, v in first.items()}
    if "lead_latents" in sub:  # read from the latent cache
        context = sub["lead_latents"].to(device)
    else:
        with torch.no_grad():  # only the frame before the context: the context's own latent is redrawn
            context = codec.encode(sub["frames"][:, :1].to(device))
    emb, emb_mask = text([games[int(i)] for i in sub["game"]], actions=sub["actions"], present=sub["present"],
                         device=device)
    drawn = draw_own_frame(core, context, emb, emb_mask, core.clip_inputs(sub, device), noise[part][pick].to(device),
                           None if state_noise is None else state_noise[part][pick].to(device),
                           cfg.self_context_steps, cfg.timestep_shift)
    return pick.to(device), drawn


def _draw_clip_noise(core, cfg: TrainConfig, step: int, latent_shape, part: slice, device) -> tuple[ClipNoise, torch.Generator]:
    """This rank's part of the step's :class:`ClipNoise` (drawn for the global batch from the
    (seed, step) generator), and the generator, for the self-generated contexts that follow."""
    g = step_generator(cfg.seed, step, stream=2)
    chunks = cfg.clip_steps // core.chunk_frames
    sigma, noise, state_noise = draw_noise(
        g, cfg.batch_size, chunks, (latent_shape[1], cfg.clip_steps, *latent_shape[3:]), cfg.timestep_shift,
        (cfg.clip_steps, PLAYER_SLOTS, STATE_DIM) if core.has_state else None)
    state_sigma = (draw_state_sigmas(g, cfg.batch_size, chunks, cfg.state_timestep_shift, cfg.state_clean_fraction)
                   if core.state_first else None)
    context_sigma = context_noise = None
    if cfg.context_noise > 0:
        context_sigma, context_noise = draw_context_noise(g, cfg.batch_size, (latent_shape[1], 1, *latent_shape[3:]),
                                                          cfg.context_noise)
        context_sigma, context_noise = context_sigma[part].to(device), context_noise[part].to(device)
    mine = lambda t: None if t is None else t[part].to(device)  # noqa: E731
    return ClipNoise(mine(sigma), mine(noise), mine(state_noise), mine(state_sigma), context_sigma, context_noise), g


def train(job: TrainJob) -> Path:
    info: DistInfo = init_distributed()
    try:
        return _train(job, info)
    finally:
        shutdown_distributed()


@dataclass
class _Run:
    """The files of a run (see the module docstring) and what makes it resumable."""

    out: Path
    signature: dict = field(default_factory=dict)  # the settings a periodic checkpoint must match
    meta: dict = field(default_factory=dict)  # written into every checkpoint

    @property
    def final(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def last(self) -> Path:
        return self.out / "work" / "last.pt"

    @property
    def log(self) -> Path:
        return self.out / "work" / "train_log.jsonl"


def _initialise(job: TrainJob, model, run: _Run, info: DistInfo) -> None:
    """Weights a fresh run starts from: official Wan2.1 weights (pretraining with
    ``model.init_checkpoint``) or the (EMA) weights of ``job.init_from`` (a finetune's exp-138)."""
    profile = job.profile
    if job.init_from is None and profile.model.init_checkpoint and not run.last.is_file():
        # New modules are reported, not silently dropped.
        from actionparty.model.checkpoint_io import load_wan_checkpoint

        report = load_wan_checkpoint(model.dit, profile.model.init_checkpoint)
        if info.is_main:
            print(report.summary())
    if job.init_from is not None:
        # A finetune starts from exp-138 of the same games, never from another finetune.
        init_state = load_checkpoint(job.init_from, stage=PRETRAIN_STAGE, games=run.meta["games"])
        # A recipe's chunk length is attention's unit, not a weight: any exp-138 chunking initialises it.
        check_compatible(job.init_from, init_state, profile.model.model_dump(), ignore=("chunk_frames",))
        report = load_model_weights(model, init_state, strict=False)
        if info.is_main and (report.missing_keys or report.unexpected_keys):
            print(f"init from {job.init_from}: new {len(report.missing_keys)} tensors "
                  f"({', '.join(sorted({k.split('.')[0] for k in report.missing_keys}))}), "
                  f"unexpected {len(report.unexpected_keys)}")


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, modulation tables, biases and embeddings' 1-d tensors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name or "modulation" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))


def _resume(run: _Run, model, ema: EMA, optimizer, info: DistInfo) -> int:
    """The step to start from: that of ``work/last.pt`` when it was written with the same
    settings (its weights, EMA and optimizer restored), else 0; log lines past it are dropped."""
    state = None
    if run.last.is_file():
        try:
            state = load_checkpoint(run.last)
            why = None if state.get("run_signature") == run.signature else "written with other training settings"
        except UserError as err:  # e.g. cut short by a full disk: nothing to resume from
            why = str(err).split(": ", 1)[-1]
        if why is not None:
            # A periodic checkpoint that cannot be resumed exactly: start over.
            state = None
            if info.is_main:
                print(f"{run.last}: {why}; starting from step 0")
                run.last.unlink()
        if info.world_size > 1:
            torch.distributed.barrier()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        if info.is_main:
            print(f"resuming from {run.last} at step {start}")
    if info.is_main and start == 0:  # a fresh run: snapshots of an earlier run are not its curve
        for _, stale in list_snapshots(run.out):
            stale.unlink()
    if info.is_main and run.log.exists():  # drop log lines past the resumed step (and a line cut short)
        lines = [line for line in run.log.read_text().splitlines() if _logged_step(line) <= start]
        write_text(run.log, "".join(line + "\n" for line in lines))
    return start


def _logged_step(line: str) -> float:
    """The step of a log line; a line a kill cut short (not JSON) counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def _train(job: TrainJob, info: DistInfo) -> Path:
    """Build, initialise or resume, then train ``job`` to its last step (see the module docstring).

    One function on purpose: setup, the step loop and the final write read top to bottom as the
    life of a run; the details of each are the helpers above (_initialise, _resume, _StepLoss, _Log)."""
    cfg, profile, device = job.cfg, job.profile, info.device
    torch.set_num_threads(profile.resources.train_threads)
    run = _Run(Path(job.out))
    # Learning-curve snapshots: finetunes of the variants in finetune.curve_variants only.
    finetune = isinstance(cfg, FinetuneConfig)
    snapshot_every = cfg.curve_every if finetune and job.stage in cfg.curve_variants else 0
    if info.is_main:
        (run.out / "work").mkdir(parents=True, exist_ok=True)
        if finetune:  # a finetune: its snapshots folder exists even when it keeps none
            (run.out / "snapshots").mkdir(exist_ok=True)

    # Self-generated contexts need the frame before each clip's context: clips one step longer.
    lead = 1 if cfg.self_context > 0 else 0
    dataset = ClipDataset(job.train_lmdb, clip_steps=cfg.clip_steps + lead, expect_canvas_px=profile.canvas_px)
    if profile.model.latent_cache is not None:  # the clips' latents, encoded once (rule latents)
        cache = LatentCache(profile.model.latent_cache, codec_identity(profile.model), dataset_identity(job.train_lmdb))
        dataset = CachedLatentClips(dataset, cache, lead)
        if info.is_main:
            print(f"{cache.folder}: the clips' latents are read from {len(cache.shards)} shards (nothing is encoded)")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, codec, text = job.build(profile, device)
    # What the checkpoint records is what the run computed: not where its jobs ran (resources) nor
    # where a value was read from (SOURCE_KEYS), so neither changes a checkpoint's bytes.
    run.signature = {"train": cfg.model_dump(), "model": profile.model.model_dump(exclude=set(SOURCE_KEYS)),
                     "stage": job.stage, "games": dataset.games, "init_from": str(job.init_from), **job.extra_meta}
    run.meta = {"profile": profile.model_dump(exclude={"resources": True, "model": set(SOURCE_KEYS)}),
                "stage": job.stage, "games": dataset.games,
                "train_clip_steps": cfg.clip_steps, "run_signature": run.signature, **job.extra_meta}
    _initialise(job, model, run, info)
    optimizer = _optimizer(model, cfg)
    ema = EMA(model, cfg.ema_decay)
    start = _resume(run, model, ema, optimizer, info)

    core = model
    if info.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)
    part = rank_slice(cfg.batch_size, info)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, start, cfg.steps, part)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         persistent_workers=False)
    loss_of = _StepLoss(model, core, codec, text, dataset.games, cfg, part, device, lead,
                        bf16=profile.model.precision == "bf16" and device.type == "cuda")
    schedule = Schedule(cfg.lr, cfg.steps, cfg.warmup_steps, decay="constant")
    log = _Log(run.log if info.is_main else None, job.progress and info.is_main, cfg, start, job.stage)
    step = start
    try:
        for step, batch in zip(range(start, cfg.steps), loader):
            if job.stop_after is not None and step - start >= job.stop_after:
                break
            for group in optimizer.param_groups:
                group["lr"] = schedule.at(step)
            result, latents = loss_of(step, batch)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.update(core)
            done = step + 1
            log.step(done, result.stats, grad_norm, schedule.at(step),
                     latents.shape[0] * latents[0, 0].numel() * info.world_size)
            if info.is_main and snapshot_every and done % snapshot_every == 0 and done < cfg.steps:
                # EMA weights only: a learning-curve point (actionparty curve), not a resume state.
                save_checkpoint(snapshot_path(run.out, done), model=core.state_dict(), ema=ema.state_dict(),
                                step=done, **run.meta)
            if info.is_main and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save_checkpoint(run.last, model=core.state_dict(), ema=ema.state_dict(),
                                optimizer=optimizer.state_dict(), step=done, **run.meta)
            step = done
    finally:
        log.close()
    if step >= cfg.steps and info.is_main:
        write_text(run.out / "train_log.jsonl", run.log.read_text())
        save_checkpoint(run.final, model=core.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                        step=step, **run.meta)
        run.last.unlink(missing_ok=True)  # finished: nothing to resume (a rerun trains afresh)
    return run.final


@dataclass
class _StepLoss:
    """``(step, batch) -> (LossOutput, latents)``: one step's loss on this rank's part of the batch
    (latents encoded, text, the step's noise, self-generated contexts, the flow-matching loss)."""

    model: torch.nn.Module  # what the loss runs through (DDP-wrapped in a split run)
    core: torch.nn.Module  # the model itself
    codec: object
    text: object
    games: list[str]
    cfg: TrainConfig
    part: slice
    device: torch.device
    lead: int  # 1: clips carry the frame before the context (self-generated contexts)
    bf16: bool

    def __call__(self, step: int, batch: dict):
        core, cfg, device = self.core, self.cfg, self.device
        if self.lead:
            first, batch = split_first_step(batch)
        if "latents" in batch:  # read from the latent cache
            latents = batch["latents"].to(device)
        else:
            with torch.no_grad():
                latents = self.codec.encode(batch["frames"].to(device))
        emb, emb_mask = self.text([self.games[int(g)] for g in batch["game"]], actions=batch["actions"],
                                  present=batch["present"], device=device)
        noise, g = _draw_clip_noise(core, cfg, step, latents.shape, self.part, device)
        if self.lead:
            own = _own_contexts(core, first, g, cfg, self.part, latents.shape, self.codec, self.text, self.games,
                                device)
            if own is not None:
                pick, drawn = own
                latents[pick, :, :1] = drawn
        clip = core.clip_inputs(batch, device)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext():
            return flow_matching_loss(self.model, latents, emb, emb_mask, cfg, noise, clip), latents


class _Log:
    """The JSONL training log (main process) and the progress bar."""

    def __init__(self, path: Path | None, progress: bool, cfg: TrainConfig, start: int, stage: str):
        self.cfg = cfg
        self.file = open(path, "a") if path is not None else None
        self.bar = tqdm(total=cfg.steps, initial=start, desc=f"train {stage}", unit="step", disable=not progress)
        self.t_last, self.tokens_since = time.perf_counter(), 0

    def step(self, done: int, stats: dict, grad_norm, lr: float, tokens: int) -> None:
        self.tokens_since += tokens
        self.bar.update()
        if self.file is None or not (done % self.cfg.log_every == 0 or done == self.cfg.steps):
            return
        now = time.perf_counter()
        record = {"step": done, **stats, "grad_norm": float(grad_norm), "lr": lr,
                  "tokens_per_s": round(self.tokens_since / max(now - self.t_last, 1e-9), 1)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        self.t_last, self.tokens_since = now, 0

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()
