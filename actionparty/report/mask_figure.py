"""Figure of who attends to whom in ActionParty's joint self-attention and action cross-attention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from actionparty.atomic import atomic_path


def attention_masks(frames: int = 2, grid: int = 2, players: int = 3, slots: int = 4):
    """The self-attention masks (full, no_msa) and frame-wise MCA mask of a toy layout:
    ``frames`` latent frames of ``grid``x``grid`` video tokens and ``slots`` player slots, of which
    ``players`` are present. Returns dict of name -> (mask (Nq, Nk) bool, q labels, k labels)."""
    from actionparty.model.dit import ExtraTokens, make_dit
    from actionparty.model.conditioning import StateGrid, SubjectTokens
    from actionparty.variants import SubjectConditioning

    dit = make_dit("tiny", in_dim=4, out_dim=4, patch_size=(1, 1, 1), chunk_frames=1)
    present = torch.zeros(1, 8, dtype=torch.bool)
    present[0, :players] = True
    extra = ExtraTokens(torch.zeros(1, frames * slots, dit.config.dim), torch.zeros(1, frames * slots, 3),
                        torch.zeros(1, frames * slots), torch.arange(frames).repeat_interleave(slots),
                        tags=torch.arange(slots).repeat(frames))
    layout = dit.token_layout((frames, grid, grid), extra, None, 0)
    labels = [f"v{int(f)}" for f in layout.q_frames[: layout.num_video]] + [
        f"s{int(f)}p{int(t) + 1}" for f, t in zip(layout.q_frames[layout.num_video :], layout.q_tags[layout.num_video :])]
    out = {}
    for name, msa in (("ActionParty (MSA)", True), ("w/o MSA", False)):
        switches = SubjectConditioning(kind="subject", state=True, msa=msa, mca="none", spatial_rope=True,
                                       state_first=False, state_render=False, glimpse=False, egocentric=False)
        causal = dit.default_attn_mask(layout)
        mask = SubjectTokens(dit, switches, StateGrid(grid, grid)).isolation_mask(layout, present)[0]
        out[name] = ((mask & causal) if causal is not None else mask, labels, labels)
    actions = [f"a{f}p{p + 1}" for f in range(frames) for p in range(slots)]
    a_frames = torch.arange(frames).repeat_interleave(slots)
    mca = (layout.q_frames[: layout.num_video, None] == a_frames[None]) & present[0, torch.arange(slots).repeat(frames)]
    out["frame-wise MCA"] = (mca, labels[: layout.num_video], actions)
    return out


def draw_attention_masks(out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masks = attention_masks()
    fig, axes = plt.subplots(1, 3, figsize=(16, 6.2), gridspec_kw={"width_ratios": [1, 1, 0.55]})
    for ax, (name, (mask, q, k)) in zip(axes, masks.items()):
        ax.imshow(mask.numpy(), cmap="Greens", vmin=0, vmax=1.3, interpolation="nearest")
        ax.set_xticks(np.arange(len(k)), k, rotation=90, fontsize=6)
        ax.set_yticks(np.arange(len(q)), q, fontsize=6)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        ax.set_title(name)
    fig.suptitle("Who attends to whom: 2 latent frames (v0 context, v1) of 2x2 video tokens, state tokens "
                 "s<frame>p<player> of 3 present players and 1 empty slot (p4); green = allowed", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format=out.suffix.lstrip("."))
    plt.close(fig)
