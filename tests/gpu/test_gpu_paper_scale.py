"""On a GPU: the paper's 1.3B-shaped DiT forward/backward in bf16 on random weights (peak memory
against the estimate, step time), every attention backend against SDPA (outputs and gradients),
and the evaluation detectors trained and run on the GPU against the CPU.

Marked ``gpu`` and skipped without CUDA. Sizes: one or two paper clips (5 latent frames of
32 x 32 tokens = 5,120 video tokens, 512 text tokens); a few seconds each on an H100-class GPU.
Run on a GPU node: ``pytest -m gpu tests/gpu -s``; with ``ACTIONPARTY_GPU_REPORT=path.json`` the
measured figures (peak memory, step time, backend differences) are also written there. (No
conftest.py here: the tests import the top-level one as ``conftest``.)
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from actionparty.config import load_profile
from actionparty.data.lmdb_dataset import ClipDataset
from actionparty.eval.detectors import classify_transitions, crop_cells, detect, load_detectors, train_detectors
from actionparty.model.attention import (
    attention,
    attention_backend,
    available_backends,
    block_causal_mask,
    video_token_frames,
)
from actionparty.model.dit import make_dit
from actionparty.train.estimate import estimate
from test_detectors import eval_config, write_world

GB = 1e9
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def gpu_report():
    """A dict the tests fill with what they measured; written to $ACTIONPARTY_GPU_REPORT at the end."""
    report: dict = {}
    yield report
    path = os.environ.get("ACTIONPARTY_GPU_REPORT")
    if path and report:
        from actionparty.atomic import write_text

        report["device"] = torch.cuda.get_device_name(0)
        report["torch"] = torch.__version__
        write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def paper(repo_root):
    return load_profile(repo_root / "params/paper.yaml")


@pytest.fixture(scope="module")
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def paper_dit(profile):
    """The paper profile's DiT as actionparty.model.world.build_dit makes it, on the GPU, with
    non-zero random weights (adaLN-Zero off, so every block computes and gets gradients)."""
    cfg = profile.model
    torch.manual_seed(0)
    dit = make_dit(cfg.size, in_dim=16, out_dim=16, text_dim=4096, text_len=cfg.text_len, patch_size=(1, 2, 2),
                   chunk_frames=cfg.chunk_frames, zero_init=False).cuda()
    torch.nn.init.normal_(dit.head.head.weight, std=0.02)  # Wan zero-inits the output layer
    dit.gradient_checkpointing = cfg.gradient_checkpointing
    return dit


def step(dit, clips: int, frames: int, side: int):
    """One bf16-autocast forward + backward of ``clips`` clips; returns the loss."""
    x = torch.randn(clips, 16, frames, side, side, device="cuda")
    t = torch.rand(clips, frames, device="cuda") * 1000
    text = torch.randn(clips, 512, 4096, device="cuda")
    text_mask = torch.ones(clips, 512, dtype=torch.bool, device="cuda")  # umT5 as official Wan
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = dit(x, t, text, text_mask).video
        loss = out.float().pow(2).mean()
    loss.backward()
    return loss


def test_paper_dit_forward_backward_bf16_memory_and_time(paper, gpu_report):
    e = estimate(paper)
    dit = paper_dit(paper)
    assert sum(p.numel() for p in dit.parameters()) == e.parameters
    side = e.latent_side
    measured = {}
    for clips in (1, 2):
        dit.zero_grad(set_to_none=True)
        step(dit, clips, e.frames_per_clip, side)  # warm-up (kernels, FlexAttention compile)
        dit.zero_grad(set_to_none=False)  # gradients allocated, as in training
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss = step(dit, clips, e.frames_per_clip, side)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        assert torch.isfinite(loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dit.parameters())
        measured[clips] = dict(peak_gb=torch.cuda.max_memory_allocated() / GB, resident_gb=base / GB,
                               step_s=seconds)
    per_clip = measured[2]["peak_gb"] - measured[1]["peak_gb"]
    weights_and_grads = e.weights_gb + e.grads_gb
    gpu_report["paper_dit_bf16"] = dict(
        measured=measured, activations_gb_per_clip_measured=per_clip,
        activations_gb_per_clip_estimate=e.activations_gb_per_clip,
        weights_and_grads_gb_estimate=weights_and_grads,
        tokens_per_clip=e.tokens_per_clip)
    print(gpu_report["paper_dit_bf16"])
    # The estimate must not undercount by more than a quarter (kernel workspaces, allocator slack).
    assert measured[1]["peak_gb"] <= 1.25 * (weights_and_grads + e.activations_gb_per_clip)
    assert per_clip <= 1.25 * e.activations_gb_per_clip


def masks(n_frames: int, tokens_per_frame: int, batch: int):
    frames = video_token_frames(n_frames, tokens_per_frame, device="cuda")
    causal = block_causal_mask(frames, frames, chunk_frames=1)
    windowed = block_causal_mask(frames, frames, chunk_frames=1, window_frames=2, sink_frames=1)
    g = torch.Generator(device="cuda").manual_seed(0)
    isolation = causal & (torch.rand(batch, *causal.shape, device="cuda", generator=g) > 0.3)
    isolation[:, :7] = False  # queries that may attend to nothing
    return {"none": None, "block_causal": causal, "windowed": windowed, "isolation": isolation}


@pytest.mark.parametrize("backend", ["flex", "flash"])
def test_backends_agree_with_sdpa_on_gpu(backend, gpu_report):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} is not available here")
    b, frames, per_frame, heads, d = 2, 5, 256, 12, 128  # the paper's heads; 1,280 tokens
    n = frames * per_frame
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, n, heads, d, device="cuda", generator=g) for _ in range(3))
    diffs = {}
    for name, mask in masks(frames, per_frame, b).items():
        if backend == "flash" and mask is not None:
            continue  # flash-attn takes no masks
        exact = attention(q, k, v, mask)  # fp32 SDPA: the reference
        results = {}
        for which in ("sdpa", backend):
            qb, kb, vb = (u.bfloat16().requires_grad_() for u in (q, k, v))
            with attention_backend(which):
                out = attention(qb, kb, vb, mask)
            out.float().pow(2).sum().backward()
            results[which] = (out.float(), [u.grad.float() for u in (qb, kb, vb)])
        err_sdpa = (results["sdpa"][0] - exact).abs().max().item()
        err_backend = (results[backend][0] - exact).abs().max().item()
        grad_diff = max((a - c).abs().max().item() / c.abs().max().clamp_min(1e-6).item()
                        for a, c in zip(results[backend][1], results["sdpa"][1]))
        diffs[name] = dict(err_sdpa_bf16=err_sdpa, err_backend_bf16=err_backend, grad_rel_diff=grad_diff)
        # bf16 keeps ~3 significant digits: the backend is as close to fp32 as bf16 SDPA is.
        assert err_backend <= max(2 * err_sdpa, 1e-2), (name, err_backend, err_sdpa)
        assert grad_diff <= 2e-2, (name, grad_diff)
        if name == "isolation":
            assert results[backend][0][:, :7].abs().max() == 0
    gpu_report[f"backend_{backend}"] = diffs
    print(backend, diffs)


def test_dit_backends_agree_on_gpu(gpu_report):
    """A small block-causal DiT in bf16: the automatic selection (flex for the masks on a GPU)
    against SDPA everywhere, forward and KV-cached chunk."""
    torch.manual_seed(0)
    dit = make_dit("small", chunk_frames=1, zero_init=False).cuda().eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.02)
    x, text = torch.randn(2, 192, 4, 8, 8, device="cuda"), torch.randn(2, 64, 64, device="cuda")
    t = torch.tensor([[0.0, 300.0, 600.0, 900.0]] * 2, device="cuda")
    outs = {}
    for which in ("sdpa", None):
        with attention_backend(which), torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            full = dit(x, t, text).video
            cache = dit.new_kv_cache(window_frames=2, sink_frames=1)
            dit(x[:, :, :3], t[:, :3], text, kv_cache=cache, update_cache=True)
            chunk = dit(x[:, :, 3:], t[:, 3:], text, kv_cache=cache).video
        outs[which] = (full.float(), chunk.float())
    diffs = [(a - b).abs().max().item() / b.abs().max().item() for a, b in zip(outs[None], outs["sdpa"])]
    gpu_report["dit_auto_vs_sdpa_rel"] = diffs
    assert max(diffs) <= 3e-2, diffs


def test_detectors_trained_on_gpu_predict_as_on_cpu(tmp_path, gpu_report):
    """The detectors of tests/test_detectors.py's sprite world, trained 20 steps on cuda and on the
    CPU from the same seed, each run on its own device (TF32 off: this measures the code path, not
    TF32 rounding): weights within rtol 1e-3 / atol 1e-4, held-out class probabilities within 1e-3,
    and the same predicted class on >= 99% of cells and transitions."""
    lmdbs = {split: write_world(tmp_path, split, n, 24, seed) for split, n, seed in (("train", 8, 0), ("val", 2, 100))}
    cfg = eval_config(train_steps=20, checkpoint_every=10, batch_clips=8, val_clips_per_game=8)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        runs = {}
        for device in ("cpu", "cuda"):
            train_detectors(lmdbs["train"], lmdbs["val"], cfg, tmp_path / f"{device}.pt", progress=False, device=device)
            runs[device] = load_detectors(tmp_path / f"{device}.pt", device)
        cpu, gpu = runs["cpu"], runs["cuda"]
        assert gpu.device.type == "cuda"
        for module in ("tile", "idm"):
            weights = getattr(gpu, module).state_dict()
            for name, x in getattr(cpu, module).state_dict().items():
                torch.testing.assert_close(weights[name].cpu(), x, rtol=1e-3, atol=1e-4, msg=f"{module}.{name}")
        ds = ClipDataset(lmdbs["val"], clip_steps=1)
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
        frames = batch["frames"].flatten(0, 1)
        game = torch.as_tensor(cpu.game_indices(ds.games, "val"))[batch["game"]]
        centre, slot = batch["position"][:, 0, 0], torch.zeros_like(batch["game"])
        out = {}
        with torch.no_grad():
            for name, det in runs.items():
                dev = det.device
                slot_logits, facing_logits, _ = det.tile(frames.to(dev), game.repeat_interleave(2).to(dev))
                m = det.idm.margin_cells
                idm_logits = det.idm(crop_cells(batch["frames"][:, 0].to(dev), centre.to(dev), m),
                                     crop_cells(batch["frames"][:, 1].to(dev), centre.to(dev), m), game.to(dev),
                                     slot.to(dev))
                detections, features = detect(det.tile, frames, game.repeat_interleave(2), cfg.tau, 8)
                actions = classify_transitions(det.idm, batch["frames"][:, 0], batch["frames"][:, 1], centre, game,
                                               slot, 8)
                out[name] = dict(slot=slot_logits.softmax(1).cpu(), facing=facing_logits.softmax(1).cpu(),
                                 idm=idm_logits.softmax(1).cpu(), confidence=torch.from_numpy(detections.confidence),
                                 features=features, actions=actions)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    diffs = {k: (out["cuda"][k] - out["cpu"][k]).abs().max().item() for k in ("slot", "facing", "idm", "confidence")}
    agree = {k: (out["cuda"][k].argmax(1) == out["cpu"][k].argmax(1)).float().mean().item()
             for k in ("slot", "facing", "idm")}
    agree["actions"] = float((out["cuda"]["actions"] == out["cpu"]["actions"]).mean())
    gpu_report["detectors_gpu_vs_cpu"] = dict(max_abs_prob_diff=diffs, class_agreement=agree)
    print(gpu_report["detectors_gpu_vs_cpu"])
    assert max(diffs.values()) <= 1e-3, diffs
    assert min(agree.values()) >= 0.99, agree
    torch.testing.assert_close(out["cuda"]["features"], out["cpu"]["features"], rtol=1e-3, atol=1e-3)
