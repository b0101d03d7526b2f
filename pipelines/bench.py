"""The benchmark suite: every performance target of DESIGN.md, each against its baseline.

    python -m pipelines.bench [--only prep,loader] [--scale 4] [--write BENCHMARKS.md]

Runs each benchmark recipe under ``pipelines/`` in its own process (so one's memory and threads
never colour another's), collects the Markdown table each prints, and writes them into
BENCHMARKS.md under a header describing the machine. Each recipe measures its baseline in the same
run on the same machine and states the ratio against the target. ``--scale`` multiplies the
default corpus sizes (the defaults finish in roughly ten minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Recipe:
    key: str
    title: str
    module: str
    args: tuple[str, ...]
    scaled: tuple[tuple[str, int], ...] = ()  # (option, default value) multiplied by --scale


RECIPES = (
    Recipe("features", "Feature preprocessor", "pipelines.bench_features", ("--reps", "5"),
           (("--rows", 1_000_000),)),
    Recipe("prep", "Prep", "pipelines.bench_prep", (), (("--size-mb", 1024),)),
    Recipe("loader", "Loader", "pipelines.bench_loader", (), (("--transitions", 1_000_000),)),
    Recipe("algos", "Algorithms", "pipelines.bench_algos", ()),
    Recipe("train", "Training run", "pipelines.bench_train", ()),
    Recipe("compile", "torch.compile and host-to-device copies", "pipelines.bench_compile", ()),
)


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows; kept here,
    free of heavy imports, so every recipe can name its machine the same way."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    cpu = cpu_model()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB; GPU: {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def run_recipe(recipe: Recipe, scale: float) -> tuple[str, int]:
    args = list(recipe.args)
    for option, default in recipe.scaled:
        args += [option, str(int(default * scale))]
    command = [sys.executable, "-m", recipe.module, *args]
    print(f"== {recipe.title}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return result.stdout.strip(), result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated keys: " +
                        ",".join(r.key for r in RECIPES))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--write", type=Path, default=None, help="write the report here")
    options = parser.parse_args(argv)
    wanted = set(filter(None, options.only.split(",")))
    unknown = wanted - {r.key for r in RECIPES}
    if unknown:
        parser.error(f"unknown benchmark keys: {sorted(unknown)}")
    sections = []
    failed = []
    for recipe in RECIPES:
        if wanted and recipe.key not in wanted:
            continue
        output, code = run_recipe(recipe, options.scale)
        if code != 0:
            failed.append(recipe.key)
            output += f"\n\n**This benchmark failed (exit {code}); see its stderr.**"
        sections.append(f"## {recipe.title}\n\n{output}\n")
    header = (
        f"Measured {dt.date.today().isoformat()} on: {machine_description()}.\n"
        f"Command: `python -m pipelines.bench {' '.join(argv or sys.argv[1:])}`\n"
    )
    report = header + "\n" + "\n".join(sections)
    print(report)
    if options.write:
        options.write.write_text(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
