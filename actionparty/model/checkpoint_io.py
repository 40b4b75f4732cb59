"""Loading Wan2.1 DiT weights (official or diffusers format) into :class:`~actionparty.model.dit.WanDiT`.

Two key formats are understood:

* **official** (``Wan-AI/Wan2.1-T2V-1.3B``, ``diffusion_pytorch_model.safetensors`` or a ``.pth``
  state dict): the same names as our model (``blocks.0.self_attn.q.weight``, ``head.head.weight``...).
* **diffusers** (``WanTransformer3DModel``, e.g. ``Wan2.1-T2V-1.3B-Diffusers/transformer``):
  renamed to official names by :func:`diffusers_to_official` (``attn1.to_q`` -> ``self_attn.q``,
  ``norm2`` <-> ``norm3``, ``scale_shift_table`` -> ``modulation`` ...).

:func:`load_wan_checkpoint` refuses any shape mismatch (one line naming the key and both shapes)
and returns a :class:`LoadReport` that names every key it did not load:

* ``new``: parameters of the model that are not part of Wan's architecture (modules added by
  later stages, e.g. ``blocks.0.extra_cross_attn.*``); they keep their initialisation;
* ``missing``: Wan parameters absent from the checkpoint (an error with ``strict=True``);
* ``unexpected``: checkpoint entries the model has no place for (an error with ``strict=True``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .dit import DiTConfig, WanDiT


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded into the model (missing file, wrong shapes, wrong keys)."""


# Ordered (pattern, replacement) pairs on dot-separated names, diffusers -> official.
_DIFFUSERS_RENAMES: list[tuple[str, str]] = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.attn1\.", r"\1.self_attn."),
    (r"^(blocks\.\d+)\.attn2\.", r"\1.cross_attn."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".o."),
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
    # diffusers' norm2 is the cross-attention norm (official norm3); its norm3 has no parameters.
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),
]
# Wrappers of trainer checkpoints (official Wan keys never start with these).
_STRIP_PREFIXES = ("model.diffusion_model.", "module.", "_orig_mod.", "model.")


@dataclass
class LoadReport:
    """What :func:`load_wan_checkpoint` did; every list is sorted."""

    source: str  # path or "<state dict>"
    key_format: str  # "official" or "diffusers"
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        def few(keys):
            return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

        lines = [f"{self.source} ({self.key_format} keys): loaded {len(self.loaded)} tensors"]
        for name in ("new", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name} ({len(keys)}): {few(keys)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading state dicts
# ---------------------------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module", "generator_ema", "generator"):  # trainer-checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (.safetensors, .pth/.pt/.bin) or directory (diffusers layout, sharded or not).

    A directory is searched for ``*.safetensors.index.json`` (shards), then a single
    ``*.safetensors``/``*.pth``/``*.bin``, also under ``transformer/`` (a diffusers pipeline).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_file():
        return _read_file(path)
    for folder in (path, path / "transformer"):
        indexes = sorted(folder.glob("*.safetensors.index.json")) + sorted(folder.glob("*.bin.index.json"))
        if indexes:
            shards = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_file(folder / shard))
            return state
        files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pth")) + sorted(folder.glob("*.bin"))
        if len(files) == 1:
            return _read_file(files[0])
        if len(files) > 1:
            raise CheckpointError(f"{folder}: several weight files and no index: {', '.join(f.name for f in files)}")
    raise CheckpointError(f"{path}: no weight file (.safetensors, .pth, .bin) found")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def is_diffusers_format(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("condition_embedder.") or ".attn1." in k or k == "proj_out.weight" for k in state)


def diffusers_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``WanTransformer3DModel`` keys to official Wan2.1 keys (tensors unchanged)."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _DIFFUSERS_RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def dit_config_from_diffusers(config: dict | str | os.PathLike, **overrides) -> DiTConfig:
    """A :class:`DiTConfig` from a diffusers ``WanTransformer3DModel`` config (dict or config.json path)."""
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    heads = config["num_attention_heads"]
    return DiTConfig(**{
        "in_dim": config["in_channels"],
        "out_dim": config.get("out_channels") or config["in_channels"],
        "dim": heads * config["attention_head_dim"],
        "ffn_dim": config["ffn_dim"],
        "num_heads": heads,
        "num_layers": config["num_layers"],
        "patch_size": tuple(config["patch_size"]),
        "text_dim": config["text_dim"],
        "freq_dim": config["freq_dim"],
        "eps": config.get("eps", 1e-6),
        "cross_attn_norm": config.get("cross_attn_norm", True),
        "qk_norm": bool(config.get("qk_norm", True)),
        "rope_max_pos": config.get("rope_max_seq_len", 1024),
        **overrides,
    })


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def wan_parameter_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of the plain Wan architecture for ``config`` (meta device)."""
    base = DiTConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(DiTConfig)})
    with torch.device("meta"):
        reference = WanDiT(base)
    return {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def load_wan_checkpoint(
    model: WanDiT,
    checkpoint: str | os.PathLike | dict[str, torch.Tensor],
    strict: bool = False,
) -> LoadReport:
    """Load official- or diffusers-format Wan DiT weights into ``model`` (copied into its dtype/device).

    Raises :class:`CheckpointError` on the first shape mismatch (``"<key>: checkpoint shape (a, b)
    != model shape (c, d)"``), and with ``strict=True`` on missing or unexpected keys. New model
    parameters (not in Wan's architecture) are only reported.
    """
    source = "<state dict>" if isinstance(checkpoint, dict) else str(checkpoint)
    state = dict(checkpoint) if isinstance(checkpoint, dict) else read_state_dict(checkpoint)
    state = _strip_prefixes(state)
    key_format = "diffusers" if is_diffusers_format(state) else "official"
    if key_format == "diffusers":
        state = diffusers_to_official(state)

    model_state = model.state_dict()
    wan_keys = set(wan_parameter_shapes(model.config))
    for key in sorted(state):
        if key in model_state and tuple(state[key].shape) != tuple(model_state[key].shape):
            raise CheckpointError(f"{key}: checkpoint shape {tuple(state[key].shape)} "
                                  f"!= model shape {tuple(model_state[key].shape)} ({source})")
    report = LoadReport(
        source=source,
        key_format=key_format,
        loaded=sorted(k for k in state if k in model_state),
        new=sorted(k for k in model_state if k not in state and k not in wan_keys),
        missing=sorted(k for k in model_state if k not in state and k in wan_keys),
        unexpected=sorted(k for k in state if k not in model_state),
    )
    if strict and not report.ok:
        problem = "missing" if report.missing else "unexpected"
        keys = getattr(report, problem)
        raise CheckpointError(f"{source}: {len(keys)} {problem} key(s), first {keys[0]!r}")
    with torch.no_grad():
        for key in report.loaded:
            model_state[key].copy_(state[key])
    return report


def save_wan_checkpoint(model: WanDiT, path: str | os.PathLike) -> None:
    """Write the model's weights with official key names (.safetensors, else torch.save), atomically."""
    from ..atomic import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, str(tmp))
