"""``poke-rl prep``: trajectory JSONL → transition Parquet + WebDataset tensor shards.

Modules: ``inputs`` (files and chunks), ``columnar`` (Arrow parse, columnar validation, the
reference fallback, explode), ``work`` (what a worker does with a chunk or a Parquet part),
``build`` (rebuild rules, the pool, dedupe, staging and the atomic swap), ``report``.
"""

from poke_rl.prep.build import PrepOptions, PrepResult, run_prep

__all__ = ["PrepOptions", "PrepResult", "run_prep"]
