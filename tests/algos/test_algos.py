"""BC, IQL and CQL: values against dynamic programming, masking, targets, resume, the registry."""

from __future__ import annotations

import io
import math

import pytest
import torch

from poke_rl.algos import ALGO_NAMES, CQL, IQL, make_algorithm, make_config
from poke_rl.algos.bc import bc_loss
from poke_rl.algos.cql import cql_head_loss, cql_penalty, double_dqn_value
from poke_rl.algos.iql import awr_policy_loss, awr_weights
from poke_rl.algos.masked import bellman_target, check_masks
from poke_rl.algos.networks import ModelConfig
from poke_rl.batch import Batch, FeatureSpec
from poke_rl.errors import PokeRLError

torch.set_num_threads(1)

TABULAR = ModelConfig(embed_dim=1, hidden_sizes=(), embed_dropout=0.0)
SMALL = ModelConfig(embed_dim=4, hidden_sizes=(32, 32), embed_dropout=0.0)


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return FeatureSpec(("species", "move", "species"), (("move", 6), ("species", 9)), 3)


def random_batch(spec: FeatureSpec, rows: int, seed: int, terminal_fraction: float = 0.2) -> Batch:
    """Legal data actions; terminal rows have an all-false next mask and zero next features."""
    generator = torch.Generator().manual_seed(seed)
    sizes = dict(spec.vocab_sizes)
    high = torch.tensor([sizes[v] for v in spec.id_vocabs])

    def ids() -> torch.Tensor:
        return (torch.rand(rows, spec.num_ids, generator=generator) * high).to(torch.int16)

    def mask() -> torch.Tensor:
        legal = torch.rand(rows, 10, generator=generator) < 0.5
        legal[torch.arange(rows), torch.randint(0, 10, (rows,), generator=generator)] = True
        return legal

    legal = mask()
    action = torch.multinomial(legal.float(), 1, generator=generator).squeeze(1)
    done = torch.rand(rows, generator=generator) < terminal_fraction
    next_ids, next_num = ids(), torch.rand(rows, spec.num_dim, generator=generator)
    next_ids[done] = 0
    next_num[done] = 0
    next_mask = mask() & ~done[:, None]
    return Batch(
        ids(), torch.rand(rows, spec.num_dim, generator=generator), next_ids, next_num,
        action, torch.randn(rows, generator=generator), done, legal, next_mask,
    )  # fmt: skip


# -- a tabular chain MDP, solved by dynamic programming -------------------------------------------

CHAIN_STATES = 4
CHAIN_GAMMA = 0.9
CHAIN_ACTIONS = (0, 1, 5)  # advance, stay, reset (a switch index); the other 7 are illegal
CHAIN_BEHAVIOUR = (0.5, 0.3, 0.2)
CHAIN_COUNTS = (5, 3, 2)  # rows per (state, action) in the data, proportional to the behaviour


def chain_step(state: int, action: int) -> tuple[float, int | None]:
    """(reward, next state or None at a terminal)."""
    if action == 0:
        return (1.0, None) if state == CHAIN_STATES - 1 else (0.0, state + 1)
    if action == 1:
        return 0.05, state
    return 0.2, 0


def chain_values(backup) -> torch.Tensor:
    """Q [states, 3] (legal actions in CHAIN_ACTIONS order) at the fixed point of
    Q(s, a) = r + gamma * backup(Q(s', .)) by value iteration."""
    q = torch.zeros(CHAIN_STATES, len(CHAIN_ACTIONS), dtype=torch.float64)
    for _ in range(300):  # gamma**300 < 1e-13
        new = torch.zeros_like(q)
        for state in range(CHAIN_STATES):
            for column, action in enumerate(CHAIN_ACTIONS):
                reward, next_state = chain_step(state, action)
                new[state, column] = reward + (
                    0.0 if next_state is None else CHAIN_GAMMA * backup(q[next_state])
                )
        q = new
    return q


def expectile(values: torch.Tensor, weights: torch.Tensor, tau: float) -> float:
    """The tau-expectile of a discrete distribution, by bisection."""
    low, high = float(values.min()), float(values.max())
    for _ in range(60):
        mid = (low + high) / 2
        diff = values - mid
        gradient = (weights * torch.where(diff > 0, tau, 1 - tau) * diff).sum()
        low, high = (mid, high) if gradient > 0 else (low, mid)
    return (low + high) / 2


def chain_batch() -> Batch:
    """Every (state, legal action) of the chain, repeated in proportion to the behaviour policy;
    one-hot states as the numeric features, no id columns."""
    legal = torch.zeros(10, dtype=torch.bool)
    legal[list(CHAIN_ACTIONS)] = True
    rows = []
    for state in range(CHAIN_STATES):
        for action, count in zip(CHAIN_ACTIONS, CHAIN_COUNTS, strict=True):
            reward, next_state = chain_step(state, action)
            rows += [(state, action, reward, next_state)] * count
    eye = torch.eye(CHAIN_STATES)
    size = len(rows)
    done = torch.tensor([next_state is None for *_, next_state in rows])
    return Batch(
        torch.zeros(size, 0, dtype=torch.int16),
        torch.stack([eye[state] for state, *_ in rows]),
        torch.zeros(size, 0, dtype=torch.int16),
        torch.stack([torch.zeros(CHAIN_STATES) if n is None else eye[n] for *_, n in rows]),
        torch.tensor([action for _, action, *_ in rows]),
        torch.tensor([reward for _, _, reward, _ in rows]),
        done,
        legal.expand(size, 10).clone(),
        legal.expand(size, 10) & ~done[:, None],
    )


CHAIN_SPEC = FeatureSpec((), (), CHAIN_STATES)


def learned_chain_q(algorithm: IQL | CQL) -> torch.Tensor:
    with torch.no_grad():
        q1, q2 = algorithm.q(
            torch.zeros(CHAIN_STATES, 0, dtype=torch.int16), torch.eye(CHAIN_STATES)
        )
    return torch.minimum(q1, q2)[:, list(CHAIN_ACTIONS)].double()


def train(algorithm, batch: Batch, steps: int) -> None:
    for _ in range(steps):
        algorithm.update(batch)


CHAIN_TRAINING = {"gamma": CHAIN_GAMMA, "lr": 0.02, "polyak_tau": 0.1}


def test_iql_with_median_expectile_recovers_behaviour_q() -> None:
    behaviour = torch.tensor(CHAIN_BEHAVIOUR, dtype=torch.float64)
    q_behaviour = chain_values(lambda next_q: (behaviour * next_q).sum())
    q_star = chain_values(lambda next_q: next_q.max())
    iql = make_algorithm("iql", CHAIN_SPEC, TABULAR, {**CHAIN_TRAINING, "tau": 0.5})
    train(iql, chain_batch(), 1500)
    learned = learned_chain_q(iql)
    torch.testing.assert_close(learned, q_behaviour, rtol=0, atol=0.01)
    assert (q_star - q_behaviour).abs().max() > 0.2  # the two are far apart in this MDP


@pytest.mark.slow
def test_iql_with_high_expectile_approaches_optimal_q() -> None:
    behaviour = torch.tensor(CHAIN_BEHAVIOUR, dtype=torch.float64)
    q_star = chain_values(lambda next_q: next_q.max())
    q_expectile = chain_values(lambda next_q: expectile(next_q, behaviour, 0.99))
    q_behaviour = chain_values(lambda next_q: (behaviour * next_q).sum())
    iql = make_algorithm("iql", CHAIN_SPEC, TABULAR, {**CHAIN_TRAINING, "tau": 0.99})
    train(iql, chain_batch(), 1500)
    learned = learned_chain_q(iql)
    torch.testing.assert_close(learned, q_expectile, rtol=0, atol=0.01)
    # The 0.99-expectile is just below the max, and gamma = 0.9 compounds the shortfall.
    assert (learned - q_star).abs().max() < 0.1
    assert (learned - q_star).abs().max() < 0.2 * (q_behaviour - q_star).abs().max()


def test_cql_without_penalty_recovers_optimal_q() -> None:
    q_star = chain_values(lambda next_q: next_q.max())
    cql = make_algorithm("cql", CHAIN_SPEC, TABULAR, {**CHAIN_TRAINING, "alpha": 0.0})
    train(cql, chain_batch(), 1500)
    torch.testing.assert_close(learned_chain_q(cql), q_star, rtol=0, atol=0.01)
    greedy = cql.greedy_action(
        torch.zeros(CHAIN_STATES, 0, dtype=torch.int16),
        torch.eye(CHAIN_STATES),
        torch.zeros(CHAIN_STATES, 10, dtype=torch.bool).index_fill(
            1, torch.tensor(CHAIN_ACTIONS), True
        ),
    )
    best = [CHAIN_ACTIONS[int(column)] for column in q_star.argmax(dim=1)]
    assert greedy.tolist() == best


# -- terminal rows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iql", "cql"])
def test_terminal_target_is_the_reward_whatever_the_next_state(
    spec: FeatureSpec, name: str
) -> None:
    batch = random_batch(spec, 32, seed=1)
    generator = torch.Generator().manual_seed(2)
    batch = batch._replace(
        next_ids=(torch.rand(32, spec.num_ids, generator=generator) * 5).to(torch.int16),
        next_num=torch.randn(32, spec.num_dim, generator=generator) * 1e6,
        reward=torch.ones(32),
        done=torch.ones(32, dtype=torch.bool),
        next_mask=torch.zeros(32, 10, dtype=torch.bool),
    )
    algorithm = make_algorithm(name, spec, SMALL)
    assert torch.equal(algorithm.td_target(batch), torch.ones(32))
    for _ in range(3):
        metrics = algorithm.update(batch)
    assert all(torch.isfinite(value) for value in metrics.values())
    assert all(torch.isfinite(value) for value in algorithm.evaluate(batch).values())


def test_double_dqn_value_picks_best_legal_online_action_valued_by_target() -> None:
    online = torch.tensor([[5.0, 1.0, 9.0], [0.0, 2.0, 1.0]])
    target = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    next_mask = torch.tensor([[True, True, False], [True, False, True]])
    assert double_dqn_value(online, target, next_mask).tolist() == [10.0, 60.0]
    empty = torch.zeros(2, 3, dtype=torch.bool)
    value = double_dqn_value(online, target, empty)
    assert torch.isfinite(value).all()
    assert bellman_target(torch.ones(2), torch.ones(2, dtype=torch.bool), value, 0.99).tolist() == [
        1.0,
        1.0,
    ]


# -- CQL conservatism ------------------------------------------------------------------------------


def single_action_batch(rows: int) -> Batch:
    """A terminal 4-state bandit whose data only ever takes a0; actions 7..9 are illegal."""
    generator = torch.Generator().manual_seed(3)
    states = torch.randint(0, 4, (rows,), generator=generator)
    legal = torch.ones(rows, 10, dtype=torch.bool)
    legal[:, 7:] = False  # actions 7..9 illegal
    return Batch(
        torch.zeros(rows, 0, dtype=torch.int16), torch.eye(4)[states],
        torch.zeros(rows, 0, dtype=torch.int16), torch.zeros(rows, 4),
        torch.zeros(rows, dtype=torch.int64), torch.rand(rows, generator=generator),
        torch.ones(rows, dtype=torch.bool), legal, torch.zeros(rows, 10, dtype=torch.bool),
    )  # fmt: skip


def test_cql_pushes_unseen_actions_below_the_data_action() -> None:
    batch = single_action_batch(64)
    spec = FeatureSpec((), (), 4)
    for alpha in (0.1, 1.0, 3.0):
        cql = make_algorithm("cql", spec, TABULAR, {"alpha": alpha, "lr": 0.02})
        start = {k: v.clone() for k, v in cql.q.state_dict().items()}
        train(cql, batch, 150)
        with torch.no_grad():
            q1, q2 = cql.q(torch.zeros(4, 0, dtype=torch.int16), torch.eye(4))
        for q in (q1, q2):
            assert torch.all(q[:, 1:7] < q[:, :1] - 1.0)  # every unseen legal action below a0
        # Illegal actions (7..9) got no gradient at all: their head rows never moved.
        for head in ("q1", "q2"):
            for part in ("weight", "bias"):
                key = f"{head}.head.{part}"
                assert torch.equal(cql.q.state_dict()[key][7:], start[key][7:])


def test_cql_gap_between_data_and_unseen_actions_grows_with_alpha() -> None:
    """The loss itself, on a free Q table by plain gradient descent (Adam, being invariant to the
    gradient's scale, would hide alpha on actions that only the penalty touches)."""
    batch = single_action_batch(64)
    states = batch.num.argmax(dim=1)
    gaps = []
    for alpha in (0.0, 0.3, 1.0, 3.0):
        table = torch.zeros(4, 10, requires_grad=True)
        optimizer = torch.optim.SGD([table], lr=0.5)
        for _ in range(200):
            optimizer.zero_grad()
            td, penalty = cql_head_loss(
                table[states], batch.mask, batch.action, batch.reward, alpha
            )
            (td + alpha * penalty).backward()
            optimizer.step()
        q = table.detach()
        assert torch.all(q[:, 7:] == 0)  # illegal entries never moved
        gaps.append(float((q[:, :1] - q[:, 1:7]).min()))
    assert gaps[1] > 0
    assert gaps[0] < gaps[1] < gaps[2] < gaps[3]


def test_cql_penalty_gradient_is_zero_on_illegal_actions() -> None:
    q = torch.randn(8, 10, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    mask = torch.rand(8, 10, generator=torch.Generator().manual_seed(5)) < 0.5
    mask[:, 0] = True
    action = torch.zeros(8, dtype=torch.int64)
    td, penalty = cql_head_loss(q, mask, action, torch.zeros(8), alpha=1.0)
    (td + penalty).backward()
    assert torch.all(q.grad[~mask] == 0)
    assert torch.all(q.grad[mask[:, 1:].nonzero()[:, 0], mask[:, 1:].nonzero()[:, 1] + 1] > 0)
    # The penalty equals logsumexp over the legal subset minus the data value.
    expected = torch.stack(
        [torch.logsumexp(q[row][mask[row]], 0) - q[row, 0] for row in range(8)]
    ).mean()
    torch.testing.assert_close(cql_penalty(q, mask, action), expected)


# -- BC ------------------------------------------------------------------------------------------


def deterministic_policy_batch(rows: int, seed: int) -> Batch:
    """The action is the first legal one in a fixed per-species preference order."""
    preference = torch.stack(
        [torch.randperm(10, generator=torch.Generator().manual_seed(100 + s)) for s in range(16)]
    )
    generator = torch.Generator().manual_seed(seed)
    species = torch.randint(0, 16, (rows,), generator=generator)
    legal = torch.rand(rows, 10, generator=generator) < 0.5
    legal[torch.arange(rows), torch.randint(0, 10, (rows,), generator=generator)] = True
    order = preference[species]
    first_legal = legal.gather(1, order).float().argmax(dim=1)
    action = order.gather(1, first_legal[:, None]).squeeze(1)
    ids = species[:, None].to(torch.int16)
    num = torch.rand(rows, 2, generator=generator)
    return Batch(
        ids, num, ids, num, action, torch.zeros(rows), torch.zeros(rows, dtype=torch.bool),
        legal, legal,
    )  # fmt: skip


def test_bc_learns_a_deterministic_legal_policy() -> None:
    spec = FeatureSpec(("species",), (("species", 16),), 2)
    model = ModelConfig(embed_dim=8, hidden_sizes=(32,), embed_dropout=0.0)
    bc = make_algorithm("bc", spec, model, {"lr": 0.01})
    train_batch = deterministic_policy_batch(2048, seed=0)
    train(bc, train_batch, 300)
    test_batch = deterministic_policy_batch(2048, seed=1)
    metrics = bc.evaluate(test_batch)
    assert metrics["accuracy"] > 0.99
    greedy = bc.greedy_action(test_batch.ids, test_batch.num, test_batch.mask)
    assert test_batch.mask[torch.arange(2048), greedy].all()
    assert metrics["accuracy"] == (greedy == test_batch.action).float().mean()
    assert metrics["ce"] < 0.1 and metrics["entropy"] < 0.2


# -- AWR weights -----------------------------------------------------------------------------------


def test_awr_weights_are_bounded_detached_and_finite() -> None:
    advantage = torch.tensor(
        [-math.inf, -1e30, -100.0, 0.0, 1.0, 1e3, 1e30, math.inf, 3e38], requires_grad=True
    )
    weights = awr_weights(advantage, beta=3.0)
    assert not weights.requires_grad and weights.dtype == torch.float32
    assert torch.isfinite(weights).all() and (weights <= 100.0).all() and (weights >= 0).all()
    assert weights[3] == 1.0 and weights[4] == pytest.approx(math.exp(3.0))
    assert weights[0] == 0.0 and weights[5:].tolist() == [100.0] * 4
    half = awr_weights(
        torch.tensor([20.0], dtype=torch.float16), beta=3.0
    )  # exp(60) overflows fp16
    assert half.dtype == torch.float32 and half.item() == 100.0


def test_awr_with_beta_zero_is_exactly_bc(spec: FeatureSpec) -> None:
    batch = random_batch(spec, 64, seed=6)
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    advantage = torch.randn(64, generator=torch.Generator().manual_seed(8)) * 50
    awr = awr_policy_loss(logits, batch.mask, batch.action, advantage, beta=0.0)
    (awr_grad,) = torch.autograd.grad(awr, logits)
    bc = bc_loss(logits, batch.mask, batch.action)
    (bc_grad,) = torch.autograd.grad(bc, logits)
    assert torch.equal(awr, bc) and torch.equal(awr_grad, bc_grad)


# -- which loss moves what -------------------------------------------------------------------------


def gradient_owners(loss: torch.Tensor, networks: dict[str, torch.nn.Module]) -> set[str]:
    """Names of the networks with a non-zero gradient of ``loss``."""
    named = [(name, p) for name, net in networks.items() for p in net.parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {
        name
        for (name, _), g in zip(named, grads, strict=True)
        if g is not None and g.abs().sum() > 0
    }


def test_each_iql_loss_moves_only_its_own_network(spec: FeatureSpec) -> None:
    iql = make_algorithm("iql", spec, SMALL)
    batch = random_batch(spec, 64, seed=9)
    for _ in range(3):  # let target and online differ
        iql.update(batch)
    losses = iql.compute_losses(batch)
    networks = {"policy": iql.policy, "q": iql.q, "v": iql.v}
    assert gradient_owners(losses["v_loss"], networks) == {"v"}
    assert gradient_owners(losses["q_loss"], networks) == {"q"}
    assert gradient_owners(losses["policy_loss"], networks) == {"policy"}
    assert not any(p.requires_grad for p in iql.q_target.parameters())


def test_each_cql_head_loss_moves_only_its_own_head(spec: FeatureSpec) -> None:
    cql = make_algorithm("cql", spec, SMALL)
    batch = random_batch(spec, 64, seed=10)
    target = cql.td_target(batch)
    q1, q2 = cql.q(batch.ids, batch.num)
    heads = {"q1": cql.q.q1, "q2": cql.q.q2}
    for name, q in (("q1", q1), ("q2", q2)):
        td, penalty = cql_head_loss(q, batch.mask, batch.action, target, alpha=1.0)
        assert gradient_owners(td + penalty, heads) == {name}
    assert not any(p.requires_grad for p in cql.q_target.parameters())


@pytest.mark.parametrize("name", ["iql", "cql"])
def test_update_does_one_polyak_step_of_the_targets(spec: FeatureSpec, name: str) -> None:
    algorithm = make_algorithm(name, spec, SMALL, {"polyak_tau": 0.25})
    batch = random_batch(spec, 64, seed=11)
    algorithm.update(batch)
    before = [p.clone() for p in algorithm.q_target.parameters()]
    algorithm.update(batch)
    for old, new, online in zip(
        before, algorithm.q_target.parameters(), algorithm.q.parameters(), strict=True
    ):
        torch.testing.assert_close(new, old + 0.25 * (online.detach() - old), rtol=0, atol=1e-7)


# -- interface -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALGO_NAMES)
def test_update_and_evaluate_return_device_scalars(spec: FeatureSpec, name: str) -> None:
    algorithm = make_algorithm(name, spec, SMALL)
    batch = random_batch(spec, 64, seed=12)
    metrics = algorithm.update(batch)
    assert metrics and all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    evaluation = algorithm.evaluate(batch)
    assert 0.0 <= evaluation["accuracy"] <= 1.0
    expected = {"bc": {"accuracy", "entropy", "ce"},
                "iql": {"accuracy", "entropy", "ce", "q_data", "q_max", "td_error", "v_mean"},
                "cql": {"accuracy", "q_data", "q_max", "td_error", "cql_penalty"}}  # fmt: skip
    assert set(evaluation) == expected[name]
    if "q_max" in evaluation:
        assert evaluation["q_max"] >= evaluation["q_data"]  # the data action is legal
    assert len(algorithm.optimizers()) == {"bc": 1, "iql": 3, "cql": 1}[name]


@pytest.mark.parametrize("name", ALGO_NAMES)
def test_greedy_actions_are_legal_and_empty_masks_raise(spec: FeatureSpec, name: str) -> None:
    algorithm = make_algorithm(name, spec, SMALL)
    batch = random_batch(spec, 256, seed=13)
    greedy = algorithm.greedy_action(batch.ids, batch.num, batch.mask)
    assert greedy.dtype == torch.int64 and batch.mask[torch.arange(256), greedy].all()
    empty = batch.mask.clone()
    empty[5] = False
    with pytest.raises(ValueError, match="row 5 .*no legal action"):
        algorithm.greedy_action(batch.ids, batch.num, empty)
    with pytest.raises(ValueError, match="row 5 .*no legal action"):
        algorithm.update(batch._replace(mask=empty))


def test_registry_and_config_overrides(spec: FeatureSpec) -> None:
    assert ALGO_NAMES == ("iql", "cql", "bc")
    iql_config = make_config("iql")
    assert (iql_config.tau, iql_config.beta, iql_config.gamma, iql_config.lr) == (
        0.7,
        3.0,
        0.99,
        3e-4,
    )
    assert iql_config.polyak_tau == 0.005 and make_config("cql").alpha == 1.0
    assert make_config("bc").lr == 3e-4
    assert make_config("cql", {"alpha": 0.5}).alpha == 0.5
    with pytest.raises(PokeRLError, match="unknown cql option"):
        make_config("cql", {"beta": 1.0})
    with pytest.raises(PokeRLError, match="unknown algorithm 'dqn'"):
        make_algorithm("dqn", spec)
    with pytest.raises(Exception, match="cannot assign|frozen"):
        iql_config.tau = 0.9  # type: ignore[misc]


# -- checkpoints ---------------------------------------------------------------------------------


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ALGO_NAMES)
def test_resume_continues_bitwise_like_an_uninterrupted_run(spec: FeatureSpec, name: str) -> None:
    batches = [random_batch(spec, 64, seed=20 + i) for i in range(6)]
    uninterrupted = make_algorithm(name, spec, SMALL, {"seed": 0})
    for batch in batches[:3]:
        uninterrupted.update(batch)
    saved = roundtrip(uninterrupted.state_dict())
    expected = [uninterrupted.update(batch) for batch in batches[3:]]

    resumed = make_algorithm(name, spec, SMALL, {"seed": 1})  # different initial weights
    resumed.load_state_dict(saved)
    got = [resumed.update(batch) for batch in batches[3:]]
    for want, have in zip(expected, got, strict=True):
        assert want.keys() == have.keys()
        assert all(torch.equal(want[key], have[key]) for key in want)

    if name != "bc":  # without its target networks a resume diverges (CORL's bug)
        no_targets = make_algorithm(name, spec, SMALL, {"seed": 0})
        no_targets.load_state_dict(saved)
        no_targets.q_target.load_state_dict(no_targets.q.state_dict())
        diverged = no_targets.update(batches[3])
        assert not all(torch.equal(expected[0][k], diverged[k]) for k in diverged)


def test_load_state_dict_rejects_another_algorithm(spec: FeatureSpec) -> None:
    iql = make_algorithm("iql", spec, SMALL)
    with pytest.raises(PokeRLError, match="holds a 'cql' state"):
        iql.load_state_dict(make_algorithm("cql", spec, SMALL).state_dict())


def test_load_bc_initialises_policy_and_encoders(spec: FeatureSpec) -> None:
    bc = make_algorithm("bc", spec, SMALL, {"seed": 3})
    batch = random_batch(spec, 64, seed=30)
    bc.update(batch)
    bc_state = roundtrip(bc.state_dict())

    iql = make_algorithm("iql", spec, SMALL)
    iql.load_bc(bc_state)
    assert all(
        torch.equal(a, b)
        for a, b in zip(iql.policy.parameters(), bc.policy.parameters(), strict=True)
    )
    torch.testing.assert_close(
        iql.greedy_action(batch.ids, batch.num, batch.mask),
        bc.greedy_action(batch.ids, batch.num, batch.mask),
    )
    cql = make_algorithm("cql", spec, SMALL)
    cql.load_bc(bc_state)
    for twin in (cql.q, cql.q_target):
        for head in (twin.q1, twin.q2):
            for a, b in zip(head.encoder.parameters(), bc.policy.encoder.parameters(), strict=True):
                assert torch.equal(a, b)

    other = make_algorithm("iql", spec, ModelConfig(embed_dim=4, hidden_sizes=(16,), embed_dropout=0.0))
    with pytest.raises(PokeRLError, match="BC policy does not fit this model"):
        other.load_bc(bc_state)
    with pytest.raises(PokeRLError, match="expected a BC state"):
        iql.load_bc(iql.state_dict())


def test_check_masks_is_what_the_hot_path_runs_on_cpu(spec: FeatureSpec) -> None:
    batch = random_batch(spec, 8, seed=40)
    bad = batch.action.clone()
    illegal = (~batch.mask[0]).nonzero()
    if len(illegal):
        bad[0] = illegal[0, 0]
        with pytest.raises(ValueError, match="row 0: data action"):
            check_masks(batch.mask, bad)
        with pytest.raises(ValueError, match="row 0: data action"):
            make_algorithm("bc", spec, SMALL).update(batch._replace(action=bad))
