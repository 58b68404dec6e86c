import pytest
import torch
from torch import nn

from sslcli.errors import RunError
from sslcli.train import Events, LoopConfig, Step, StepOut, clip_gradients, fit


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
    result = fit(Step(model, compute_loss, opt, schedule), batches,
                 LoopConfig(epochs=2, steps_per_epoch=2, log_every=1), torch.device("cpu"),
                 Events(on_step_end=lambda step: seen.append(opt.param_groups[0]["lr"])))
    assert seen == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert result.steps == 4 and result.images == 12


def test_a_prepared_step_gets_its_batch_prepared_and_counts_the_batch_images():
    """Step.prepare (pretraining's augmentation) runs on each batch before its loss, which gets what it
    returned; the images are counted from the batch itself."""
    model, opt, _, batches = _toy([1.0] * 4)
    calls = []

    def prepare(x: torch.Tensor) -> list[torch.Tensor]:
        calls.append(("prepare", x.shape[0]))
        return [x.float() * 2, x.float() * 3]  # two "views"

    def loss(views: list[torch.Tensor], step: int) -> StepOut:
        calls.append(("loss", step))
        assert isinstance(views, list) and torch.equal(views[1], torch.full((3, 4), 3.0))
        return StepOut(loss=sum(model(v).pow(2).mean() for v in views))

    result = fit(Step(model, loss, opt, torch.full((4,), 0.1, dtype=torch.float64), prepare=prepare), batches,
                 LoopConfig(epochs=2, steps_per_epoch=2), torch.device("cpu"))
    assert calls == [c for step in range(4) for c in (("prepare", 3), ("loss", step))]
    assert result.steps == 4 and result.images == 12


def test_non_finite_loss_stops_before_the_update_and_keeps_the_checkpoint():
    model, opt, compute_loss, batches = _toy([1.0, 0.5, float("nan"), 1.0])
    checkpoints = []
    weights = {}

    def remember(step: int) -> None:
        weights[step] = model.weight.detach().clone()

    with pytest.raises(RunError) as err:
        fit(Step(model, compute_loss, opt, torch.full((4,), 0.1, dtype=torch.float64)), batches,
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
        fit(Step(model, compute_loss, opt, torch.full((4,), 0.1, dtype=torch.float64)), batches,
            LoopConfig(epochs=2, steps_per_epoch=2), torch.device("cpu"),
            Events(on_step_end=lambda step: before.update(w=model.weight.detach().clone())))
    assert torch.isfinite(model.weight).all()
    torch.testing.assert_close(model.weight, before["w"])  # the bad gradients never reached the weights


def test_gradient_clipping_bounds_the_update():
    model, opt, compute_loss, batches = _toy([1000.0] * 2)
    with torch.no_grad():
        model.weight.fill_(100.0)
    before = model.weight.detach().clone()
    fit(Step(model, compute_loss, opt, torch.full((2,), 1.0, dtype=torch.float64)), batches,
        LoopConfig(epochs=1, steps_per_epoch=1, clip_grad=0.5), torch.device("cpu"))
    # One SGD step with lr 1 moves the parameters by at most the clipped gradient norm.
    moved = torch.cat([(model.weight - before).flatten()]).norm()
    assert moved <= 0.5 + 1e-5


def test_per_parameter_clipping_bounds_each_gradient_on_its_own_and_global_clipping_all_together():
    """DINO's clip_gradients: a parameter whose gradient is under the bound keeps it, however large another's."""
    def grads() -> list[torch.Tensor]:
        big, small = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
        big.grad, small.grad = torch.tensor([6.0, 0.0, 8.0]), torch.tensor([0.3, 0.4])  # norms 10 and 0.5
        return [big, small]

    own = grads()
    clip_gradients(own, 1.0, per_parameter=True)
    assert own[0].grad.norm().item() == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(own[1].grad, torch.tensor([0.3, 0.4]))
    together = grads()
    clip_gradients(together, 1.0, per_parameter=False)
    total = torch.cat([p.grad for p in together]).norm().item()
    assert total == pytest.approx(1.0, rel=1e-4) and together[1].grad.norm().item() < 0.06


def test_the_loop_clips_per_parameter_when_its_config_says_so():
    """fit() with clip_per_parameter: the weight and the bias, both far over the bound, each move by the bound
    (one SGD step at lr 1); a global clip moves them by the bound together, the bias by less than half of it."""
    def moves(per_parameter: bool) -> tuple[float, float]:
        model, opt, compute_loss, batches = _toy([1.0] * 2)
        with torch.no_grad():
            model.weight.fill_(10.0)
            model.bias.fill_(0.01)
        before = [p.detach().clone() for p in (model.weight, model.bias)]
        fit(Step(model, compute_loss, torch.optim.SGD(model.parameters(), lr=1.0),
                 torch.full((2,), 1.0, dtype=torch.float64)), batches,
            LoopConfig(epochs=1, steps_per_epoch=1, clip_grad=1.0, clip_per_parameter=per_parameter),
            torch.device("cpu"))
        return tuple((p - b).norm().item() for p, b in zip((model.weight, model.bias), before, strict=True))

    # Gradients: 2 x 40.01 for the bias and for each of the weight's 4 entries.
    weight_own, bias_own = moves(True)
    weight_all, bias_all = moves(False)
    assert weight_own == pytest.approx(1.0, rel=1e-3) and bias_own == pytest.approx(1.0, rel=1e-3)
    assert (weight_all ** 2 + bias_all ** 2) ** 0.5 == pytest.approx(1.0, rel=1e-3) and bias_all < 0.5


def test_a_step_whose_gradients_the_method_dropped_leaves_the_weights_even_under_fp16_scaling():
    """DeepCluster v2 drops every gradient in its memory-filling epoch: the loop makes no optimizer step then
    (weight decay would still move the weights; the GradScaler would refuse a step without gradients)."""
    model, _, compute_loss, batches = _toy([1.0] * 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = [p.detach().clone() for p in model.parameters()]

    def drop(step: int) -> None:
        for p in model.parameters():
            p.grad = None

    fit(Step(model, compute_loss, opt, torch.full((2,), 1.0, dtype=torch.float64), cancel_gradients=drop), batches,
        LoopConfig(epochs=1, steps_per_epoch=2, precision="fp16"), torch.device("cpu"))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)) and not opt.state
    # Negative control: with the gradients kept, the same run moves them (a loss scale whose scaled gradients
    # fit in fp16: at the default 2**16 they overflow for some initial weights, and the scaler skips both steps).
    fit(Step(model, compute_loss, opt, torch.full((2,), 1.0, dtype=torch.float64),
             scaler=torch.amp.GradScaler("cpu", init_scale=2.0**4)), batches,
        LoopConfig(epochs=1, steps_per_epoch=2, precision="fp16"), torch.device("cpu"))
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


# ---------------------------------------------------------------- the sync-free step (guard.py)

OPTIMIZERS = ["sgd", "lars", "adamw", "lamb"]


def _mlp_run(optimizer: str, sync_free: bool, losses_at: dict[int, float] | None = None, on_nan: str = "stop",
             steps: int = 6, max_nan_skips: int = 10, batch_norm: bool = False, precision: str = "fp32",
             scaler: torch.amp.GradScaler | None = None):
    """A small seeded model trained by fit; losses_at forces the loss of some steps (e.g. to NaN)."""
    from sslcli.pretraining import build_optimizer
    from sslcli.spec import OptimConfig

    torch.manual_seed(0)
    layers = [nn.Linear(8, 16)] + ([nn.BatchNorm1d(16)] if batch_norm else []) + [nn.ReLU(), nn.Linear(16, 4)]
    model = nn.Sequential(*layers)
    opt = build_optimizer(model, OptimConfig(name=optimizer, weight_decay=1e-4, momentum=0.9, trust_coeff=0.02), 0.05)
    data = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(1))[:steps]
    # A buffer standing for an EMA target, queue or center: changed in on_step_end, as methods do.
    model.register_buffer("ema", torch.zeros(()))
    ema = model.ema

    def loss(batch, step: int) -> StepOut:
        out = model(batch[0]).pow(2).mean()
        if losses_at and step in losses_at:
            out = out * losses_at[step]
        return StepOut(loss=out)

    def on_step_end(step: int) -> None:
        ema.add_(model[0].weight.sum().detach())

    def batches(epoch: int, skip: int = 0):
        for i in range(skip, 3):
            yield (data[epoch * 3 + i], torch.zeros(5))

    cfg = LoopConfig(epochs=steps // 3, steps_per_epoch=3, log_every=4, on_nan=on_nan,
                     max_nan_skips=max_nan_skips, sync_free=sync_free, precision=precision)
    schedule = torch.linspace(0.05, 0.01, 6, dtype=torch.float64)[:steps]
    try:
        result = fit(Step(model, loss, opt, schedule, scaler=scaler), batches, cfg, torch.device("cpu"),
                     Events(on_step_end=on_step_end))
        error = None
    except RunError as exc:
        result, error = None, str(exc)
    return model, ema, result, error


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_sync_free_training_equals_the_synchronous_loop_bit_for_bit(optimizer: str):
    sync_model, sync_ema, sync_result, _ = _mlp_run(optimizer, sync_free=False, batch_norm=True)
    free_model, free_ema, free_result, _ = _mlp_run(optimizer, sync_free=True, batch_norm=True)
    for (name, a), b in zip(sync_model.state_dict().items(), free_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(sync_ema, free_ema)
    assert sync_result.last_loss == free_result.last_loss and sync_result.steps == free_result.steps == 6


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_sync_free_stop_never_applies_a_non_finite_step_and_names_it(optimizer: str, bad: float):
    # Step index 4 (the 5th) is bad; steps 2-3 ran deferred, so the error comes at a later read.
    reference, ref_ema, _, _ = _mlp_run(optimizer, sync_free=False, steps=6, losses_at={4: bad})
    model, ema, result, error = _mlp_run(optimizer, sync_free=True, steps=6, losses_at={4: bad})
    _, _, _, sync_error = _mlp_run(optimizer, sync_free=False, steps=6, losses_at={4: bad})
    assert result is None and error == sync_error and "at step 5 " in error
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the weights of step 4, untouched by the bad step
    assert torch.isfinite(ema) and torch.equal(ema, ref_ema)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_sync_free_skip_undoes_bad_steps_and_stops_past_the_limit(optimizer: str):
    skipped = {3: float("nan"), 4: float("inf")}
    sync_model, sync_ema, sync_result, _ = _mlp_run(optimizer, sync_free=False, on_nan="skip", losses_at=skipped)
    model, ema, result, error = _mlp_run(optimizer, sync_free=True, on_nan="skip", losses_at=skipped)
    assert error is None and result.skipped_steps == sync_result.skipped_steps == 2
    for (name, a), b in zip(sync_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.isfinite(b).all(), name
        if optimizer == "lamb":  # its step count lives on the host, in the param group: it still advances on a
            torch.testing.assert_close(a, b, rtol=0.1, atol=1e-3)  # skipped step (bias correction only)
        else:
            assert torch.equal(a, b), name
    # One bad step more than max_nan_skips stops the run, as the synchronous loop does, naming that step.
    _, _, _, error = _mlp_run(optimizer, sync_free=True, on_nan="skip", losses_at=skipped, max_nan_skips=1)
    _, _, _, sync_error = _mlp_run(optimizer, sync_free=False, on_nan="skip", losses_at=skipped, max_nan_skips=1)
    assert error == sync_error and "at step 5 " in error


def test_sync_free_undoes_batch_norm_statistics_of_a_bad_step():
    # The forward of a bad step already moved BN's running statistics: the device guard sets them back too.
    clean, _, _, _ = _mlp_run("sgd", sync_free=True, steps=3, batch_norm=True)
    model, _, _, error = _mlp_run("sgd", sync_free=True, steps=6, batch_norm=True, losses_at={3: float("nan")})
    assert error is not None and "at step 4 " in error
    assert torch.equal(model[1].running_mean, clean[1].running_mean)
    assert torch.equal(model[1].running_var, clean[1].running_var)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_sync_free_fp16_skips_overflowing_steps_as_the_grad_scaler_does(optimizer: str):
    """fp16 (CPU autocast here, CUDA's in use): steps 2 and 3 scale the loss so that the scaled gradients
    overflow in fp16 while the loss stays finite. The GradScaler skips those updates (and halves its scale),
    keeping their BN statistics and the on_step_end work; the sync-free step, which never reads the overflow
    on the host, ends with the same weights, buffers and scale."""
    overflow = {2: 3e4, 3: 3e4}
    runs = {}
    for sync_free in (False, True):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
        runs[sync_free] = (*_mlp_run(optimizer, sync_free=sync_free, losses_at=overflow, batch_norm=True,
                                     precision="fp16", scaler=scaler), scaler.get_scale())
    (sync_model, sync_ema, sync_result, sync_error, sync_scale) = runs[False]
    (model, ema, result, error, scale) = runs[True]
    assert sync_error is None and error is None and result.skipped_steps == sync_result.skipped_steps == 0
    assert scale == sync_scale == 2.0**8, "the scaler halved its scale at each of the two overflows, in both loops"
    for (name, a), b in zip(sync_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.isfinite(b).all(), name
        if optimizer == "lamb":  # its step count lives on the host: it advanced on the two skipped steps, which
            torch.testing.assert_close(a, b, rtol=0.25, atol=1e-2)  # moves the bias correction of steps 4 and 5
        else:
            assert torch.equal(a, b), name
    if optimizer == "lamb":
        torch.testing.assert_close(sync_ema, ema, rtol=1e-3, atol=1e-3)
    else:
        assert torch.equal(sync_ema, ema) and sync_result.last_loss == result.last_loss
    # Negative control: without the overflows the weights end elsewhere, so the skips above were real.
    clean, *_ = _mlp_run(optimizer, sync_free=True, batch_norm=True, precision="fp16",
                         scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000))
    assert not torch.equal(clean[0].weight, model[0].weight)


@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_sync_free_fp16_still_stops_or_skips_a_non_finite_loss(on_nan: str):
    bad = {4: float("nan")}
    sync = _mlp_run("sgd", sync_free=False, losses_at=bad, on_nan=on_nan, precision="fp16",
                    scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    free = _mlp_run("sgd", sync_free=True, losses_at=bad, on_nan=on_nan, precision="fp16",
                    scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert free[3] == sync[3], "the same error (stop) or none (skip)"
    if on_nan == "stop":
        assert "at step 5 " in free[3]
    else:
        assert free[2].skipped_steps == sync[2].skipped_steps == 1
    for (name, a), b in zip(sync[0].state_dict().items(), free[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), name
