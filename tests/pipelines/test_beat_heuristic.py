"""pipelines/beat_heuristic.py without battles: the commands of two rounds in order (round 1
collects with round 0's best agent, exploring by its own preferences), configs that train reads,
and a rerun that resumes: finished steps are skipped, an unfinished run continues with --resume."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # pipelines/ holds recipes, not an installed package
    sys.path.insert(0, str(ROOT))

from pipelines import beat_heuristic  # noqa: E402
from poke_rl.train.config import resolve_config  # noqa: E402

RATES = {"bc": 0.48, "iql30": 0.52}  # each run's fake win rate against the heuristic


class FakePokeRL:
    """Stands in for ``run``: records each command and writes the output the real one would."""

    def __init__(self, stop_at: str | None = None) -> None:
        self.commands: list[list[str]] = []
        self.stop_at = stop_at

    def __call__(self, args: list[str], stdout: Path | None = None, threads: int | None = None) -> None:
        self.commands.append(args)
        if self.stop_at and self.stop_at in " ".join(args):
            raise beat_heuristic.StageFailed(args, 1)
        if args[0] == "collect":
            Path(args[1]).write_bytes(b"")
        elif args[0] == "prep":
            Path(args[-4]).mkdir(parents=True, exist_ok=True)
        elif args[0] == "train":
            run_dir = Path(args[args.index("--run-dir") + 1])
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
            steps = resolve_config(args[1], {}, args[args.index("--config") + 1]).steps
            (run_dir / "metrics.jsonl").write_bytes(orjson.dumps({"step": steps}) + b"\n")
        elif args[0] == "eval":
            name = Path(args[1]).parents[1].name
            rate = RATES[name] if "--online" in args else 0.0
            assert stdout is not None
            stdout.parent.mkdir(parents=True, exist_ok=True)  # as the real run does
            stdout.write_bytes(orjson.dumps({"opponents": [{"win_rate": rate}]}))


def options(root: Path, rounds: int, serial: bool = True) -> list[str]:
    return ["--root", str(root), "--rounds", str(rounds), "--chunk-battles", "5", "--steps", "30",
            "--battles", "10", "--panel-battles", "4", *(["--serial"] if serial else [])]


def test_two_rounds_then_a_rerun_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePokeRL()
    monkeypatch.setattr(beat_heuristic, "run", fake)
    assert beat_heuristic.main(options(tmp_path, 2)) == 0
    kinds = [args[0] for args in fake.commands]
    chunks0, chunks1 = len(beat_heuristic.ROUND0), len(beat_heuristic.AGENT_ROUNDS)
    # round 0: collect, prep, bc, bc's offline + 2 online evals, iql30 and its evals; round 1
    # the same with a third online eval each (against round 0's best)
    assert kinds == (["collect"] * chunks0 + ["prep"] + (["train"] + ["eval"] * 3) * 2
                     + ["collect"] * chunks1 + ["prep"] + (["train"] + ["eval"] * 4) * 2)
    best0 = str(tmp_path / "round0" / "iql30" / "checkpoints" / "last.pt")  # 52 % beats 48 %
    assert orjson.loads((tmp_path / "round0" / "best.json").read_bytes())["checkpoint"] == best0
    collects1 = [args for args in fake.commands if args[0] == "collect"][chunks0:]
    players = {args[args.index("--p1") + 1] for args in collects1}
    assert players == {f"{best0}@1", f"{best0}:top2:0.2", f"{best0}@0.5"}
    assert collects1[3][collects1[3].index("--p2") + 1] == f"{best0}:top2:0.2"
    # round 1 preps both rounds' trajectories, never a replay file
    preps = [args for args in fake.commands if args[0] == "prep"]
    assert len(preps[1]) - len(preps[0]) == chunks1
    # IQL starts from the round's BC; round 1 evaluates against round 0's best too
    train_iql = [args for args in fake.commands if args[0] == "train"][3]
    assert train_iql[train_iql.index("--init-from") + 1].endswith("round1/bc/checkpoints/best.pt")
    assert ["--opponents", best0] == [a for a in fake.commands[-1] if a in ("--opponents", best0)]
    config = resolve_config("x", {}, tmp_path / "configs" / "iql30-30.toml")
    assert (config.algo, config.steps, config.algo_params["beta"]) == ("iql", 30, 30.0)
    assert tuple(config.model["hidden_sizes"]) == (128, 128)

    again = FakePokeRL()
    monkeypatch.setattr(beat_heuristic, "run", again)
    assert beat_heuristic.main(options(tmp_path, 2)) == 0
    assert again.commands == []


def test_a_failed_step_resumes_where_it_stopped(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beat_heuristic, "run", FakePokeRL(stop_at="round0/iql30"))
    assert beat_heuristic.main(options(tmp_path, 1)) == 1
    (tmp_path / "round0" / "iql30" / "checkpoints").mkdir(parents=True)
    (tmp_path / "round0" / "iql30" / "checkpoints" / "last.pt").write_bytes(b"")  # a half run
    fake = FakePokeRL()
    monkeypatch.setattr(beat_heuristic, "run", fake)
    assert beat_heuristic.main(options(tmp_path, 1)) == 0
    assert fake.commands[0][0] == "train" and "--resume" in fake.commands[0]
    assert [args[0] for args in fake.commands[1:]] == ["eval"] * 3  # bc's were done
    assert beat_heuristic.chunk_name(3, "/r/a/last.pt:top2:0.2", "heuristic") == \
        "c3-agent_top2_0.2-vs-heuristic.jsonl.gz"


def test_side_by_side_runs_the_same_commands(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    serial, parallel = FakePokeRL(), FakePokeRL()
    monkeypatch.setattr(beat_heuristic, "run", serial)
    assert beat_heuristic.main(options(tmp_path / "a", 2)) == 0
    monkeypatch.setattr(beat_heuristic, "run", parallel)
    assert beat_heuristic.main(options(tmp_path / "b", 2, serial=False)) == 0

    def relative(commands: list[list[str]], root: Path) -> list[str]:
        return sorted(" ".join(args).replace(str(root), "ROOT") for args in commands)

    assert relative(serial.commands, tmp_path / "a") == relative(parallel.commands, tmp_path / "b")


def test_with_heuristic_and_the_wide_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--with-heuristic interleaves round 0's pairings after each agent pairing of a later round;
    --model wide writes its own configs with the wider network."""
    assert beat_heuristic.pairings(1, "/r/a.pt", with_heuristic=True) == [
        ("/r/a.pt@1", "heuristic"), ("heuristic:0.05", "heuristic:0.2"),
        ("/r/a.pt:top2:0.2", "heuristic"), ("heuristic:0.1", "heuristic"),
        ("/r/a.pt@0.5", "heuristic:0.1"), ("heuristic:0.3", "heuristic"),
        ("/r/a.pt@1", "/r/a.pt:top2:0.2"), ("heuristic:0.2", "heuristic:0.05")]
    assert beat_heuristic.pairings(0, None, with_heuristic=True) == list(beat_heuristic.ROUND0)
    fake = FakePokeRL()
    monkeypatch.setattr(beat_heuristic, "run", fake)
    argv = [*options(tmp_path, 2), "--model", "wide", "--with-heuristic", "--runs", "bc"]
    assert beat_heuristic.main(argv) == 0
    collects = [args for args in fake.commands if args[0] == "collect"]
    assert len(collects) == len(beat_heuristic.ROUND0) + 8
    assert collects[-1][collects[-1].index("--p1") + 1] == "heuristic:0.2"
    config = resolve_config("x", {}, tmp_path / "configs" / "bc-30-wide.toml")
    assert (config.model["embed_dim"], tuple(config.model["hidden_sizes"])) == (32, (256, 256))


def test_keep_won_preps_only_the_winners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--keep won copies each trajectory file's winning trajectories (total_reward > 0) to
    corpus/won/ and preps those; losers, ties and unreadable lines are dropped and counted."""
    import gzip

    lines = [orjson.dumps({"replay_id": f"b{i}", "player": "p1", "total_reward": reward})
             for i, reward in enumerate((1.0, -1.0, 0.0, 1, True, "1"))]
    corpus = tmp_path / "round0" / "corpus"
    corpus.mkdir(parents=True)
    for chunk, (p1, p2) in enumerate(beat_heuristic.ROUND0):  # collect finds every chunk there
        with gzip.open(corpus / beat_heuristic.chunk_name(chunk, p1, p2), "wb") as out:
            out.write(b"\n".join([*lines, b"{not json", b"[1]"]) + b"\n")
    (corpus / "c0-x-replays.jsonl.gz").write_bytes(b"")  # replays are never filtered
    fake = FakePokeRL()
    monkeypatch.setattr(beat_heuristic, "run", fake)
    assert beat_heuristic.main([*options(tmp_path, 1), "--keep", "won", "--runs", "bc"]) == 0
    prep = next(args for args in fake.commands if args[0] == "prep")
    names = sorted(beat_heuristic.chunk_name(c, *pair) for c, pair in enumerate(beat_heuristic.ROUND0))
    assert prep[1:-4] == [str(corpus / "won" / name) for name in names]
    assert prep[-4] == str(tmp_path / "round0" / "shards-won")
    with gzip.open(corpus / "won" / names[0], "rb") as kept:
        assert [orjson.loads(line)["replay_id"] for line in kept] == ["b0", "b3"]
    counts = orjson.loads((corpus / "won" / "counts.json").read_bytes())
    assert counts == {name: [2, 6] for name in names}
    assert beat_heuristic.main(["--winners", str(corpus / names[0])]) == 0  # kept: not rewritten
    assert orjson.loads((corpus / "won" / "counts.json").read_bytes()) == counts


def test_won_greedy_drops_only_the_exploring_players_losses(tmp_path: Path) -> None:
    import gzip

    agents = ["heuristic", "heuristic:0.1", "/r/a.pt", "/r/a.pt@1", "/r/a.pt:top2:0.2",
              "/r/x:y/a.pt", "maxpower", None]
    lines = [orjson.dumps({"replay_id": f"{a}-{r}", "total_reward": r, "agent": a})
             for a in agents for r in (1.0, -1.0)]
    source = tmp_path / "c0.jsonl.gz"
    with gzip.open(source, "wb") as out:
        out.write(b"\n".join(lines))  # no newline after the last line: written with one
    assert [beat_heuristic.explores(a) for a in agents[:-1]] == [
        False, True, False, True, True, False, False]
    assert beat_heuristic.winners(source, tmp_path / "wg.jsonl.gz", "won-greedy") == (12, 4)
    with gzip.open(tmp_path / "wg.jsonl.gz", "rb") as kept:
        ids = [orjson.loads(line)["replay_id"] for line in kept]
    kept_losers = {f"{a}--1.0" for a in ("heuristic", "/r/a.pt", "/r/x:y/a.pt", "maxpower")}
    assert sorted(ids) == sorted({f"{a}-1.0" for a in agents} | kept_losers)
    assert beat_heuristic.winners(source, tmp_path / "w.jsonl.gz") == (8, 8)
