import pytest
import torch
from torch import nn

from sslcli.errors import RunError
from sslcli.train import Events, LoopConfig, Step, StepOut, fit


def _toy(losses: list[float]):
    """A linear model whose loss at step i is forced to losses[i] (times a differentiable term)."""
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def compute_loss(x: torch.Tensor, step: int) -> StepOut:
        out = model(x.float()).mean()
        loss = out * 0 + losses[step] + out.pow(2)
        return StepOut(loss=loss)

    def batches(epoch: int, skip: int = 0):
        for _ in range(2 - skip):
            yield torch.ones(3, 4, dtype=torch.uint8)

    return model, opt, compute_loss, batches


def test_lr_schedule_is_applied_every_step():
    model, opt, compute_loss, batches = _toy([1.0] * 4)
    seen = []
    schedule = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    result = fit(Step(model, compute_loss), batches, opt, schedule,
                 LoopConfig(epochs=2, steps_per_epoch=2, log_every=1), torch.device("cpu"),
                 Events(on_step_end=lambda step: seen.append(opt.param_groups[0]["lr"])))
    assert seen == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert result.steps == 4 and result.images == 12


def test_non_finite_loss_stops_before_the_update_and_keeps_the_checkpoint():
    model, opt, compute_loss, batches = _toy([1.0, 0.5, float("nan"), 1.0])
    checkpoints = []
    weights = {}

    def remember(step: int) -> None:
        weights[step] = model.weight.detach().clone()

    with pytest.raises(RunError) as err:
        fit(Step(model, compute_loss), batches, opt, torch.full((4,), 0.1, dtype=torch.float64),
            LoopConfig(epochs=2, steps_per_epoch=2, checkpoint_every=1), torch.device("cpu"),
            Events(on_step_end=remember, on_checkpoint=lambda epoch, step: checkpoints.append((epoch, step))))
    message = str(err.value)
    assert "loss became nan at step 3" in message and "last finite loss" in message and "step 2" in message
    assert checkpoints == [(1, 2)]  # epoch 1's checkpoint was written; no checkpoint of the bad state
    torch.testing.assert_close(model.weight, weights[1])  # the NaN step never touched the weights


def test_non_finite_gradients_with_a_finite_loss_stop_before_the_update():
    model, opt, _, batches = _toy([1.0] * 4)

    def compute_loss(x: torch.Tensor, step: int) -> StepOut:
        out = model(x.float()).mean()
        if step < 1:
            return StepOut(loss=out.pow(2))
        # sqrt at 0 is 0 (a finite loss) but its gradient is infinite, as a bf16 overflow in backward would be.
        return StepOut(loss=out.pow(2) + torch.sqrt(out - out.detach()))

    before = {}
    with pytest.raises(RunError, match="gradients became inf .* at step 2"):
        fit(Step(model, compute_loss), batches, opt, torch.full((4,), 0.1, dtype=torch.float64),
            LoopConfig(epochs=2, steps_per_epoch=2), torch.device("cpu"),
            Events(on_step_end=lambda step: before.update(w=model.weight.detach().clone())))
    assert torch.isfinite(model.weight).all()
    torch.testing.assert_close(model.weight, before["w"])  # the bad gradients never reached the weights


def test_gradient_clipping_bounds_the_update():
    model, opt, compute_loss, batches = _toy([1000.0] * 2)
    with torch.no_grad():
        model.weight.fill_(100.0)
    before = model.weight.detach().clone()
    fit(Step(model, compute_loss), batches, opt, torch.full((2,), 1.0, dtype=torch.float64),
        LoopConfig(epochs=1, steps_per_epoch=1, clip_grad=0.5), torch.device("cpu"))
    # One SGD step with lr 1 moves the parameters by at most the clipped gradient norm.
    moved = torch.cat([(model.weight - before).flatten()]).norm()
    assert moved <= 0.5 + 1e-5
