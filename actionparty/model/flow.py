"""Rectified flow with Wan's timestep shift.

Noise level ``sigma`` in [0, 1]: ``x_sigma = (1 - sigma) * x0 + sigma * noise``; the velocity is
``v = noise - x0`` (so ``dx/dsigma = v``). The network sees ``timestep = 1000 * sigma`` (Wan's
convention) and predicts either the velocity or the clean sample ``x0``; the loss is always taken
in velocity space, where an x0 prediction becomes ``(x_sigma - x0_hat) / sigma``.

Wan's shift moves mass towards high noise: ``shift * s / (1 + (shift - 1) * s)``.
"""

from __future__ import annotations

import torch

TIMESTEP_SCALE = 1000.0


def shift_sigma(s: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * s / (1.0 + (shift - 1.0) * s)


def sample_sigmas(shape, shift: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Independent training noise levels, uniform then shifted: (shape) float32 in (0, 1)."""
    s = torch.rand(shape, generator=generator, device=device)
    return shift_sigma(s, shift).clamp(1e-4, 1.0)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``sigma`` broadcasts against ``x0`` (e.g. (B, 1, T, 1, 1) for per-frame levels)."""
    return (1.0 - sigma) * x0 + sigma * noise


def velocity_from_x0(x_sigma: torch.Tensor, x0_hat: torch.Tensor, sigma: torch.Tensor, min_sigma: float) -> torch.Tensor:
    """Velocity implied by an x0 prediction; ``sigma`` is clamped below at ``min_sigma`` so that
    near-clean frames do not get an unbounded weight."""
    return (x_sigma - x0_hat) / sigma.clamp_min(min_sigma)


def x0_from_velocity(x_sigma: torch.Tensor, v_hat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x_sigma - sigma * v_hat


def x0_and_velocity(out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, anchor: torch.Tensor | None,
                    prediction: str, residual_prior: bool, min_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A network output -> (x0, velocity) estimates at ``x`` (``sigma`` broadcasts against it).

    ``prediction="x0"``: ``out`` is the clean sample (with ``residual_prior``, its difference
    from ``anchor``); ``"velocity"``: ``out`` is the velocity."""
    if prediction == "x0":
        x0 = out + anchor if residual_prior else out
        return x0, velocity_from_x0(x, x0, sigma, min_sigma)
    return x0_from_velocity(x, out, sigma), out


def sampling_sigmas(steps: int, shift: float, device=None) -> torch.Tensor:
    """Decreasing noise levels for Euler sampling, from 1 to 0 inclusive: (steps + 1,)."""
    s = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return shift_sigma(s, shift)


def euler_step(x: torch.Tensor, x0_hat: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow ODE written through the x0 estimate (exact at sigma_next = 0)."""
    v = (x - x0_hat) / sigma.clamp_min(1e-6)
    return x + (sigma_next - sigma) * v
