"""Tests for poke_rl/algos/schedule.py: warmup + cosine values, attached to every optimiser."""

from __future__ import annotations

import math

import pytest
import torch

from poke_rl.algos.schedule import WarmupCosine, attach_schedules


def test_factor_values() -> None:
    schedule = WarmupCosine(warmup_steps=100, total_steps=1000, floor=0.1)
    assert schedule(0) == pytest.approx(0.01)  # the first update already moves the weights
    assert schedule(49) == pytest.approx(0.5)
    assert schedule(99) == pytest.approx(1.0)
    assert schedule(100) == 1.0  # right after warmup: the peak
    assert schedule(550) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert schedule(1000) == pytest.approx(0.1)
    assert schedule(5000) == pytest.approx(0.1)  # past the end: the floor, not a rebound
    factors = [schedule(step) for step in range(2000)]
    assert min(factors[100:]) >= 0.1 - 1e-12
    assert all(a >= b for a, b in zip(factors[100:], factors[101:], strict=False))  # monotone decay


def test_no_warmup_starts_at_peak() -> None:
    schedule = WarmupCosine(warmup_steps=0, total_steps=10, floor=0.0)
    assert schedule(0) == 1.0
    assert schedule(5) == pytest.approx(0.5)
    assert schedule(10) == pytest.approx(0.0, abs=1e-12)


def test_bad_lengths_raise() -> None:
    with pytest.raises(ValueError):
        WarmupCosine(warmup_steps=-1, total_steps=10)
    with pytest.raises(ValueError):
        WarmupCosine(warmup_steps=1, total_steps=10, floor=1.5)


def test_attached_to_every_optimiser() -> None:
    """The seed's expectations, on real optimisers: peak after warmup, < half of it at the end."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    peak = 1e-3
    optimizers = [
        torch.optim.Adam(model.parameters(), lr=peak),
        torch.optim.Adam(model.parameters(), lr=peak / 2),
    ]
    schedulers = attach_schedules(optimizers, WarmupCosine(100, 1000, floor=0.1))
    seen = []
    for _ in range(1000):
        seen.append([opt.param_groups[0]["lr"] for opt in optimizers])
        for opt in optimizers:
            opt.step()
        for scheduler in schedulers:
            scheduler.step()
        if len(seen) == 100:
            assert optimizers[0].param_groups[0]["lr"] == pytest.approx(peak)
            assert optimizers[1].param_groups[0]["lr"] == pytest.approx(peak / 2)
    assert seen[0][0] == pytest.approx(peak / 100)
    assert optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * peak)
    assert optimizers[0].param_groups[0]["lr"] < 0.5 * peak
    assert min(lr for lr, _ in seen[100:]) >= 0.1 * peak * (1 - 1e-9)
    assert all(math.isclose(a, 2 * b) for a, b in seen)  # one curve, each optimiser's own peak


def test_state_round_trip_continues_the_curve() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (scheduler,) = attach_schedules([optimizer], WarmupCosine(5, 50))
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    other_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (other,) = attach_schedules([other_opt], WarmupCosine(5, 50))
    other.load_state_dict(state)
    for _ in range(10):
        optimizer.step()
        other_opt.step()
        scheduler.step()
        other.step()
    assert other.get_last_lr() == scheduler.get_last_lr()
