"""poke-env players that play in the 10-action space and record schema-v1 trajectories.

Every player here decides through ``RecordingPlayer.choose_move``: it builds the observation and
the legal mask (``observe``), asks its strategy for an action index, plays that index's order
(never tera), and, when given ``on_trajectory``, hands over one trajectory dict per finished
battle (DESIGN.md "Trajectory JSONL"). Strategies:

- ``random``: uniform over the legal actions, from the player's seeded RNG.
- ``maxpower`` / ``heuristic``: poke-env's MaxBasePowerPlayer / SimpleHeuristicsPlayer.
- any of them with ``epsilon``: with that probability a uniform legal action instead.
- ``PolicyPlayer``: any function (observation dict, mask) -> action index, e.g. a trained model;
  ``PlayerSpec`` builds one from a checkpoint path or an exported policy file (``poke-rl
  export``, read through ``poke_rl.load_policy``), greedy, sampled at a temperature
  (``POLICY@TEMP``) or playing its second-best action with probability ε (``POLICY:top2:EPS``).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poke_env.battle.abstract_battle import AbstractBattle
from poke_env.player.baselines import MaxBasePowerPlayer, RandomPlayer, SimpleHeuristicsPlayer
from poke_env.player.battle_order import BattleOrder, DefaultBattleOrder, SingleBattleOrder
from poke_env.player.player import Player

from poke_rl.checkpoint import verify_checkpoint
from poke_rl.errors import PokeRLError
from poke_rl.export import check_features, is_exported_policy, read_metadata
from poke_rl.features import Preprocessor
from poke_rl.schema import NUM_MOVES
from poke_rl.showdown.observe import action_mask, build_observation, legal_orders, order_to_action

PolicyFn = Callable[[dict[str, Any], list[bool]], int]
TrajectorySink = Callable[[dict[str, Any]], None]


def trajectory_step(observation: dict[str, Any], mask: list[bool], index: int) -> dict[str, Any]:
    """One step of a trajectory (DESIGN.md): the action index as type and target, no reward yet.
    ``poke-rl convert`` builds its steps with this too, so both write the same JSON."""
    return {
        "observation": observation,
        "action_type": 0 if index < NUM_MOVES else 1,
        "action_target": index if index < NUM_MOVES else index - NUM_MOVES,
        "reward": 0.0,
        "done": False,
        "action_mask": mask,
    }


def trajectory_record(battle: AbstractBattle, steps: list[dict[str, Any]], replay_id: str,
                      agent: str | None) -> dict[str, Any]:
    """The trajectory of a finished battle: the last step carries the result (+1 won, -1 lost,
    0 tie) and ``done``. ``agent`` None (a replay that does not say who played): no key."""
    reward = 1.0 if battle.won else -1.0 if battle.lost else 0.0
    steps[-1]["reward"] = reward
    steps[-1]["done"] = True
    record: dict[str, Any] = {
        "replay_id": replay_id,
        "player": battle.player_role or "p?",
        "total_reward": reward,
    }
    if agent is not None:
        record["agent"] = agent
    record.update(format=battle.format, turns=battle.turn, steps=steps)
    return record


class RecordingPlayer(Player):
    """Base of the project's players: 10-action decisions, epsilon exploration, recording."""

    def __init__(
        self,
        *args: Any,
        epsilon: float = 0.0,
        seed: int | str = 0,
        label: str = "",
        on_trajectory: TrajectorySink | None = None,
        replay_prefix: str = "",
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise PokeRLError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon
        self.label = label or type(self).__name__
        self.on_trajectory = on_trajectory
        self.replay_prefix = replay_prefix
        self.decisions = 0
        self.explored = 0
        self.redecided = 0  # a choice Showdown refused, decided again (the step is replaced)
        # ... of which a switch offered while the request said "maybeTrapped": the client cannot
        # know whether an unrevealed ability (Shadow Tag, Arena Trap, Magnet Pull) traps the
        # active Pokemon, so the mask allows the switch and Showdown may refuse it.
        self.trap_refused = 0
        self.no_choice = 0  # requests with no legal action in the 10-action space (default order)
        self.failure: BaseException | None = None  # first exception raised while deciding
        self._rng = random.Random(f"{seed}")
        self._steps: dict[str, list[dict[str, Any]]] = {}
        self._last_rqid: dict[str, Any] = {}
        self._maybe_trapped: dict[str, bool] = {}
        super().__init__(*args, **kwargs)

    def pick(self, battle: AbstractBattle, observation: dict[str, Any], mask: list[bool],
             legal: dict[int, SingleBattleOrder]) -> int | None:
        """The strategy's action index (None: let the player draw a random legal one)."""
        order = super().choose_move(battle)  # type: ignore[safe-super]
        return order_to_action(order, legal) if isinstance(order, BattleOrder) else None

    def choose_move(self, battle: AbstractBattle) -> BattleOrder:
        # poke-env logs and swallows exceptions raised here, and the battle then waits forever:
        # keep the first one for the caller (``failure``) and let Showdown choose instead.
        try:
            return self._decide(battle)
        except Exception as exc:  # noqa: BLE001 - handed to the caller through ``failure``
            if self.failure is None:
                self.failure = exc
            return DefaultBattleOrder()

    def _decide(self, battle: AbstractBattle) -> BattleOrder:
        legal = legal_orders(battle)
        if not legal:
            self.no_choice += 1
            return DefaultBattleOrder()
        observation = build_observation(battle)
        mask = action_mask(legal)
        index = None
        if self.epsilon > 0.0 and self._rng.random() < self.epsilon:
            self.explored += 1
        else:
            index = self.pick(battle, observation, mask, legal)
        if index is None or index not in legal:
            index = self._rng.choice(sorted(legal))
        self.decisions += 1
        if self.on_trajectory is not None:
            self._record(battle, observation, mask, index)
        return legal[index]

    def _record(self, battle: AbstractBattle, observation: dict[str, Any], mask: list[bool],
                index: int) -> None:
        tag = battle.battle_tag
        request = battle.last_request or {}
        rqid = request.get("rqid")
        steps = self._steps.setdefault(tag, [])
        step = trajectory_step(observation, mask, index)
        # Showdown answers a refused choice with the same request again, or with an updated one
        # ("update": true): the step it replaces was never played.
        if steps and (request.get("update") or (rqid is not None and rqid == self._last_rqid.get(tag))):
            if steps[-1]["action_type"] == 1 and self._maybe_trapped.get(tag, False):
                self.trap_refused += 1
            steps[-1] = step
            self.redecided += 1
        else:
            steps.append(step)
        self._last_rqid[tag] = rqid
        self._maybe_trapped[tag] = bool((request.get("active") or [{}])[0].get("maybeTrapped"))

    def _battle_finished_callback(self, battle: AbstractBattle) -> None:
        try:
            self._finish(battle)
        except Exception as exc:  # noqa: BLE001 - handed to the caller through ``failure``
            if self.failure is None:
                self.failure = exc

    def _finish(self, battle: AbstractBattle) -> None:
        steps = self._steps.pop(battle.battle_tag, [])
        self._last_rqid.pop(battle.battle_tag, None)
        self._maybe_trapped.pop(battle.battle_tag, None)
        if self.on_trajectory is None or not steps:
            return
        replay_id = self.replay_prefix + battle.battle_tag.removeprefix("battle-")
        self.on_trajectory(trajectory_record(battle, steps, replay_id, self.label))


class RandomActionPlayer(RecordingPlayer, RandomPlayer):
    """Uniform over the legal actions of the 10-action space, from the seeded RNG."""

    def pick(self, battle, observation, mask, legal):  # noqa: ANN001 - same signature as base
        return None


class MaxPowerActionPlayer(RecordingPlayer, MaxBasePowerPlayer):
    """poke-env's MaxBasePowerPlayer in the 10-action space."""


class HeuristicActionPlayer(RecordingPlayer, SimpleHeuristicsPlayer):
    """poke-env's SimpleHeuristicsPlayer in the 10-action space (never terastallizes)."""


class PolicyPlayer(RecordingPlayer):
    """Plays ``policy(observation, mask) -> action index``; an illegal index plays a random legal
    action and is counted in ``illegal_choices``."""

    def __init__(self, policy: PolicyFn, *args: Any, **kwargs: Any) -> None:
        self.policy = policy
        self.illegal_choices = 0
        super().__init__(*args, **kwargs)

    def pick(self, battle, observation, mask, legal):  # noqa: ANN001 - same signature as base
        index = int(self.policy(observation, mask))
        if index not in legal:
            self.illegal_choices += 1
            return None
        return index


STRATEGIES: dict[str, type[RecordingPlayer]] = {
    "random": RandomActionPlayer,
    "maxpower": MaxPowerActionPlayer,
    "heuristic": HeuristicActionPlayer,
}


CHECKPOINT_SUFFIX = ".pt"


TOP2 = "top2"


@dataclass(frozen=True)
class PlayerSpec:
    """A player, written ``NAME`` or ``NAME:EPSILON``: NAME is a baseline strategy (``random``,
    ``maxpower``, ``heuristic``), the path of a trained checkpoint (``...pt``) or of an exported
    policy (``poke-rl export CKPT POLICY.pt``), which plays its greedy masked action, so trained
    agents can collect data (self-play) and be opponents. A policy also takes exploration that
    follows its own preferences: ``POLICY@TEMP`` samples from softmax(logits / TEMP) over the
    legal actions, ``POLICY:top2:EPS`` plays its second-best legal action with probability EPS
    (``poke_rl.policy.explore_action``); ``:EPSILON`` is a uniform legal action instead."""

    strategy: str  # a key of STRATEGIES, or "policy" for a checkpoint or exported policy
    epsilon: float = 0.0
    checkpoint: str | None = None
    exported: bool = False  # ``checkpoint`` is an exported policy file (TorchScript)
    temperature: float = 0.0  # a policy sampled at this temperature (0: greedy)
    top2: float = 0.0  # a policy playing its second-best action with this probability

    @classmethod
    def parse(cls, text: str) -> PlayerSpec:
        text = text.strip()
        name, eps, temperature, top2 = text, "", "", ""
        head, sep, tail = text.rpartition(":")  # the last colon: a path may hold others
        if sep and head.endswith(f":{TOP2}") and head[: -len(TOP2) - 1].endswith(CHECKPOINT_SUFFIX):
            name, top2 = head[: -len(TOP2) - 1], tail
        elif sep and (head in STRATEGIES or head.endswith(CHECKPOINT_SUFFIX)):
            name, eps = head, tail
        else:
            at_head, at, at_tail = text.rpartition("@")
            if at and at_head.endswith(CHECKPOINT_SUFFIX):
                name, temperature = at_head, at_tail
        epsilon = _rate(eps, text, "epsilon")
        top2_rate = _rate(top2, text, "top-2 epsilon")
        try:
            temp = float(temperature) if temperature else 0.0
        except ValueError:
            temp = -1.0
        if not temp >= 0.0 or temp == float("inf"):
            raise PokeRLError(f"bad temperature in player {text!r}: expected a number > 0")
        if name in STRATEGIES:
            return cls(name, epsilon)
        if name.endswith(CHECKPOINT_SUFFIX):
            if not Path(name).is_file():
                raise PokeRLError(f"player checkpoint {name} does not exist")
            # a damaged file or one for other features is refused here, before a server starts
            # or a battle is played (building the player loads it again, checking again)
            exported = is_exported_policy(name)
            if exported:
                check_features(read_metadata(name), Preprocessor(), Path(name))
            else:
                verify_checkpoint(name)
            return cls("policy", epsilon, checkpoint=name, exported=exported, temperature=temp,
                       top2=top2_rate)
        raise PokeRLError(
            f"unknown player {name!r}: use one of {', '.join(STRATEGIES)} or a checkpoint or "
            f"exported policy path ending in {CHECKPOINT_SUFFIX}, optionally with ':EPSILON' "
            "(e.g. heuristic:0.1), or a policy with '@TEMP' or ':top2:EPS'"
        )

    @property
    def label(self) -> str:
        name = self.checkpoint if self.checkpoint is not None else self.strategy
        if self.temperature > 0.0:
            return f"{name}@{self.temperature:g}"
        if self.top2 > 0.0:
            return f"{name}:{TOP2}:{self.top2:g}"
        return name if self.epsilon == 0.0 else f"{name}:{self.epsilon:g}"

    def build(self, **kwargs: Any) -> RecordingPlayer:
        """A player of this strategy; ``kwargs`` go to ``RecordingPlayer`` and poke-env."""
        if self.checkpoint is not None and (self.exported or self.temperature or self.top2):
            from poke_rl.export import load_policy

            # the sampling generator follows the player's seed, so a seeded run draws the same
            policy = load_policy(self.checkpoint, seed=zlib.crc32(str(kwargs.get("seed", 0)).encode()))
            temperature, top2 = self.temperature, self.top2

            def act(observation: dict[str, Any], mask: list[bool]) -> int:
                return policy.act(observation, mask, temperature=temperature, top2=top2)

            return PolicyPlayer(act, epsilon=self.epsilon, label=self.label, **kwargs)
        if self.checkpoint is not None:
            from poke_rl.policy import CheckpointPolicy

            return PolicyPlayer(CheckpointPolicy(self.checkpoint), epsilon=self.epsilon,
                                label=self.label, **kwargs)
        return STRATEGIES[self.strategy](epsilon=self.epsilon, label=self.label, **kwargs)


def _rate(text: str, spec: str, what: str) -> float:
    """A probability written in a player spec ('' is 0)."""
    try:
        value = float(text) if text else 0.0
    except ValueError:
        raise PokeRLError(f"bad {what} in player {spec!r}: expected a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise PokeRLError(f"{what} in player {spec!r} must be in [0, 1]")
    return value
