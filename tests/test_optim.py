"""optim: the learning-rate schedules and sharpness-aware gradients."""

import re
from dataclasses import replace

import pytest
import torch
from conftest import SMALL

from mnist_digits.errors import MnistDigitsError
from mnist_digits.model import DigitNet
from mnist_digits.optim import PlateauScheduler, make_scheduler, sharpness_aware_gradients
from mnist_digits.recipes import TrainConfig, recipe


def _lr_after(accuracies: list[float], config: TrainConfig) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = PlateauScheduler(optimizer, config)
    rates = []
    for accuracy in accuracies:
        scheduler.after_epoch(accuracy)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_plateau_halves_lr_after_three_epochs_without_improvement():
    rates = _lr_after([0.90, 0.95, 0.95, 0.95, 0.95, 0.96, 0.96, 0.96, 0.96], TrainConfig())
    assert rates == [1e-3] * 4 + [5e-4] * 4 + [2.5e-4]


def test_plateau_counts_gains_below_min_delta_as_no_improvement():
    rates = _lr_after([0.99, 0.99005, 0.99009, 0.99009], TrainConfig())
    assert rates[-1] == 5e-4


def test_plateau_reports_each_change_and_respects_the_floor():
    config = replace(TrainConfig(), plateau_patience=0, min_lr=3e-4)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = PlateauScheduler(optimizer, config)
    assert scheduler.after_epoch(0.5) is None  # the first epoch sets the best
    assert scheduler.after_epoch(0.5) == (1e-3, 5e-4)
    assert scheduler.after_epoch(0.5) == (5e-4, 3e-4)
    assert scheduler.after_epoch(0.5) is None  # at the floor: nothing left to change


def test_onecycle_ends_at_the_peak_over_final_div():
    for final_div in (25_000.0, 4.0):
        config = replace(
            SMALL, schedule="onecycle", optimizer="adamw", lr=8e-3, epochs=3, final_div=final_div
        )
        optimizer = torch.optim.AdamW(DigitNet(config.model).parameters(), lr=config.lr)
        scheduler = make_scheduler(optimizer, config, train_size=10 * config.batch_size)
        lrs = []
        for _ in range(30 + 5):  # 3 epochs of 10 batches, and spare steps that must change nothing
            optimizer.step()
            scheduler.after_batch()
            lrs.append(optimizer.param_groups[0]["lr"])  # the next batch's lr
        assert max(lrs) == pytest.approx(8e-3, rel=0.01)
        assert lrs[28] == pytest.approx(8e-3 / final_div)  # the last batch's
        assert lrs[-1] == lrs[29]
        assert f"down to {8e-3 / final_div:.1e}" in scheduler.describe()
    with pytest.raises(MnistDigitsError, match=re.escape("final_div 0.5: give a ratio, 1 or more")):
        TrainConfig(final_div=0.5)


def test_sharpness_aware_gradients_are_taken_uphill_and_leave_the_network_as_it_was():
    config = recipe("best", sam=0.05)
    torch.manual_seed(0)
    model = DigitNet(config.model).train()
    images, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def loss_of(network):
        return torch.nn.functional.cross_entropy(network(images), labels, label_smoothing=0.1)

    # the expected gradients, by hand: a copy moved 0.05 along the normalized gradient
    loss_of(model).backward()
    uphill = DigitNet(config.model).train()
    uphill.load_state_dict(model.state_dict())
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    with torch.no_grad():
        for moved, p in zip(uphill.parameters(), model.parameters(), strict=True):
            moved.add_(p.grad * 0.05 / norm)
    loss_of(uphill).backward()

    weights = {k: v.clone() for k, v in model.state_dict().items()}
    sharpness_aware_gradients(model, config.sam, lambda: loss_of(model))
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), f"{name} changed"  # weights and BatchNorm statistics
    for p, expected in zip(model.parameters(), uphill.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected.grad)
    assert model[0].weight.grad.abs().sum() > 0  # a real gradient, not zeros
