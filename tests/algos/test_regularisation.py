"""The model's regularisation options: dropout, embedding dropout, AdamW weight decay, and how
checkpoints saved before those options existed are read (``ModelConfig.from_saved``)."""

from __future__ import annotations

import pytest
import torch

from poke_rl.algos import ALGO_NAMES, make_algorithm
from poke_rl.algos.networks import (
    LEGACY_MODEL,
    ModelConfig,
    StateEncoder,
    StateNetwork,
    load_module,
    make_adam,
)
from poke_rl.batch import FeatureSpec
from poke_rl.errors import PokeRLError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return FeatureSpec(("species", "move", "species"), (("move", 6), ("species", 9)), 3)


def _inputs(spec: FeatureSpec, rows: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 6, (rows, spec.num_ids), generator=generator).to(torch.int16)
    num = torch.rand(rows, spec.num_dim, generator=generator)
    mask = torch.rand(rows, 10, generator=generator) < 0.5
    mask[:, 0] = True
    return ids, num, mask


def test_embed_dropout_drops_embeddings_only_and_only_in_training(spec: FeatureSpec) -> None:
    encoder = StateEncoder(spec, ModelConfig(embed_dim=4, hidden_sizes=(), embed_dropout=0.5))
    ids, num, _ = _inputs(spec, rows=64)
    torch.manual_seed(0)
    trained = encoder(ids, num)
    encoder.eval()
    plain = encoder(ids, num)
    embedded = spec.num_ids * 4
    # numeric inputs pass untouched; each embedding entry is dropped (0) or scaled by 1 / (1 - p)
    assert torch.equal(trained[:, embedded:], num) and torch.equal(plain[:, embedded:], num)
    dropped = trained[:, :embedded] == 0
    assert 0.35 < dropped.float().mean().item() < 0.65
    torch.testing.assert_close(trained[:, :embedded][~dropped], 2 * plain[:, :embedded][~dropped])


def test_dropout_keeps_the_state_dict_keys_so_checkpoints_move(spec: FeatureSpec) -> None:
    plain = StateNetwork(spec, ModelConfig(embed_dim=4, hidden_sizes=(16, 8), embed_dropout=0.0), 10)
    dropped = StateNetwork(spec, ModelConfig(embed_dim=4, hidden_sizes=(16, 8), dropout=0.3), 10)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    assert "encoder.mlp.2.weight" in plain.state_dict()  # the layout checkpoints already use
    load_module(dropped, plain.state_dict(), "BC policy")
    ids, num, _ = _inputs(spec)
    dropped.eval()
    torch.testing.assert_close(dropped(ids, num), plain(ids, num), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALGO_NAMES)
def test_evaluate_and_greedy_action_run_without_dropout(spec: FeatureSpec, name: str) -> None:
    model = ModelConfig(embed_dim=4, hidden_sizes=(32,), dropout=0.5, embed_dropout=0.5)
    algorithm = make_algorithm(name, spec, model)
    ids, num, mask = _inputs(spec, rows=256)
    first = algorithm.greedy_action(ids, num, mask)
    for _ in range(3):  # dropout would change some of 256 greedy actions between calls
        assert torch.equal(algorithm.greedy_action(ids, num, mask), first)
    networks = algorithm.networks().values()
    assert all(network.training for network in networks)  # training mode is restored
    assert not any(t.training for t in algorithm.target_networks().values())
    network = next(iter(networks))
    outputs = [network(ids, num) for _ in range(2)]
    outputs = [out[0] if isinstance(out, tuple) else out for out in outputs]  # a twin: Q1
    assert not torch.equal(*outputs)  # while training, dropout is on


def test_weight_decay_shrinks_weights_not_biases() -> None:
    layer = torch.nn.Linear(3, 2)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    optimizer = make_adam(layer.parameters(), lr=0.1, weight_decay=0.5)
    assert isinstance(optimizer, torch.optim.AdamW)
    for parameter in layer.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), weight * (1 - 0.1 * 0.5))
    assert torch.equal(layer.bias.detach(), bias)
    assert type(make_adam(layer.parameters(), lr=0.1)) is torch.optim.Adam  # 0: plain Adam


def test_algorithms_take_the_weight_decay_of_the_model(spec: FeatureSpec) -> None:
    algorithm = make_algorithm("iql", spec, ModelConfig(embed_dim=2, hidden_sizes=(8,),
                                                        weight_decay=0.01))
    for optimizer in algorithm.optimizers():
        decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
        assert decays == [0.0, 0.01]


def test_from_saved_fills_missing_keys_with_the_legacy_model() -> None:
    old = ModelConfig.from_saved({"embed_dim": 32, "hidden_sizes": [256, 256]})
    assert old == ModelConfig(**{**LEGACY_MODEL, "hidden_sizes": (256, 256)})
    assert (old.dropout, old.embed_dropout, old.weight_decay) == (0.0, 0.0, 0.0)
    # a checkpoint that saved nothing was trained with the model of its time, not today's default
    assert ModelConfig.from_saved({}).embed_dim == LEGACY_MODEL["embed_dim"]
    saved = ModelConfig(embed_dim=3, hidden_sizes=(4,), dropout=0.1, weight_decay=0.2)
    assert ModelConfig.from_saved({**saved.__dict__, "hidden_sizes": [4]}) == saved
    with pytest.raises(PokeRLError, match="option.s. width this poke-rl does not know"):
        ModelConfig.from_saved({"width": 3})


@pytest.mark.parametrize(("options", "message"), [
    ({"dropout": 1.0}, "model.dropout must be in"),
    ({"embed_dropout": -0.1}, "model.embed_dropout must be in"),
    ({"weight_decay": -1.0}, "model.weight_decay must not be negative"),
    ({"hidden_sizes": (0,)}, "model.hidden_sizes must all be at least 1"),
    ({"embed_dim": -1}, "model.embed_dim must not be negative"),
])
def test_bad_model_options_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(PokeRLError, match=message):
        ModelConfig(**options)
