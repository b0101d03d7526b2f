"""World: the one place that knows ranks, world sizes and devices."""

from __future__ import annotations

import pytest
import torch

from poke_rl.errors import PokeRLError
from poke_rl.world import World, resolve_device


def test_from_env_reads_torchrun_variables(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = World.from_env()
    assert (world.rank, world.world_size, world.local_rank) == (3, 4, 1)
    assert world.distributed and not world.is_main


def test_plain_process_is_rank_0_of_1(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert World.detect() == World(0, 1, 0)
    assert World.detect().is_main and not World.detect().distributed


def test_stated_values_win_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert World.detect(rank=0, world_size=3) == World(0, 3, 0)


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0)])
def test_a_rank_outside_the_world_is_refused(rank: int, world_size: int) -> None:
    with pytest.raises(PokeRLError, match="outside world size"):
        World(rank=rank, world_size=world_size)


def test_garbage_in_the_environment_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(PokeRLError, match="RANK/WORLD_SIZE"):
        World.from_env()


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(PokeRLError, match="unknown device"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(PokeRLError, match="no CUDA GPU"):
            resolve_device("cuda")
