"""The ``poke-rl`` command line: a thin typer layer over library functions.

Exit codes (README.md, "Commands"): 0 success; 2 bad usage or unusable input (``PokeRLError``, a
typer usage error); 1 anything else. Errors are one line on stderr; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from poke_rl import __version__
from poke_rl.errors import PokeRLError
from poke_rl.usage import OneLineUsageGroup

app = typer.Typer(
    name="poke-rl",
    help="Offline RL for Pokemon Showdown: prep trajectory JSONL into shards, train BC/IQL/CQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineUsageGroup,  # a usage error is one line on stderr, exit 2
)
# poke_rl.showdown.battles.DEFAULT_FORMAT (tests/prep/test_prep.py checks), not imported here:
# that module pulls in asyncio, which no prep or train command needs at start-up
DEFAULT_FORMAT = "gen9randombattle"

_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"poke-rl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug/--no-debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """poke-rl: offline RL for Pokemon Showdown."""
    _state["debug"] = debug
    if not debug:
        warnings.formatwarning = _warning_line


def _warning_line(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    """A warning as one ``warning: …`` line (the file and source line only with --debug)."""
    return f"warning: {message}\n"


def handle_errors(func: F) -> F:
    """Map exceptions to the documented exit codes with one clear line on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except PokeRLError as exc:
            if _state["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI boundary turns any failure into exit 1
            if _state["debug"]:
                raise
            typer.echo(
                f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@handle_errors
def prep(
    inputs: list[str] = typer.Argument(
        ..., help="Trajectory JSONL files (.jsonl, .jsonl.gz, .jsonl.zst), directories, globs, "
        "or URLs of single files (s3://, gs://, http(s)://)."
    ),
    out: str = typer.Argument(
        ..., help="Output folder (created; swapped in atomically), or an s3:// or gs:// prefix "
        "(built in a local mirror, then uploaded: manifest last)."
    ),
    val_fraction: float = typer.Option(0.05, min=0.0, max=1.0, help="Share of battles in val."),
    workers: int | None = typer.Option(
        None, min=1, help="Worker processes (1); with --ray, Ray tasks at once (the cluster's CPUs)."
    ),
    block_size: int = typer.Option(4096, min=1, help="Transitions per tensor block."),
    force: bool = typer.Option(
        False, "--force/--no-force",
        help="Rebuild everything from exactly these inputs (how an input OUT holds is removed).",
    ),
    strict: bool = typer.Option(
        False, "--strict/--no-strict", help="Exit 2 on the first rejected line."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    where: str | None = typer.Option(
        None, "--where", metavar="EXPR",
        help='Keep in the tensor shards only trajectories whose metadata match, e.g. '
        '\'rating >= 1500 and format == "gen9randombattle"\' (the Parquet keeps all).',
    ),
    ray: str | None = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Run the chunks as tasks on a Ray cluster (pip install 'poke-rl[ray]'): auto (the "
        "cluster `ray start` runs here), local (a new one on this machine), HOST:PORT or "
        "ray://HOST:10001. The output is the same as without.",
    ),
) -> None:
    """Explode trajectory JSONL into transition Parquet and WebDataset tensor shards."""
    from poke_rl.prep import PrepInterrupted, PrepOptions
    from poke_rl.remote import prep_anywhere

    options = PrepOptions(
        val_fraction=val_fraction,
        workers=workers or 1,
        block_size=block_size,
        force=force,
        strict=strict,
        progress=progress,
        where=where,
        ray=ray,
        ray_tasks=workers,
    )
    try:
        prep_anywhere(inputs, out, options)
    except PrepInterrupted as exc:  # SIGINT 130, SIGTERM 143: the staging is already removed
        typer.echo(f"interrupted by {exc.name}: prep stopped; {out} holds its last complete output", err=True)
        raise typer.Exit(exc.exit_code) from None


@app.command()
@handle_errors
def inspect(
    path: str = typer.Argument(
        ..., help="A shards folder or URL prefix (s3://, gs://, http(s)://), a run folder or a "
        "checkpoint file."
    ),
    as_json: bool = typer.Option(
        False, "--json/--no-json", help="Print one JSON object instead of tables."
    ),
) -> None:
    """Summarise a shards folder (and verify its shards), a run folder or a checkpoint."""
    from poke_rl.inspection import inspect_path

    if not inspect_path(path, as_json=as_json):
        raise typer.Exit(2)


@app.command()
@handle_errors
def train(
    shards: str = typer.Argument(
        ..., help="A prep output folder (with manifest.json) or URL prefix (s3://, gs://, "
        "http(s)://; shards cached in $POKE_RL_CACHE)."
    ),
    algo: str = typer.Option(None, "--algo", help="iql (default), cql or bc."),
    steps: int = typer.Option(None, min=1, help="Updates to run (default 100000)."),
    batch_size: int = typer.Option(None, min=1, help="Transitions per update and rank (256)."),
    lr: float = typer.Option(None, help="Peak learning rate of every optimiser (3e-4)."),
    warmup_steps: int = typer.Option(
        None, min=0, help="Linear warmup steps (1000, at most a tenth of --steps; one longer "
        "than the run is clamped to a tenth, with a warning)."
    ),
    run_dir: Path = typer.Option(None, help="Run folder (runs/<algo>-<time>)."),
    init_from: Path = typer.Option(
        None, help="BC checkpoint to start from: IQL/BC take its policy, CQL its encoder."
    ),
    resume: bool = typer.Option(
        False, "--resume/--no-resume", help="Continue --run-dir from its last.pt. With a larger "
        "--steps N it extends the run (a finished one too): the lr follows, from the current "
        "step on, the warmup + cosine of a run planned for N steps from the start.",
    ),
    device: str = typer.Option(None, help="auto (CUDA when available), cpu or cuda."),
    seed: int = typer.Option(None, help="Seed of the networks and the data order (0)."),
    log_every: int = typer.Option(None, min=1, help="Steps per metrics.jsonl line (100)."),
    eval_every: int = typer.Option(None, min=0, help="Steps between validations (2000)."),
    save_every: int = typer.Option(None, min=0, help="Steps between last.pt saves (5000)."),
    workers: int = typer.Option(None, min=0, help="DataLoader worker processes (0)."),
    threads: int = typer.Option(
        None, min=0, help="torch CPU threads (default 1; 0: torch's default, one per core). "
        "On 2 shared busy cores 1 ran 3x faster than one per core, on quiet ones 0.77x: on a "
        "machine to yourself pass --threads 0 (or N).",
    ),
    config: Path = typer.Option(
        None, "--config", help="TOML file: these options and [model], [iql], [cql], [bc] tables."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Any config key, typed as in TOML (repeatable): "
        "--set iql.beta=30 --set model.hidden_sizes=[512,512] --set best_metric=td_error. "
        "Precedence: defaults < --config < --set < the options above.",
    ),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train BC, IQL or CQL on prepped shards; writes RUN/{config.json,metrics.jsonl,tb,checkpoints}.

    RUN/config.json records every resolved value (and any warning, e.g. a clamped warmup)."""
    import errno
    import os

    from poke_rl.train import DivergedError, OutOfSpaceError, TrainingInterrupted
    from poke_rl.train import train as run_training

    options = {
        "algo": algo, "steps": steps, "batch_size": batch_size, "lr": lr,
        "warmup_steps": warmup_steps, "run_dir": str(run_dir) if run_dir else None,
        "init_from": str(init_from) if init_from else None, "device": device, "seed": seed,
        "log_every": log_every, "eval_every": eval_every, "save_every": save_every,
        "workers": workers, "threads": threads, "progress": progress,
    }
    try:
        run_training(shards, options, config_file=config, resume=resume, sets=overrides or ())
    except TrainingInterrupted as exc:  # SIGINT 130, SIGTERM 143; last.pt holds the step
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_code) from None
    except (DivergedError, OutOfSpaceError) as exc:  # not the user's input: exit 1, one line
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # a full disk outside the loop (config.json, metrics.jsonl)
        if _state["debug"] or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {os.strerror(exc.errno).lower()}{where}", err=True)
        raise typer.Exit(1) from None


@app.command(name="eval")
@handle_errors
def eval_command(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint (RUN/checkpoints/best.pt, ...) or a run folder (its best.pt)."
    ),
    shards: str = typer.Argument(
        None, help="A prep output folder or URL prefix; its val split is used (not with --online)."
    ),
    max_batches: int = typer.Option(0, min=0, help="Cap on val batches (0: the whole split)."),
    batch_size: int = typer.Option(None, min=1, help="Val batch size (the run's by default)."),
    device: str = typer.Option(None, help="auto, cpu or cuda (offline: auto; online: cpu)."),
    as_json: bool = typer.Option(
        False, "--json/--no-json", help="Print one JSON object instead of a table."
    ),
    online: bool = typer.Option(
        False, "--online/--no-online",
        help="Play live battles against baseline bots instead (no SHARDS).",
    ),
    battles: int = typer.Option(100, "--battles", "-n", min=1, help="Online: battles per opponent."),
    opponents: str = typer.Option(
        "random,maxpower,heuristic",
        help="Online: opponents, comma-separated, each NAME[:EPSILON]; NAME a baseline or a "
        "checkpoint (.pt).",
    ),
    battle_format: str = typer.Option(DEFAULT_FORMAT, "--format", help="Online: the format."),
    concurrency: int = typer.Option(8, min=1, help="Online: battles in flight at once."),
    server: str = typer.Option(None, help="Online: ws://HOST:PORT of a running server."),
    port: int = typer.Option(None, help="Online: port of the local server (default: a free one)."),
    seed: int = typer.Option(0, help="Online: seed of the players' own random choices."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Online: progress."),
    league: str = typer.Option(
        None, help="Online: a round robin of CKPT and these players (comma-separated, as "
        "--opponents; policies also POLICY@TEMP or POLICY:top2:EPS), --battles per pair, with "
        "Bradley–Terry ratings against heuristic (or the first player) and 95 % intervals.",
    ),
) -> None:
    """Offline metrics of a checkpoint on the val split (action match, Q, entropy, TD error), or
    with --online its win rates in live battles against baseline bots."""
    if online:
        options = _online_options(shards, device, battles, battle_format, concurrency, server,
                                  port, seed, progress)
        if league is not None:
            _eval_league(checkpoint, league, options, as_json)
            return
        _eval_online(_checkpoint_argument(checkpoint), opponents, options, as_json)
        return
    if league is not None:
        raise PokeRLError("--league plays live battles: add --online")
    from poke_rl.train.validate import evaluate_checkpoint, print_report

    checkpoint = _checkpoint_argument(checkpoint)
    if shards is None:
        raise PokeRLError("give SHARDS (a prep output folder) for offline metrics, or --online")
    report = evaluate_checkpoint(checkpoint, shards, max_batches, batch_size, device or "auto")
    print_report(report, as_json=as_json)


def _checkpoint_argument(path: Path) -> Path:
    """A run folder stands for its checkpoints/best.pt (said on stderr)."""
    from poke_rl.paths import resolve_checkpoint

    resolved, note = resolve_checkpoint(path)
    if note:
        typer.echo(note, err=True)
    return resolved


def _online_options(shards: str | None, device: str | None, battles: int, battle_format: str,
                    concurrency: int, server: str | None, port: int | None, seed: int,
                    progress: bool) -> Any:
    from poke_rl.showdown.online import OnlineOptions

    if shards is not None:
        raise PokeRLError("--online plays live battles and takes no SHARDS argument")
    return OnlineOptions(
        battles=battles, battle_format=battle_format, concurrency=concurrency, server=server,
        port=port, device=device or "cpu", seed=seed, progress=progress,
    )


def _eval_league(checkpoint: Path, league: str, options: Any, as_json: bool) -> None:
    from poke_rl.showdown.online import parse_opponents, print_league_report, run_league

    agent = str(_checkpoint_argument(checkpoint)) if checkpoint.is_dir() else str(checkpoint)
    players = (agent, *parse_opponents(league))
    report = run_league(players, options,
                        reference="heuristic" if "heuristic" in players else None)
    print_league_report(report, as_json=as_json)
    if report["illegal_actions"]:
        raise RuntimeError(
            f"league policies asked for {report['illegal_actions']} illegal actions (must be 0)"
        )


def _eval_online(checkpoint: Path, opponents: str, options: Any, as_json: bool) -> None:
    from dataclasses import replace

    from poke_rl.showdown.online import parse_opponents, print_online_report, run_online

    options = replace(options, opponents=parse_opponents(opponents))
    report = run_online(checkpoint, options)
    print_online_report(report, as_json=as_json)
    if report["illegal_actions"]:
        raise RuntimeError(
            f"the policy asked for {report['illegal_actions']} illegal actions (must be 0)"
        )


@app.command()
@handle_errors
def collect(
    out: Path = typer.Argument(..., help="Output trajectory file (.jsonl or .jsonl.gz)."),
    battles: int = typer.Option(10, "--battles", "-n", min=1, help="Battles to play."),
    battle_format: str = typer.Option(DEFAULT_FORMAT, "--format", help="Random-battle format."),
    p1: str = typer.Option(
        "heuristic:0.1",
        help="random, maxpower, heuristic or a checkpoint (.pt), optionally :EPSILON "
        "(random-action rate); a checkpoint also @TEMP (sampled) or :top2:EPS (its second "
        "choice with probability EPS).",
    ),
    p2: str = typer.Option("random", help="The opponent, same syntax as --p1."),
    concurrency: int = typer.Option(4, min=1, help="Battles in flight at once."),
    server: str = typer.Option(None, help="ws://HOST:PORT of a running server (default: start one)."),
    port: int = typer.Option(None, help="Port of the local server (default: a free one)."),
    seed: int = typer.Option(0, help="Seed of the players' own random choices."),
    replays: str = typer.Option(
        None, help="Where each battle's replay JSON goes (default: OUT-replays.jsonl.gz)."),
    keep_replays: bool = typer.Option(
        True, "--keep-replays/--no-keep-replays", help="Keep the battles' replay JSON (local server)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Play battles on a local Showdown server and record both players' trajectories and each
    battle's replay JSON (what `poke-rl convert` rebuilds trajectories from)."""
    from poke_rl.showdown.collect import CollectOptions, run_collect, summary

    options = CollectOptions(
        battles=battles, battle_format=battle_format, p1=p1, p2=p2, concurrency=concurrency,
        server=server, port=port, seed=seed, progress=progress, replays=replays,
        keep_replays=keep_replays,
    )
    typer.echo(summary(run_collect(out, options), options), err=True)


@app.command()
@handle_errors
def convert(
    inputs: list[str] = typer.Argument(
        ..., help="Replay JSON: .json (one replay or a list), .jsonl (one per line), .gz, .zst, "
        "or folders of them."),
    out: Path = typer.Argument(..., help="Output trajectory file (.jsonl or .jsonl.gz)."),
    workers: int = typer.Option(1, min=1, help="Worker processes (each with its own simulator)."),
    timeout_s: float = typer.Option(60.0, "--timeout", min=1.0, help="Seconds per battle."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Re-simulate replays' input logs and write both players' trajectories; rejected replays
    go to OUT-rejects.jsonl with a reason."""
    from poke_rl.convert import ConvertOptions, run_convert, summary

    options = ConvertOptions(workers=workers, timeout_s=timeout_s, progress=progress)
    typer.echo(summary(run_convert(inputs, out, options)), err=True)


@app.command()
@handle_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (RUN/checkpoints/best.pt, ...)."),
    out: Path = typer.Argument(..., help="The policy file to write (POLICY.pt or POLICY.onnx)."),
    file_format: str = typer.Option(
        None, "--format", help="torchscript or onnx (default: onnx for a .onnx name, else "
        "torchscript). ONNX needs the onnx extra: pip install 'poke-rl[onnx]'.",
    ),
) -> None:
    """Write a checkpoint's policy as TorchScript (or ONNX): (ids, num, mask) -> masked logits,
    with its feature spec and fingerprint inside; load a .pt with poke_rl.load_policy or
    torch.jit.load, run a .onnx with onnxruntime. A TorchScript file is a program: share and
    load it only from trusted sources."""
    from poke_rl.export import export_policy, export_summary

    chosen = file_format or ("onnx" if out.suffix.lower() == ".onnx" else "torchscript")
    if chosen not in ("torchscript", "onnx"):
        raise PokeRLError(f"--format must be torchscript or onnx, not {file_format!r}")
    if chosen == "onnx":
        from poke_rl.export_onnx import export_onnx

        typer.echo(export_summary(export_onnx(checkpoint, out), out), err=True)
        return
    typer.echo(export_summary(export_policy(checkpoint, out), out), err=True)


def run() -> None:
    """Entry point that never shows a Python traceback unless --debug is given."""
    app()


if __name__ == "__main__":
    sys.exit(run())
