"""Why ``convert`` rejects a replay: one code per cause, each with what it means."""

from __future__ import annotations

REASONS = {
    "invalid_json": "the record is not valid JSON (or is over the size limit)",
    "not_a_battle": "valid JSON, but not a replay object with an 'id' and a battle 'log'",
    "unsupported_format": "not a singles format of the simulator's generation (9)",
    "no_inputlog": "a spectator-only replay: without its input log it is not convertible exactly",
    "no_result": "the battle has no result (its log or its input log stops before the end)",
    "resim_failed": "the input log could not be re-simulated (a line outside the grammar, a "
                    "simulator error, a timeout)",
    "resim_diverged": "the re-simulated log differs from the recorded one (another simulator "
                      "version, or a tampered log)",
    "choice_count_mismatch": "a player's choices in the input log do not match its requests",
    "unmapped_choice": "a choice names no action of the 10-action space",
    "action_not_in_mask": "a choice maps to an action the legal mask excludes",
    "parse_error": "poke-env could not follow the battle",
    "duplicate": "a replay with this id was read before",
}


class Rejected(Exception):
    """A replay ``convert`` does not convert; ``code`` is a key of ``REASONS``."""

    def __init__(self, code: str, detail: str) -> None:
        assert code in REASONS, code
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
