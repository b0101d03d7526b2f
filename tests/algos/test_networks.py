"""poke_rl.algos.networks and .masked: encoder, masking helpers, Bellman target, Polyak update, expectile loss, checkpoint helpers."""

from __future__ import annotations

import pytest
import torch

from poke_rl.algos.iql import expectile_loss
from poke_rl.algos.masked import (
    bellman_target,
    check_batch,
    check_masks,
    masked_argmax,
    masked_cross_entropy,
    masked_entropy,
    masked_logsumexp,
    masked_max,
    masked_softmax,
)
from poke_rl.algos.networks import (
    ModelConfig,
    StateEncoder,
    StateNetwork,
    load_module,
    make_target,
    polyak_update,
)
from poke_rl.batch import Batch, FeatureSpec
from poke_rl.errors import PokeRLError

torch.set_num_threads(1)


@pytest.fixture
def spec() -> FeatureSpec:
    return FeatureSpec(
        ("species", "move", "species", "weather"), (("move", 5), ("species", 7), ("weather", 3)), 2
    )


@pytest.fixture
def masked_logits() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=generator) * 5
    mask = torch.rand(64, 10, generator=generator) < 0.4
    mask[torch.arange(64), torch.randint(0, 10, (64,), generator=generator)] = True
    # Illegal actions carry the largest raw values: any leak would show.
    logits = torch.where(mask, logits, torch.full_like(logits, 1e6))
    return logits, mask


def test_encoder_shares_one_embedding_per_vocabulary(spec: FeatureSpec) -> None:
    encoder = StateEncoder(spec, ModelConfig(embed_dim=3, hidden_sizes=(), embed_dropout=0.0))
    assert sorted(encoder.embeddings) == ["move", "species", "weather"]
    assert encoder.embeddings["species"].weight.shape == (7, 3)
    assert encoder.out_dim == 4 * 3 + 2
    ids = torch.tensor([[6, 4, 2, 1]], dtype=torch.int16)
    num = torch.tensor([[0.5, -1.0]])
    out = encoder(ids, num)
    species = encoder.embeddings["species"].weight
    expected = torch.cat(
        [species[6], species[2], encoder.embeddings["move"].weight[4],
         encoder.embeddings["weather"].weight[1], num[0]]
    )  # fmt: skip
    torch.testing.assert_close(out[0], expected, rtol=0, atol=0)


def test_encoder_mlp_and_gradients_reach_shared_embeddings(spec: FeatureSpec) -> None:
    network = StateNetwork(spec, ModelConfig(embed_dim=4, hidden_sizes=(16, 8), embed_dropout=0.0), 10)
    ids = torch.tensor([[1, 0, 3, 2], [5, 1, 5, 0]], dtype=torch.int16)
    out = network(ids, torch.zeros(2, 2))
    assert out.shape == (2, 10) and out.dtype == torch.float32
    out.sum().backward()
    species_grad = network.encoder.embeddings["species"].weight.grad
    touched = species_grad.abs().sum(dim=1) > 0
    assert touched.tolist() == [False, True, False, True, False, True, False]


def test_masked_softmax_gives_exactly_zero_to_illegal(masked_logits) -> None:
    logits, mask = masked_logits
    probs = masked_softmax(logits, mask)
    assert torch.all(probs[~mask] == 0.0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(64))
    row = 3
    legal = mask[row].nonzero().squeeze(1)
    torch.testing.assert_close(probs[row, legal], torch.softmax(logits[row, legal], dim=0))


def test_masked_argmax_max_logsumexp_use_legal_actions_only(masked_logits) -> None:
    logits, mask = masked_logits
    greedy = masked_argmax(logits, mask)
    assert mask[torch.arange(64), greedy].all()
    for row in range(64):
        legal = logits[row][mask[row]]
        assert logits[row, greedy[row]] == legal.max()
        assert masked_max(logits, mask)[row] == legal.max()
        torch.testing.assert_close(masked_logsumexp(logits, mask)[row], torch.logsumexp(legal, 0))


def test_masked_entropy_and_cross_entropy(masked_logits) -> None:
    logits, mask = masked_logits
    entropy = masked_entropy(logits, mask)
    assert torch.isfinite(entropy).all()
    single = mask.sum(dim=1) == 1
    assert torch.all(entropy[single] == 0)
    uniform = torch.zeros(1, 10)
    uniform_mask = torch.tensor([[True] * 4 + [False] * 6])
    torch.testing.assert_close(
        masked_entropy(uniform, uniform_mask), torch.log(torch.tensor([4.0]))
    )
    action = masked_argmax(logits, mask)
    ce = masked_cross_entropy(logits, mask, action)
    log_probs = torch.log(masked_softmax(logits, mask))
    torch.testing.assert_close(ce, -log_probs[torch.arange(64), action])


def test_masked_gradients_are_zero_on_illegal_entries(masked_logits) -> None:
    logits, mask = masked_logits
    logits = logits.clone().requires_grad_(True)
    action = masked_argmax(logits.detach(), mask)
    loss = masked_cross_entropy(logits, mask, action).sum() + masked_logsumexp(logits, mask).sum()
    loss = loss + masked_entropy(logits, mask).sum()
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[~mask] == 0)


def test_check_masks_raises_on_empty_row_and_illegal_action() -> None:
    mask = torch.ones(3, 10, dtype=torch.bool)
    check_masks(mask, torch.tensor([0, 5, 9]))
    mask[1] = False
    with pytest.raises(ValueError, match="row 1 .*no legal action"):
        check_masks(mask)
    mask[1, 2] = True
    with pytest.raises(ValueError, match="row 1: data action 3 is illegal"):
        check_masks(mask, torch.tensor([0, 3, 9]))


def _batch(done: list[bool], next_mask: torch.Tensor) -> Batch:
    rows = len(done)
    return Batch(
        torch.zeros(rows, 1, dtype=torch.int16), torch.zeros(rows, 2),
        torch.zeros(rows, 1, dtype=torch.int16), torch.zeros(rows, 2),
        torch.zeros(rows, dtype=torch.int64), torch.zeros(rows),
        torch.tensor(done), torch.ones(rows, 10, dtype=torch.bool), next_mask,
    )  # fmt: skip


def test_check_batch_allows_terminal_empty_next_mask_only() -> None:
    next_mask = torch.ones(2, 10, dtype=torch.bool)
    next_mask[1] = False
    check_batch(_batch([False, True], next_mask))
    with pytest.raises(ValueError, match="row 1 is not terminal"):
        check_batch(_batch([False, False], next_mask))


def test_bellman_target_is_reward_at_terminal_whatever_the_next_value() -> None:
    reward = torch.ones(4)
    done = torch.tensor([True, True, True, False])
    next_value = torch.tensor([float("-inf"), float("nan"), 1e30, 2.0])
    target = bellman_target(reward, done, next_value, 0.99)
    assert target[:3].tolist() == [1.0, 1.0, 1.0]
    assert target[3].item() == pytest.approx(1.0 + 0.99 * 2.0)


def test_polyak_steps_match_closed_form() -> None:
    online = torch.nn.Linear(4, 3)
    target = make_target(online)
    with torch.no_grad():
        for param in target.parameters():
            param.add_(1.0)
    start = [p.detach().clone() for p in target.parameters()]
    tau, steps = 0.05, 40
    for _ in range(steps):
        polyak_update(target, online, tau)
    for param, initial, source in zip(target.parameters(), start, online.parameters(), strict=True):
        closed_form = source + (1 - tau) ** steps * (initial - source)
        torch.testing.assert_close(param, closed_form.detach(), rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in target.parameters())


@pytest.mark.parametrize(("p", "tau"), [(0.3, 0.7), (0.5, 0.9), (0.8, 0.5), (0.1, 0.99)])
def test_expectile_regression_recovers_bernoulli_expectile(p: float, tau: float) -> None:
    samples = 1000
    targets = torch.zeros(samples)
    targets[: round(p * samples)] = 1.0  # exactly Bernoulli(p) frequencies
    value = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([value], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = expectile_loss(targets - value, tau)
        loss.backward()
        return loss

    optimizer.step(closure)
    expected = tau * p / (tau * p + (1 - tau) * (1 - p))
    assert value.item() == pytest.approx(expected, abs=1e-5)


def test_load_module_names_the_mismatch(spec: FeatureSpec) -> None:
    small = StateNetwork(spec, ModelConfig(embed_dim=3, hidden_sizes=(8,), embed_dropout=0.0), 10)
    large = StateNetwork(spec, ModelConfig(embed_dim=3, hidden_sizes=(16,), embed_dropout=0.0), 10)
    with pytest.raises(PokeRLError, match=r"does not fit this model .*encoder\.mlp\.0\.weight"):
        load_module(large, small.state_dict(), "BC policy")
    copy = StateNetwork(spec, ModelConfig(embed_dim=3, hidden_sizes=(8,), embed_dropout=0.0), 10)
    load_module(copy, small.state_dict(), "BC policy")
    assert all(
        torch.equal(a, b) for a, b in zip(copy.parameters(), small.parameters(), strict=True)
    )
