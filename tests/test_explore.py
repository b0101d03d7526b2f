"""poke_rl.policy.explore_action: temperature sampling follows softmax(logits / T) over the legal
actions of a fixed network, top-2 ε plays only the two best legal actions (the second with
probability ε), an illegal action is never chosen, and a seeded generator repeats its draws."""

from __future__ import annotations

import math

import pytest
import torch

from poke_rl.errors import PokeRLError
from poke_rl.policy import explore_action

MASK = torch.tensor([True, False, True, True, False, True, True, False, False, True])


@pytest.fixture(scope="module")
def logits() -> torch.Tensor:
    torch.manual_seed(3)
    network = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    with torch.no_grad():
        raw = network(torch.randn(6)) * 2.0
    return raw.masked_fill(~MASK, float("-inf"))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_temperature_frequencies_follow_the_softmax(logits: torch.Tensor, temperature: float) -> None:
    generator = torch.Generator().manual_seed(11)
    draws = 6_000
    counts = torch.zeros(10)
    for _ in range(draws):
        counts[explore_action(logits, temperature=temperature, generator=generator)] += 1
    expected = torch.softmax(logits.double() / temperature, dim=0)
    assert counts[~MASK].sum() == 0  # never an illegal action
    for action in range(10):
        p = float(expected[action])
        sd = math.sqrt(p * (1 - p) / draws)
        assert abs(float(counts[action]) / draws - p) <= 4 * sd + 1e-12, action
    assert (counts > 0).sum() == int(MASK.sum())  # every legal action gets drawn


def test_top2_plays_only_the_two_best_legal_actions(logits: torch.Tensor) -> None:
    best, second = (int(i) for i in torch.argsort(logits, descending=True)[:2])
    generator = torch.Generator().manual_seed(5)
    draws = [explore_action(logits, top2=0.25, generator=generator) for _ in range(4_000)]
    assert set(draws) == {best, second}
    assert draws.count(second) / len(draws) == pytest.approx(0.25, abs=4 * math.sqrt(0.25 * 0.75 / 4000))
    assert explore_action(logits) == best and explore_action(logits, top2=0.0) == best
    one_legal = torch.full((10,), float("-inf"))
    one_legal[7] = -3.0
    assert {explore_action(one_legal, top2=1.0) for _ in range(20)} == {7}  # no second: the best


def test_seeded_draws_repeat_and_bad_options_are_refused(logits: torch.Tensor) -> None:
    def run(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [explore_action(logits, temperature=1.0, generator=generator) for _ in range(50)]

    assert run(1) == run(1) and run(1) != run(2)
    for options, message in (({"temperature": -1.0}, "temperature must be"),
                             ({"top2": 1.5}, "top-2 epsilon"),
                             ({"temperature": 1.0, "top2": 0.1}, "not both")):
        with pytest.raises(PokeRLError, match=message):
            explore_action(logits, **options)
    with pytest.raises(PokeRLError, match="no legal action"):
        explore_action(torch.full((10,), float("-inf")), temperature=1.0)
