"""``actionparty preflight``: what a profile's run needs, and whether it is here.

One table, one row per need:

* **weights** (``model.init_checkpoint``, ``model.vae_path``, ``model.text_path``): the file or
  folder exists, its layout (the official Wan2.1 release, a diffusers pipeline, a single file),
  the tensors' names, shapes and dtypes read from the safetensors headers / the ``.pth`` archives'
  pickled index (no tensor is read), and their coverage of the model the profile builds (built on
  the meta device): every expected tensor present with its shape, nothing left over;
* **gpus**: the GPUs visible here and their memory against the training estimate
  (:mod:`actionparty.train.estimate`);
* **disk**: free space where the dataset goes, against the frames' uncompressed size;
* **slurm**: the resources the rules read from the profile (``resources.*``), the partition and
  account from ``SBATCH_PARTITION``/``SBATCH_ACCOUNT``, and the estimated training time against
  ``train_runtime_min``.

Each problem is also printed as one line; with any, the command exits 1. :func:`~actionparty.weights.check_weight_paths`
(used by ``actionparty validate``) only checks that the weight paths exist and imports no torch.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from actionparty.config import Profile
from actionparty.errors import UserError
from actionparty.weights import weight_paths

GB = 1e9


@dataclass
class Check:
    area: str  # weights | gpus | disk | slurm
    item: str  # the profile key or resource the row is about
    status: str  # ok | problem | warn | info
    detail: str


# =============================================================================================
# Weights
# =============================================================================================


def _gb(nbytes: float) -> str:
    return f"{nbytes / GB:.2f} GB" if nbytes >= 0.1 * GB else f"{nbytes / 1e6:.2f} MB"


def _dtypes(shapes: dict) -> str:
    return "/".join(sorted({dtype for _, dtype in shapes.values()}))


def _coverage(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
              aliases: dict[str, str] | None = None) -> tuple[bool, str]:
    """(ok, text): every expected tensor present with its shape, none left over. ``aliases``:
    tied tensors a file may hold under one name only (name -> the other)."""
    found = dict(found)
    for name, other in (aliases or {}).items():
        if name not in found and other in found:
            found[name] = found[other]
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    if not (missing or unexpected or wrong):
        return True, f"all {len(expected)} tensors, shapes agree"
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (first {k}: {tuple(found[k])}, model {tuple(expected[k])})")
    return False, "; ".join(parts)


def _folder_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    from actionparty.model.checkpoint_io import _folder_weight_files, tensor_shapes

    shapes: dict = {}
    for file in _folder_weight_files(folder):
        shapes.update(tensor_shapes(file))
    return shapes


def _files_size(files) -> int:
    return sum(f.stat().st_size for f in files if f.is_file())


def check_dit(profile: Profile, path: str) -> list[Check]:
    """The DiT weights against the DiT the profile builds (meta device)."""
    from actionparty.model.checkpoint_io import (
        checkpoint_dit_config,
        detect_layout,
        official_key_shapes,
        tensor_shapes,
        wan_parameter_shapes,
    )
    from actionparty.train.estimate import build_on_meta

    key = "model.init_checkpoint"
    layout = detect_layout(path)
    missing = [f for f in layout.dit if not f.is_file()]
    if missing:
        return [Check("weights", key, "problem", f"{missing[0]} not found ({layout.kind} layout)")]
    dtypes = {}
    for f in layout.dit:
        dtypes.update(tensor_shapes(f))
    files = ", ".join(f.name for f in layout.dit)
    checks = [Check("weights", key, "ok", f"{path}: {layout.kind} layout, {files} "
                                          f"({_gb(_files_size(layout.dit))}, {len(dtypes)} tensors, {_dtypes(dtypes)})")]
    model_cfg = build_on_meta(profile)[0].dit.config
    key_format, shapes = official_key_shapes(path)
    ok, text = _coverage(shapes, wan_parameter_shapes(model_cfg))
    checks.append(Check("weights", f"{key} keys", "ok" if ok else "problem",
                        f"{key_format} names vs the profile's {profile.model.size} DiT: {text}"))
    if layout.kind == "release" and layout.dit_config is None:
        checks.append(Check("weights", f"{key} config", "problem", f"{Path(path) / 'config.json'} not found"))
    elif layout.dit_config is not None:
        declared = checkpoint_dit_config(path, text_len=model_cfg.text_len) if "num_attention_heads" in \
            layout.dit_config.read_text() else checkpoint_dit_config(path)
        fields = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "text_len",
                  "freq_dim", "patch_size")
        diff = [f"{f} {getattr(declared, f)} (profile {getattr(model_cfg, f)})"
                for f in fields if getattr(declared, f) != getattr(model_cfg, f)]
        checks.append(Check("weights", f"{key} config", "problem" if diff else "ok",
                            f"{layout.dit_config}: " + ("differs: " + ", ".join(diff) if diff else "agrees with the profile")))
    return checks


def check_vae(path: str) -> list[Check]:
    """The Wan VAE (a Wan2.1_VAE.pth file, the release folder holding one, or a diffusers folder)
    against the AutoencoderKLWan it converts onto (meta device), and the codec's requirements."""
    import torch
    from diffusers import AutoencoderKLWan

    from actionparty.model.checkpoint_io import tensor_shapes
    from actionparty.model.codecs import WAN_VAE_FILE, is_wan_vae_format, wan_vae_config, wan_vae_to_diffusers

    key = "model.vae_path"
    p = Path(path)
    if p.is_dir() and (p / WAN_VAE_FILE).is_file():
        p = p / WAN_VAE_FILE
    if p.is_dir():
        folder = p / "vae" if (p / "vae" / "config.json").is_file() else p
        if not (folder / "config.json").is_file():
            return [Check("weights", key, "problem", f"{p}: no config.json (nor vae/config.json, nor {WAN_VAE_FILE})")]
        shapes = _folder_shapes(folder)
        config = dict(AutoencoderKLWan.load_config(str(folder)))
        kind, size = "diffusers folder", _files_size(folder.iterdir())
        names = {k: s for k, (s, _) in shapes.items()}
    else:
        shapes = tensor_shapes(p)
        names = {k: s for k, (s, _) in shapes.items()}
        with torch.device("meta"):
            meta_state = {k: torch.empty(s) for k, s in names.items()}
        if is_wan_vae_format(names):
            config, kind = wan_vae_config(meta_state), "Wan keys"
        else:
            config, kind = {}, "diffusers keys"
        size = p.stat().st_size
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(config)
    if kind == "Wan keys":
        names = wan_vae_to_diffusers(names, vae.config.num_res_blocks)
    checks = [Check("weights", key, "ok", f"{p}: {kind} ({_gb(size)}, {len(shapes)} tensors, {_dtypes(shapes)})")]
    ok, text = _coverage(names, {k: tuple(v.shape) for k, v in vae.state_dict().items()})
    checks.append(Check("weights", f"{key} keys", "ok" if ok else "problem", f"vs AutoencoderKLWan: {text}"))
    temporal = 2 ** sum(bool(d) for d in vae.config.temperal_downsample)
    spatial = 2 ** (len(vae.config.dim_mult) - 1)
    good = vae.config.z_dim == 16 and temporal == 4 and spatial == 8
    checks.append(Check("weights", f"{key} shape", "ok" if good else "problem",
                        f"z_dim {vae.config.z_dim}, {temporal}x temporal, {spatial}x spatial "
                        "(the wan-vae codec needs 16, 4x, 8x)"))
    return checks


def check_text(profile: Profile, path: str) -> list[Check]:
    """umT5 (the release's T5 .pth + tokenizer folder, or a diffusers/transformers folder) against
    the UMT5EncoderModel it loads onto (meta device); its width against the DiT's text_dim."""
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    from actionparty.model.checkpoint_io import tensor_shapes
    from actionparty.model.text import find_umt5, wan_t5_config, wan_t5_to_umt5
    from actionparty.train.estimate import build_on_meta

    key = "model.text_path"
    layout, model_path, tokenizer = find_umt5(path)
    checks = []
    if layout == "release":
        shapes = tensor_shapes(model_path)
        names = {k: s for k, (s, _) in shapes.items()}
        with torch.device("meta"):
            config = UMT5Config(**wan_t5_config({k: torch.empty(s) for k, s in names.items()}))
        names = wan_t5_to_umt5(names)
        size = model_path.stat().st_size
    else:
        shapes = _folder_shapes(model_path)
        names = {k: s for k, (s, _) in shapes.items()}
        config = UMT5Config.from_pretrained(str(model_path))
        size = _files_size(model_path.iterdir())
    checks.append(Check("weights", key, "ok", f"{model_path}: {layout} layout ({_gb(size)}, {len(shapes)} tensors, "
                                              f"{_dtypes(shapes)})"))
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ok, text = _coverage(names, expected, aliases={"encoder.embed_tokens.weight": "shared.weight",
                                                   "shared.weight": "encoder.embed_tokens.weight"})
    checks.append(Check("weights", f"{key} keys", "ok" if ok else "problem", f"vs UMT5EncoderModel: {text}"))
    tokenizer_files = sorted(f.name for f in tokenizer.glob("*") if f.name in (
        "tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json"))
    has_vocab = any(name in tokenizer_files for name in ("tokenizer.json", "spiece.model"))
    checks.append(Check("weights", f"{key} tokenizer", "ok" if has_vocab else "problem",
                        f"{tokenizer}: {', '.join(tokenizer_files) or 'no tokenizer files'}"))
    text_dim = build_on_meta(profile)[0].dit.config.text_dim
    checks.append(Check("weights", f"{key} width", "ok" if config.d_model == text_dim else "problem",
                        f"d_model {config.d_model} (the DiT's text_dim {text_dim})"))
    return checks


def check_weights(profile: Profile) -> list[Check]:
    checkers = {"model.init_checkpoint": lambda p: check_dit(profile, p), "model.vae_path": check_vae,
                "model.text_path": lambda p: check_text(profile, p)}
    checks = []
    for key, path, required in weight_paths(profile):
        if path is None:
            status = "problem" if required else "info"
            why = (f"must be set for model.codec={profile.model.codec}, model.text_encoder="
                   f"{profile.model.text_encoder}") if required else "not set (weights start from their initialisation)"
            checks.append(Check("weights", key, status, why))
        elif not Path(path).exists():
            checks.append(Check("weights", key, "problem", f"{path} not found"))
        else:
            try:
                checks.extend(checkers[key](path))
            except UserError as err:
                checks.append(Check("weights", key, "problem", str(err)))
    return checks


def check_text_cache(profile: Profile) -> list[Check]:
    """``model.text_cache``: absent (the DAG's rule text_embeddings writes it: info), or there and
    written by the profile's encoder for every game's current description (else a problem: every
    job that builds a model would stop on it)."""
    path = profile.model.text_cache
    if path is None:
        return []
    if not Path(path).exists():
        return [Check("weights", "model.text_cache", "info", f"{path}: absent; rule text_embeddings writes it")]
    from actionparty.games import resolve_games
    from actionparty.model.factory import game_descriptions, text_encoder_name
    from actionparty.model.text import TextEmbedder

    try:
        cache = TextEmbedder.from_cache(path, game_descriptions(profile), text_encoder_name(profile),
                                        [spec.name for spec in resolve_games(profile)])
    except UserError as err:
        return [Check("weights", "model.text_cache", "problem", f"{err} (or delete it: the DAG rewrites it)")]
    return [Check("weights", "model.text_cache", "ok", f"{path}: {len(cache.cached_games())} games, width {cache.dim}")]


def check_latent_cache(profile: Profile, data_dir: Path) -> list[Check]:
    """``model.latent_cache``: absent (rule latents writes it: info, with what it will take), or
    there and written by the profile's codec for the train LMDB (else a problem: training would
    stop on it); its size against the free disk, and a shard's time against the SLURM runtime."""
    path = profile.model.latent_cache
    if path is None:
        return []
    from actionparty.train.estimate import latent_cache_estimate

    e = latent_cache_estimate(profile)
    checks = []
    train_lmdb = data_dir / "lmdb" / "train.lmdb"
    if not Path(path).exists():
        checks.append(Check("data", "model.latent_cache", "info", f"{path}: absent; rule latents writes it "
                            f"({e.clips:,} clips, {_gb(e.cache_gb * GB)}, {e.shards} shard(s))"))
        probe = Path(path).resolve()
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        checks.append(Check("disk", str(path), "ok" if free >= e.cache_gb * GB else "warn",
                            f"{_gb(free)} free at {probe}; the latent cache takes up to {_gb(e.cache_gb * GB)}"))
    elif (train_lmdb / "data.mdb").is_file():
        from actionparty.data.latent_cache import LatentCache, codec_identity, dataset_identity

        try:
            cache = LatentCache(path, codec_identity(profile.model), dataset_identity(train_lmdb))
        except UserError as err:
            return [Check("data", "model.latent_cache", "problem", f"{err} (or delete it: the DAG rewrites it)")]
        checks.append(Check("data", "model.latent_cache", "ok", f"{path}: {len(cache.shards)} shard(s) of {train_lmdb}"))
    else:
        checks.append(Check("data", "model.latent_cache", "info", f"{path}: present; {train_lmdb} is not there to "
                            "check it against"))
    if profile.resources.train_gpus > 0:
        minutes = e.gpu_hours / e.shards * 60
        checks.append(Check("slurm", "runtime latents", "ok" if minutes <= profile.resources.train_runtime_min
                            else "problem", f"~{minutes:.0f} min per shard at 40% of H100 TF32 peak "
                            f"({e.shards} shards); train_runtime_min {profile.resources.train_runtime_min}"))
    return checks


# =============================================================================================
# GPUs, disk, SLURM
# =============================================================================================


def visible_gpus() -> list[tuple[str, int]]:
    """(name, total memory in bytes) of each CUDA device visible to this process."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())]


def _estimates(profile: Profile):
    from actionparty.config import load_variant
    from actionparty.train.estimate import estimate

    out = [estimate(profile)]
    if profile.variants:
        out.append(estimate(profile, load_variant(profile.variants[0])))
    return out


def check_gpus(profile: Profile, estimates, gpus: list[tuple[str, int]], require_gpus: bool) -> list[Check]:
    need = profile.resources.train_gpus
    if need == 0:
        return [Check("gpus", "resources.train_gpus", "info", "0: training runs on CPU")]
    peak = max(e.memory_gb_per_gpu for e in estimates)
    stage = max(estimates, key=lambda e: e.memory_gb_per_gpu).stage
    if not gpus:
        status = "problem" if require_gpus else "warn"
        return [Check("gpus", "visible GPUs", status, f"none visible here; the profile trains on {need} GPU(s) "
                      f"of >= {peak:.1f} GB each ({stage}); run preflight inside a GPU job to check them")]
    checks = []
    if len(gpus) < need:
        checks.append(Check("gpus", "visible GPUs", "problem",
                            f"{len(gpus)} visible, resources.train_gpus = {need}"))
    for i, (name, total) in enumerate(gpus):
        fits = total / GB >= peak
        checks.append(Check("gpus", f"cuda:{i}", "ok" if fits else "problem",
                            f"{name}, {total / GB:.1f} GB; estimate {peak:.1f} GB per GPU ({stage})"))
    return checks


def dataset_bytes(profile: Profile, num_games: int) -> int:
    """Uncompressed frames of every split, twice (episode files and the LMDBs): an upper bound
    (frames are zlib-compressed in the LMDB; game graphics compress well)."""
    counts = profile.episodes.per_split
    episodes = sum(getattr(counts, split) for split in ("train", "val", "test"))
    frame = profile.canvas_px ** 2 * 3
    return 2 * num_games * episodes * (profile.episodes.steps + 1) * frame


def check_disk(profile: Profile, num_games: int, data_dir: Path) -> list[Check]:
    need = dataset_bytes(profile, num_games)
    probe = data_dir.resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    status = "ok" if free >= need else "warn"
    return [Check("disk", str(data_dir), status, f"{_gb(free)} free at {probe}; the dataset is at most "
                  f"{_gb(need)} uncompressed ({num_games} games, episodes + LMDBs)")]


def check_slurm(profile: Profile, estimates) -> list[Check]:
    r = profile.resources
    checks = [Check("slurm", "resources", "info",
                    f"train_gpus {r.train_gpus}, train_threads {r.train_threads}, train_mem_mb {r.train_mem_mb}, "
                    f"train_runtime_min {r.train_runtime_min}, rollout_mem_mb {r.rollout_mem_mb}, "
                    f"rollout_runtime_min {r.rollout_runtime_min}, eval_mem_mb {r.eval_mem_mb}, mem_mb {r.mem_mb}, "
                    f"episode_workers {r.episode_workers}, latent_shards {r.latent_shards}")]
    for var in ("SBATCH_PARTITION", "SBATCH_ACCOUNT"):
        value = os.environ.get(var)
        checks.append(Check("slurm", var, "info", value if value else "unset (the cluster's default)"))
    checks.append(Check("slurm", "sbatch", "ok" if shutil.which("sbatch") else "warn",
                        shutil.which("sbatch") or "not on PATH (needed on the submitting node only)"))
    if r.train_gpus > 0:
        for e in estimates:
            minutes = e.hours_at_40pct_h100 * 60
            fits = minutes <= r.train_runtime_min
            checks.append(Check("slurm", f"runtime {e.stage}", "ok" if fits else "problem",
                                f"~{minutes:.0f} min at 40% of H100 peak on {r.train_gpus} GPU(s); "
                                f"train_runtime_min {r.train_runtime_min}"))
        if profile.variants:
            from actionparty.config import load_variant
            from actionparty.train.estimate import rollout_estimate

            name = profile.variants[0]
            e = rollout_estimate(profile, load_variant(name), name)
            minutes = e.hours_at_40pct_h100 * 60
            checks.append(Check("slurm", f"runtime rollout:{name}", "ok" if minutes <= r.rollout_runtime_min else "problem",
                                f"~{minutes:.0f} min for {e.windows} windows x {e.horizon} frames at 40% of H100 bf16 "
                                f"peak on 1 GPU; rollout_runtime_min {r.rollout_runtime_min}"))
            need_mb = e.host_memory_gb * 1e3
            checks.append(Check("slurm", f"memory rollout:{name}", "ok" if need_mb <= r.rollout_mem_mb else "problem",
                                f"~{need_mb:.0f} MB on the host (checkpoint {e.checkpoint_gb:.1f} GB + model); "
                                f"rollout_mem_mb {r.rollout_mem_mb}"))
    return checks


# =============================================================================================
# The command
# =============================================================================================


def preflight(profile: Profile, data_dir: str | os.PathLike = "data", require_gpus: bool = False,
              gpus: list[tuple[str, int]] | None = None) -> list[Check]:
    """Every check of the profile's run (``gpus``: the visible GPUs, default :func:`visible_gpus`)."""
    from actionparty.games import resolve_games

    num_games = len(resolve_games(profile))
    checks = check_weights(profile) + check_text_cache(profile)
    estimates = _estimates(profile)
    checks += check_gpus(profile, estimates, visible_gpus() if gpus is None else gpus, require_gpus)
    checks += check_disk(profile, num_games, Path(data_dir))
    checks += check_latent_cache(profile, Path(data_dir))
    checks += check_slurm(profile, estimates)
    return checks


def format_table(checks: list[Check]) -> str:
    widths = [max(len(getattr(c, f)) for c in checks) for f in ("area", "item", "status")]
    lines = [f"{'area':<{widths[0]}}  {'item':<{widths[1]}}  {'status':<{widths[2]}}  detail"]
    for c in checks:
        lines.append(f"{c.area:<{widths[0]}}  {c.item:<{widths[1]}}  {c.status:<{widths[2]}}  {c.detail}")
    return "\n".join(lines)


def run(profile_path: str, data_dir: str = "data", require_gpus: bool = False) -> int:
    """Print the table and one line per problem; 1 if there is any, else 0."""
    from actionparty.config import load_profile

    profile = load_profile(profile_path)
    checks = preflight(profile, data_dir, require_gpus)
    print(format_table(checks))
    problems = [c for c in checks if c.status == "problem"]
    for c in problems:
        print(f"problem: {c.item}: {c.detail}")
    print(f"{profile_path}: {len(problems)} problem(s)" if problems else f"{profile_path}: ready")
    return 1 if problems else 0
