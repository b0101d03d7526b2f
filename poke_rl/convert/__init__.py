"""``poke-rl convert``: Showdown replay JSON with an input log -> trajectory JSONL, re-simulated
and verified (``run``), built with the code ``collect`` records with (``rebuild``)."""

from poke_rl.convert.run import ConvertOptions, ConvertResult, run_convert, summary

__all__ = ["ConvertOptions", "ConvertResult", "run_convert", "summary"]
