"""data/policies/beat-heuristic.pt (issue 21's best agent, data/README.md): it loads, is small,
was exported for exactly the installed features, and plays legal actions. A feature change makes
it stale: this test then fails and names the rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.generate import GenConfig, battle_records
from poke_rl import schema
from poke_rl.export import load_policy, read_metadata
from poke_rl.features import Preprocessor

POLICY = Path(__file__).resolve().parents[1] / "data" / "policies" / "beat-heuristic.pt"
REBUILD = ("the shipped policy is stale for the installed features: retrain it with "
           "pipelines/beat_heuristic.py and `poke-rl export` it again (data/README.md, "
           "'policies/beat-heuristic.pt')")
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit:DeprecationWarning")


def test_the_shipped_policy_matches_the_installed_features() -> None:
    assert POLICY.is_file(), f"{POLICY} is missing (data/README.md says how it is made)"
    assert POLICY.stat().st_size <= 5 * 1024 * 1024
    metadata = read_metadata(POLICY)
    preprocessor = Preprocessor()
    assert metadata["feature_spec"] == preprocessor.feature_spec().to_dict(), REBUILD
    assert metadata["preprocessor"]["fingerprint"] == preprocessor.fingerprint, REBUILD
    assert metadata["num_columns"] == preprocessor.num_names(), REBUILD


def test_the_shipped_policy_plays_legal_actions() -> None:
    policy = load_policy(POLICY)
    chosen = []
    for record in battle_records(2, 0, GenConfig()):
        for step in record["steps"][:30]:
            mask = step.get("action_mask") or schema.derive_mask(
                schema.check_observation(step["observation"]))
            action = policy.act(step["observation"], mask)
            assert mask[action]
            chosen.append(action)
    assert len(chosen) >= 30 and len(set(chosen)) > 1
