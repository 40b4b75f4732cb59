"""Memory and time estimates of a profile's training and rollout jobs, from the real model built
on the meta device (no memory, no weights needed): tokens per clip, parameters, optimizer state,
activations with gradient checkpointing, FLOPs per step; for a rollout job, the passes of every
step over the test windows, the KV cache and the host memory of reading the checkpoint.
docs/TRAINING.md and docs/SLURM.md show the arithmetic."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

from actionparty.config import Profile
from actionparty.variants import VariantConfig, variant_profile
from actionparty.games.actions import PLAYER_SLOTS

GB = 1e9


@dataclass
class TrainingEstimate:
    profile: str
    stage: str
    parameters: int
    latent_side: int  # latent pixels per side of one frame
    tokens_per_frame: int
    frames_per_clip: int  # 1 context + clip_steps
    video_tokens_per_clip: int
    state_tokens_per_clip: int
    tokens_per_clip: int
    text_tokens: int
    clips_per_gpu: int
    weights_gb: float  # fp32 master weights
    grads_gb: float
    adam_gb: float
    ema_gb: float
    activations_gb_per_clip: float  # stored block inputs (checkpointing) + one block's peak
    text_encoder_gb: float  # umT5 held by the job (fp32, as loaded), 0 when model.text_cache serves it
    codec_gb: float  # the frame codec's weights (the Wan VAE in fp32, as loaded; its activations are not counted)
    memory_gb_per_gpu: float
    flops_per_clip: float  # forward + backward (+ recompute), matmuls and attention
    # The codec encoding each clip drawn (the Wan VAE); 0 when model.latent_cache serves the latents.
    encode_flops_per_clip: float
    hours_at_40pct_h100: float  # the whole stage on the profile's GPUs: the DiT at 40% of 989 TFLOP/s
    # bf16, the encoder (fp32 weights, TF32 convolutions) at 40% of 495 TFLOP/s

    def as_dict(self) -> dict:
        return asdict(self)


def build_on_meta(profile: Profile, variant: VariantConfig | None = None):
    """The profile's DiT (and action modules) on the meta device, with the codec's real shapes."""
    from actionparty.model.dit import make_dit
    from actionparty.model.conditioning import StateGrid, build_conditioning
    from actionparty.model.world import WorldModel

    cfg = profile.model
    latent_channels, factor, patch = (16, 8, (1, 2, 2)) if cfg.codec == "wan-vae" else (192, 8, (1, 1, 1))
    text_dim = 4096 if cfg.text_encoder == "umt5" else 64
    side = (cfg.resolution or profile.canvas_px) // factor
    with torch.device("meta"):
        dit = make_dit(cfg.size, in_dim=latent_channels, out_dim=latent_channels, text_dim=text_dim,
                       text_len=cfg.text_len, patch_size=patch, chunk_frames=cfg.chunk_frames)
        if variant is None:
            model = WorldModel(dit, None, None, cfg.prediction, cfg.residual_prior)
        else:
            grid = StateGrid(profile.canvas_cells, side // patch[1])
            model = WorldModel(dit, build_conditioning(variant.conditioning, dit, grid), grid,
                               cfg.prediction, cfg.residual_prior)
    return model, side


def text_encoder_bytes(profile: Profile, variant: VariantConfig | None = None) -> int:
    """Bytes of the text encoder a training or rollout job of ``variant`` holds: umT5 in fp32 (as
    the factory loads it) unless ``model.text_cache`` serves the games' embeddings, which it does
    for every model but Text-Action (its prompts carry the actions); the tiny encoder counts 0."""
    if profile.model.text_encoder != "umt5":
        return 0
    with_actions = variant is not None and variant.conditioning.kind == "text"
    if profile.model.text_cache is not None and not with_actions:
        return 0
    from actionparty.model.text import umt5_parameters

    return umt5_parameters() * 4


def codec_bytes(profile: Profile) -> int:
    """Bytes of the frame codec's weights a job holds: the Wan VAE in fp32 (as the factory loads
    it) for ``wan-vae``; the pixel codec has none."""
    if profile.model.codec != "wan-vae":
        return 0
    from actionparty.model.codecs import wan_vae_parameters

    return wan_vae_parameters() * 4


H100_BF16, H100_TF32 = 989e12, 495e12  # dense peak FLOP/s


def encode_flops(profile: Profile, clip_steps: int) -> float:
    """FLOPs of encoding one clip (1 context + ``clip_steps`` steps) with the profile's codec,
    counted on the meta device: the Wan VAE (Wan2.1's configuration) on the clip's video at the
    model's resolution; 0 for the pixel codec (a reshape)."""
    if profile.model.codec != "wan-vae":
        return 0.0
    return _wan_vae_encode_flops(profile.model.resolution or profile.canvas_px, clip_steps)


@functools.lru_cache(maxsize=None)
def _wan_vae_encode_flops(side: int, clip_steps: int) -> float:
    from diffusers import AutoencoderKLWan
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKLWan()
        frames_per_step = 2 ** sum(bool(d) for d in vae.config.temperal_downsample)
        video = torch.empty(1, 3, 1 + frames_per_step * clip_steps, side, side)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.encode(video)
    return float(counter.get_total_flops())


def estimate(profile: Profile, variant: VariantConfig | None = None) -> TrainingEstimate:
    profile = variant_profile(profile, variant)  # a variant's recipe (its clips) where it has one
    train = profile.pretrain if variant is None else profile.finetune
    model, side = build_on_meta(profile, variant)
    d = model.dit.config
    params = sum(p.numel() for p in model.parameters())
    tokens_per_frame = (side // d.patch_size[1]) * (side // d.patch_size[2])
    frames = 1 + train.clip_steps
    video = frames * tokens_per_frame
    state = frames * PLAYER_SLOTS if variant is not None and variant.conditioning.kind == "subject" else 0
    n = video + state
    gpus = max(profile.resources.train_gpus, 1)
    clips_per_gpu = max(train.batch_size // gpus, 1)
    act_bytes = 2 if profile.model.precision == "bf16" else 4
    # Checkpointing keeps each block's fp32 input; recomputing one block needs its largest
    # intermediates (q, k, v, o and the FFN hidden layer) in the compute dtype.
    stored = d.num_layers * n * d.dim * 4
    block_peak = n * (5 * d.dim + d.ffn_dim) * act_bytes
    activations = (stored + block_peak if profile.model.gradient_checkpointing
                   else d.num_layers * (stored / d.num_layers + block_peak))
    weights = params * 4
    text, codec = text_encoder_bytes(profile, variant), codec_bytes(profile)
    # w, grad, Adam m+v, EMA, activations, and the frozen parts the job holds
    memory = weights * 2 + weights * 2 + weights + clips_per_gpu * activations + text + codec
    # FLOPs: 2 per multiply-add; fwd + 2x bwd = 3x fwd (+1 fwd recompute with checkpointing).
    matmul_fwd = 2 * params * n
    attention_fwd = d.num_layers * 4 * n * n * d.dim + d.num_layers * 4 * n * d.text_len * d.dim
    passes = 4 if profile.model.gradient_checkpointing else 3
    flops = passes * (matmul_fwd + attention_fwd)
    encode = 0.0 if profile.model.latent_cache is not None else encode_flops(profile, train.clip_steps)
    seconds_per_clip = flops / (0.4 * H100_BF16) + encode / (0.4 * H100_TF32)
    hours = seconds_per_clip * train.batch_size * train.steps / gpus / 3600
    return TrainingEstimate(
        profile=profile.profile, stage="pretrain" if variant is None else f"finetune:{variant.experiment}",
        parameters=params, latent_side=side, tokens_per_frame=tokens_per_frame, frames_per_clip=frames,
        video_tokens_per_clip=video, state_tokens_per_clip=state, tokens_per_clip=n, text_tokens=d.text_len,
        clips_per_gpu=clips_per_gpu, weights_gb=weights / GB, grads_gb=weights / GB, adam_gb=2 * weights / GB,
        ema_gb=weights / GB, activations_gb_per_clip=activations / GB, text_encoder_gb=text / GB,
        codec_gb=codec / GB, memory_gb_per_gpu=memory / GB,
        flops_per_clip=flops, encode_flops_per_clip=encode, hours_at_40pct_h100=hours)


@dataclass
class LatentCacheEstimate:
    """Encoding the training clips once (rule latents) against encoding them in every run."""

    profile: str
    clips: int  # at most: every step's global batch of each distinct sampler stream
    encodes_without_cache: int  # every run encodes every clip it draws
    encode_flops_per_clip: float
    cache_gb: float  # float32 latents
    gpu_hours: float  # the rule's shards together, at 40% of TF32 peak
    gpu_hours_without_cache: float  # the same encodes spread over every training run
    shards: int

    def as_dict(self) -> dict:
        return asdict(self)


def latent_cache_estimate(profile: Profile) -> LatentCacheEstimate:
    """What the latent cache costs and saves for the profile's runs (:mod:`actionparty.train.latents`)."""
    from actionparty.train.latents import lead_of, training_runs

    side = (profile.model.resolution or profile.canvas_px) // 8
    channels = 16 if profile.model.codec == "wan-vae" else 192
    streams: dict[tuple, int] = {}
    encodes, clip_steps = 0, set()
    for _, cfg in training_runs(profile):
        key = (cfg.seed, cfg.batch_size, cfg.clip_steps, lead_of(cfg))
        streams[key] = max(streams.get(key, 0), cfg.steps)
        encodes += cfg.steps * cfg.batch_size
        clip_steps.add(cfg.clip_steps)
    if len(clip_steps) != 1 or any(lead for *_, lead in streams):
        raise ValueError("the estimate assumes one clip length and no self-generated contexts (as params/paper.yaml)")
    (k,) = clip_steps
    clips = sum(steps * batch for (_, batch, _, _), steps in streams.items())
    flops = encode_flops(profile, k)
    rate = 0.4 * H100_TF32 * 3600
    return LatentCacheEstimate(
        profile=profile.profile, clips=clips, encodes_without_cache=encodes, encode_flops_per_clip=flops,
        cache_gb=clips * channels * (k + 1) * side * side * 4 / GB, gpu_hours=clips * flops / rate,
        gpu_hours_without_cache=encodes * flops / rate, shards=profile.resources.latent_shards)


def print_latent_cache_estimate(e: LatentCacheEstimate) -> None:
    print(f"{e.profile} latent cache: {e.clips:,} clips encoded once ({e.encode_flops_per_clip / 1e12:.1f} TFLOP each), "
          f"{e.cache_gb / 1e3:.2f} TB float32, {e.gpu_hours:.0f} GPU-hours at 40% of H100 TF32 peak "
          f"({e.gpu_hours / e.shards:.0f} h per shard x {e.shards}); without it every run encodes what it draws: "
          f"{e.encodes_without_cache:,} encodes, {e.gpu_hours_without_cache:.0f} GPU-hours")


@dataclass
class RolloutEstimate:
    """One rollout job (one model, the longest horizon) on one GPU (the rules ask for one)."""

    profile: str
    model: str
    windows: int  # test windows: games x rollout.clips_per_game
    horizon: int  # generated frames per window (the longest of rollout.horizons)
    passes_per_step: int  # Euler steps (+ the state pass of state-first models) + the cache pass
    tokens_per_frame: int  # video + state tokens of one generated frame
    window_frames: int  # earlier frames in the KV cache
    flops_per_pass: float  # one frame of one window: matmuls + attention over cache and text
    hours_at_40pct_h100: float
    weights_gb: float  # in the compute dtype
    kv_cache_gb_per_window: float
    text_encoder_gb: float  # umT5 on the GPU (and converted on the host), 0 when model.text_cache serves it
    codec_gb: float  # the Wan VAE (fp32) that decodes every generated frame
    checkpoint_gb: float  # the finetune checkpoint as read into host memory (model, EMA, Adam)
    host_memory_gb: float  # checkpoint + the fp32 model it is loaded into (+ the text encoder)

    def as_dict(self) -> dict:
        return asdict(self)


def rollout_estimate(profile: Profile, variant: VariantConfig, model_name: str) -> RolloutEstimate:
    """The rollout job of the finetuned ``variant`` (named ``model_name``) at the longest horizon."""
    from actionparty.games import resolve_games

    profile = variant_profile(profile, variant)
    model, side = build_on_meta(profile, variant)
    d, r = model.dit.config, profile.rollout
    params = sum(p.numel() for p in model.parameters())
    video = (side // d.patch_size[1]) * (side // d.patch_size[2])
    subject = variant.conditioning.kind == "subject"
    n = video + (PLAYER_SLOTS if subject else 0)
    window = r.window_frames or profile.finetune.clip_steps + 1 - (d.chunk_frames or 1)  # rollout.generate.window_frames
    state_first = subject and variant.conditioning.state_first
    passes = r.sampling_steps + (r.state_sampling_steps if state_first else 0) + 1
    # Matmuls of the frame's tokens; attention to the window's cached frames and itself, and to the text.
    flops = 2 * params * n + d.num_layers * 4 * n * (window + 1) * n * d.dim + d.num_layers * 4 * n * d.text_len * d.dim
    windows = len(resolve_games(profile)) * r.clips_per_game
    horizon = max(r.horizons)
    hours = windows * horizon * passes * flops / (0.4 * 989e12) / 3600
    dtype_bytes = 2 if profile.model.precision == "bf16" else 4
    kv = d.num_layers * 2 * window * n * d.dim * dtype_bytes
    checkpoint = params * 4 * 4  # fp32 model, EMA and Adam's two moments
    text, codec = text_encoder_bytes(profile, variant), codec_bytes(profile)
    return RolloutEstimate(
        profile=profile.profile, model=model_name, windows=windows, horizon=horizon, passes_per_step=passes,
        tokens_per_frame=n, window_frames=window, flops_per_pass=flops, hours_at_40pct_h100=hours,
        weights_gb=params * dtype_bytes / GB, kv_cache_gb_per_window=kv / GB, text_encoder_gb=text / GB,
        codec_gb=codec / GB, checkpoint_gb=checkpoint / GB, host_memory_gb=(checkpoint + params * 4 + text) / GB)


def print_rollout_estimate(e: RolloutEstimate) -> None:
    print(f"{e.profile} rollout:{e.model}: {e.windows} windows x {e.horizon} frames x {e.passes_per_step} passes "
          f"({e.tokens_per_frame} tokens per frame, {e.window_frames} cached frames)")
    print(f"  {e.flops_per_pass / 1e12:.2f} TFLOP per frame pass; {e.hours_at_40pct_h100:.1f} h at 40% of H100 bf16 "
          f"peak on 1 GPU; GPU: weights {e.weights_gb:.1f} GB + KV cache {e.kv_cache_gb_per_window * 1e3:.0f} MB "
          f"per window + text encoder {e.text_encoder_gb:.1f} GB + codec {e.codec_gb:.2f} GB; host: checkpoint {e.checkpoint_gb:.1f} GB + model "
          f"{e.host_memory_gb - e.checkpoint_gb - e.text_encoder_gb:.1f} GB + text encoder {e.text_encoder_gb:.1f} GB "
          f"= {e.host_memory_gb:.1f} GB")


def print_estimate(e: TrainingEstimate) -> None:
    print(f"{e.profile} {e.stage}: {e.parameters:,} parameters; {e.tokens_per_clip} tokens per clip "
          f"({e.frames_per_clip} frames x {e.tokens_per_frame} video tokens + {e.state_tokens_per_clip} state tokens), "
          f"{e.text_tokens} text tokens")
    print(f"  per GPU: weights {e.weights_gb:.1f} GB + grads {e.grads_gb:.1f} + Adam {e.adam_gb:.1f} + EMA "
          f"{e.ema_gb:.1f} + activations {e.activations_gb_per_clip:.2f} GB/clip x {e.clips_per_gpu} + text encoder "
          f"{e.text_encoder_gb:.1f} + codec {e.codec_gb:.2f} = {e.memory_gb_per_gpu:.1f} GB")
    encode = (f" + {e.encode_flops_per_clip / 1e12:.1f} TFLOP encoding it" if e.encode_flops_per_clip
              else " (latents read, none encoded)" if e.codec_gb else "")
    print(f"  {e.flops_per_clip / 1e12:.1f} TFLOP per clip{encode}; {e.hours_at_40pct_h100:.1f} h at 40% of H100 peak")
