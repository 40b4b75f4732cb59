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

Two folder layouts are understood (:func:`detect_layout`):

* **release**: the official Wan2.1-T2V-1.3B download, one folder holding
  ``diffusion_pytorch_model.safetensors`` + ``config.json`` (the DiT, official keys; the 14B model
  shards it with a ``.safetensors.index.json``), ``Wan2.1_VAE.pth`` (the VAE, Wan's own keys),
  ``models_t5_umt5-xxl-enc-bf16.pth`` (the umT5-XXL encoder, Wan's own T5 keys, bf16) and
  ``google/umt5-xxl/`` (tokenizer files only). The VAE and T5 files are converted by
  :mod:`~actionparty.model.codecs` and :mod:`~actionparty.model.text`.
* **diffusers**: a pipeline folder with ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``.

:func:`tensor_shapes` reads names, shapes and dtypes of a weight file from its header
(safetensors) or its pickled index (``.pth`` zip archives, tensors mapped to the meta device)
without reading the tensors, so that ``actionparty preflight`` can check a 17 GB release quickly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import zipfile
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


# File names of the official Wan2.1-T2V release (wan/configs/wan_t2v_1_3B.py, WanModel.from_pretrained).
WAN_DIT_FILE = "diffusion_pytorch_model.safetensors"
WAN_DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
WAN_VAE_FILE = "Wan2.1_VAE.pth"
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER_DIR = "google/umt5-xxl"
_TRAINER_WRAPPERS = ("state_dict", "model", "module", "generator_ema", "generator")


@dataclass
class WeightLayout:
    """Where the parts of a Wan2.1 weight folder are; ``None`` = not in this folder."""

    kind: str  # "release", "diffusers" or "file" (a single DiT weight file)
    root: Path
    dit: list[Path]  # the DiT's weight file(s) (shards in index order)
    dit_config: Path | None  # release: WanModel config.json; diffusers: transformer/config.json
    vae: Path | None  # release: Wan2.1_VAE.pth; diffusers: the vae/ folder
    text_encoder: Path | None  # release: the T5 .pth; diffusers: the text_encoder/ folder
    tokenizer: Path | None  # release: google/umt5-xxl/; diffusers: tokenizer/


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{index}: not a weight index ({err})") from None
    return [index.parent / name for name in sorted(set(weight_map.values()))]


def detect_layout(path: str | os.PathLike) -> WeightLayout:
    """The layout of a Wan2.1 weight folder (or single DiT file); raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_file():
        return WeightLayout("file", path.parent, [path], None, None, None, None)

    def present(p: Path) -> Path | None:
        return p if p.exists() else None

    if (path / WAN_DIT_INDEX).is_file() or (path / WAN_DIT_FILE).is_file():
        dit = _index_shards(path / WAN_DIT_INDEX) if (path / WAN_DIT_INDEX).is_file() else [path / WAN_DIT_FILE]
        return WeightLayout("release", path, dit, present(path / "config.json"), present(path / WAN_VAE_FILE),
                            present(path / WAN_T5_FILE), present(path / WAN_TOKENIZER_DIR))
    if (path / "transformer").is_dir():
        dit = _folder_weight_files(path / "transformer")
        return WeightLayout("diffusers", path, dit, present(path / "transformer" / "config.json"),
                            present(path / "vae"), present(path / "text_encoder"), present(path / "tokenizer"))
    return WeightLayout("file", path, _folder_weight_files(path), present(path / "config.json"), None, None, None)


def _folder_weight_files(folder: Path) -> list[Path]:
    """The weight file(s) of a folder holding one model: an index's shards, else the only file."""
    indexes = sorted(folder.glob("*.safetensors.index.json")) + sorted(folder.glob("*.bin.index.json"))
    if indexes:
        return _index_shards(indexes[0])
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pth")) + sorted(folder.glob("*.bin"))
    if len(files) == 1:
        return files
    if len(files) > 1:
        raise CheckpointError(f"{folder}: several weight files and no index: {', '.join(f.name for f in files)}")
    raise CheckpointError(f"{folder}: no weight file (.safetensors, .pth, .bin) found")


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype name) of every tensor of a weight file, without reading the tensors.

    ``.safetensors``: the JSON header (its first 8 bytes give its length). ``.pth``/``.pt``/``.bin``
    (torch zip archives): the pickled index only, every tensor on the meta device. Trainer
    wrappers (``{"state_dict": ...}``) are unwrapped as :func:`read_state_dict` does.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (struct.error, ValueError) as err:
            raise CheckpointError(f"{path}: not a safetensors file ({err})") from None
        return {k: (tuple(v["shape"]), _SAFETENSORS_DTYPES.get(v["dtype"], v["dtype"]))
                for k, v in header.items() if k != "__metadata__"}
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch zip archive (saved with a torch older than 1.6?)")
    try:
        obj = torch.load(str(path), map_location="meta", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: cannot read its tensor index: {str(err).splitlines()[0]}") from None
    state = _unwrap(obj, path)
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in _TRAINER_WRAPPERS:  # trainer-checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return obj


def read_torch_file(path: str | os.PathLike, mmap: bool = True) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict, memory-mapped (tensors are read when used: a 11 GB T5 file is not
    copied into memory before its conversion)."""
    path = Path(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: cannot read: {str(err).splitlines()[0]}") from None
    return _unwrap(obj, path)


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return read_torch_file(path, mmap=False)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the DiT weights of a checkpoint file (.safetensors, .pth/.pt/.bin) or folder.

    A folder is read by its layout (:func:`detect_layout`): the release's
    ``diffusion_pytorch_model.safetensors`` (its VAE and T5 ``.pth`` files are not DiT weights),
    a diffusers pipeline's ``transformer/``, or a folder of one model (an index's shards, else
    its only weight file).
    """
    state: dict[str, torch.Tensor] = {}
    for file in detect_layout(path).dit:
        if not file.is_file():
            raise CheckpointError(f"{file}: weight file not found")
        state.update(_read_file(file))
    return state


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


def dit_config_from_official(config: dict | str | os.PathLike, **overrides) -> DiTConfig:
    """A :class:`DiTConfig` from the release's ``config.json`` (``WanModel`` arguments: ``dim``,
    ``ffn_dim``, ``num_heads``, ``num_layers``, ``in_dim``, ``out_dim``, ``text_len``, ...; keys it
    omits take ``WanModel``'s defaults)."""
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    if config.get("model_type", "t2v") != "t2v":
        raise CheckpointError(f"Wan config: model_type {config['model_type']!r} is not a text-to-video model")
    defaults = DiTConfig()
    keys = ("in_dim", "out_dim", "dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len", "freq_dim",
            "eps", "qk_norm", "cross_attn_norm")
    values = {k: config.get(k, getattr(defaults, k)) for k in keys}
    values["patch_size"] = tuple(config.get("patch_size", defaults.patch_size))
    return DiTConfig(**{**values, **overrides})


def checkpoint_dit_config(path: str | os.PathLike, **overrides) -> DiTConfig | None:
    """The DiT config a weight folder declares (release or diffusers ``config.json``), else None."""
    layout = detect_layout(path)
    if layout.dit_config is None:
        return None
    config = json.loads(layout.dit_config.read_text())
    if "num_attention_heads" in config:
        return dit_config_from_diffusers(config, **overrides)
    return dit_config_from_official(config, **overrides)


def official_key_shapes(path: str | os.PathLike) -> tuple[str, dict[str, tuple[int, ...]]]:
    """(key format, official-name -> shape) of the DiT weights under ``path``, from file headers."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in detect_layout(path).dit:
        shapes.update({k: shape for k, (shape, _) in tensor_shapes(file).items()})
    shapes = _strip_prefixes(shapes)
    if is_diffusers_format(shapes):
        return "diffusers", diffusers_to_official(shapes)
    return "official", shapes


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
