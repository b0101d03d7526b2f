"""pipelines/vs_d3rlpy.py at tiny sizes: a poke-rl batch reaches d3rlpy unchanged, d3rlpy's
policies are scored and played through the legal mask, and the recipe writes a report with every
contender (offline only: the online part is ``run_online``'s, tested in tests/showdown). Skipped
without d3rlpy (the bench extra)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import torch

pytest.importorskip("d3rlpy", reason="d3rlpy is not installed (the bench extra)")

from pipelines import vs_d3rlpy  # noqa: E402
from poke_rl.features import Preprocessor  # noqa: E402
from poke_rl.loader import LoaderConfig, val_loader  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _batch(shards: Path):  # noqa: ANN202
    return next(iter(val_loader(shards, Preprocessor().fingerprint, LoaderConfig(batch_size=64))))


def test_a_batch_reaches_d3rlpy_unchanged(synthetic_shards: Path) -> None:
    batch = _batch(synthetic_shards)
    mini = vs_d3rlpy.to_d3rlpy(batch, gamma=0.99)
    assert torch.equal(mini.observations, batch.num.float())
    assert torch.equal(mini.next_observations, batch.next_num.float())
    assert torch.equal(mini.actions.squeeze(1).long(), batch.action.long())
    assert torch.equal(mini.rewards.squeeze(1), batch.reward.float())
    assert torch.equal(mini.terminals.squeeze(1), batch.done.float())


@pytest.mark.parametrize("kind", ["bc", "cql"])
def test_d3rlpy_policies_choose_only_legal_actions(kind: str, synthetic_shards: Path) -> None:
    torch.set_num_threads(1)
    algo, _ = vs_d3rlpy.train_d3rlpy(kind, synthetic_shards, Preprocessor().fingerprint, steps=3,
                                     batch_size=32, hidden=(8,), lr=1e-3, seed=0)
    policy = vs_d3rlpy.d3rlpy_policy(kind, algo, steps=3)
    assert (policy.algo, policy.step) == (f"d3rlpy-{kind}", 3)
    batch = _batch(synthetic_shards)
    mask = batch.mask.clone()
    logits = policy.logits(batch.ids, batch.num, mask)
    assert torch.isneginf(logits[~mask]).all() and torch.isfinite(logits[mask]).all()
    assert mask[torch.arange(len(mask)), logits.argmax(dim=1)].all()
    accuracy, rows = vs_d3rlpy.val_accuracy(policy.logits, synthetic_shards,
                                            Preprocessor().fingerprint)
    assert rows == 512 and 0.0 <= accuracy <= 1.0


def test_the_recipe_reports_every_contender(synthetic_shards: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    vs_d3rlpy.main([str(synthetic_shards), "--out", str(tmp_path), "--steps", "4",
                    "--batch-size", "32", "--skip-online"])
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert list(report["contenders"]) == list(vs_d3rlpy.CONTENDERS)
    for row in report["contenders"].values():
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["val_transitions"] == 512
    assert (tmp_path / "poke-rl-cql" / "checkpoints" / "last.pt").is_file()
    table = capsys.readouterr().out
    assert "| d3rlpy-cql |" in table and "vs heuristic" in table
