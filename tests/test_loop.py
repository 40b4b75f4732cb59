"""The shared small training loop (actionparty.train.loop): its learning-rate schedule, an exact
resume after a stop, gradient clipping, and a resume state of other settings not reused."""

from __future__ import annotations

import math

import pytest
import torch

from actionparty.train.loop import Schedule, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_warms_up_then_decays():
    cosine = Schedule(lr=0.1, steps=100, warmup_steps=10)
    assert cosine.at(0) == pytest.approx(0.1 * 0.1 * 0.5 * (1 + math.cos(0.0)))
    assert cosine.at(9) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 9 / 100)))  # warm-up done
    assert cosine.at(50) == pytest.approx(0.05) and cosine.at(100) == pytest.approx(0.0, abs=1e-12)
    constant = Schedule(lr=0.1, steps=100, warmup_steps=4, decay="constant")
    assert [constant.at(s) for s in (0, 1, 3, 99)] == pytest.approx([0.025, 0.05, 0.1, 0.1])
    assert Schedule(lr=0.1, steps=10, warmup_steps=0, decay="constant").at(0) == 0.1


def _problem(seed: int = 0):
    """A linear model, its loss and a fixed batch order (8 steps of 4 samples)."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(32, 3, generator=g), torch.tensor([[1.0], [-2.0], [0.5]])
    y = x @ w
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)

    def loss_fn(batch):
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return loss, {"mse": loss.item()}

    def batches(start: int):
        return ({"x": x[4 * s : 4 * s + 4], "y": y[4 * s : 4 * s + 4]} for s in range(start, 8))

    return model, loss_fn, batches


def _run(tmp_path, name: str, stop_after=None, fingerprint=None, grad_clip=0.5):
    model, loss_fn, batches = _problem()
    result = fit({"linear": model}, loss_fn, batches, Schedule(0.05, 8, 2), tmp_path / name,
                 fingerprint or {"run": 1}, checkpoint_every=3, grad_clip=grad_clip, stop_after=stop_after,
                 progress=False)
    return model, result


def test_a_stopped_and_rerun_fit_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    whole, done = _run(tmp_path, "a.resume")
    assert done.finished and done.step == 8 and set(done.logs) == {"mse"}
    _, stopped = _run(tmp_path, "b.resume", stop_after=4)  # its last resume state is of step 3
    assert not stopped.finished and stopped.step == 4
    assert torch.load(tmp_path / "b.resume", weights_only=True)["step"] == 3
    resumed, again = _run(tmp_path, "b.resume")
    assert again.finished and again.step == 8
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    unclipped, _ = _run(tmp_path, "c.resume", grad_clip=None)
    assert not torch.equal(unclipped.weight, whole.weight)  # the clipping acted on these steps


def test_a_resume_state_of_other_settings_is_not_reused(tmp_path, capsys):
    _run(tmp_path, "a.resume", stop_after=3)
    model, result = _run(tmp_path, "a.resume", fingerprint={"run": 2})
    assert "written with other settings" in capsys.readouterr().out
    fresh, _ = _run(tmp_path, "b.resume", fingerprint={"run": 2})
    assert result.step == 8 and torch.equal(model.weight, fresh.weight)  # trained from step 0
