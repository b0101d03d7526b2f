"""``poke-rl prep``: trajectory JSONL → transition Parquet + WebDataset tensor shards.

Modules, in the order data flows: ``inputs`` (files and chunks), ``columnar`` (one chunk: Arrow
parse, the reference fallback, duplicates), ``checks`` (columnar validation), ``steps`` (the
step batch and its explode into transitions), ``blocks`` (a part's trajectories → layout v3
blocks), ``work`` (what a worker does with a chunk or a Parquet part), ``rules`` (rebuild rules,
what OUT may hold), ``incremental`` (what an add or a change in place keeps of OUT), ``staging``
(staging, lock, atomic swap, signals), ``build`` (the pool, dedupe, counts, manifest), ``ray_runner``
(``--ray``: the same tasks on a Ray cluster),
``options``, ``report``.
"""

from poke_rl.prep.build import run_prep
from poke_rl.prep.options import PrepOptions, PrepResult
from poke_rl.prep.staging import PrepInterrupted

__all__ = ["PrepInterrupted", "PrepOptions", "PrepResult", "run_prep"]
