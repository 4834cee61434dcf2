"""The command line: ``python cli.py run|branch|plugins|report|export|sweep`` (``lottery``).

``run``'s experiment flags are generated from the config's fields (``lottery_core.options``);
plugin choices come from the installed plugins. User mistakes end with one ``Error:`` line and
exit code 2; nothing is written or overwritten. Ctrl-C at any moment is one line and exit code
130: while the libraries load (nothing is written yet) the process stops at once (the
repository's ``cli.py`` and the installed command's ``lottery_core.entry`` set that up before
they import this module); while a command loads torch and the plugins it stops as soon as they
are in (``loading_libraries``); later the first Ctrl-C stops the run, which saves what finished
and says how to resume, and any further Ctrl-C is ignored until then (and, started by those
two, until the process has exited).

``run``'s flags are made without the plugins (loading them imports torch): they load when a
plugin-named value is checked or ``--help`` is shown, so a mistyped flag is answered at once.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from lottery_core.errors import INSTALLED, Interrupted, LotteryError, command, program

if TYPE_CHECKING:
    from lottery_core.plugins import Plugins

INTERRUPTED = 130
USAGE_ERROR = 2
# Where ``run`` keeps the flags made for this invocation (``click.Context.meta``).
CONFIG_OPTIONS = "lottery.run.config_options"


def fail(message: str) -> None:
    raise LotteryError(message)


def plugins() -> Plugins:
    """The installed plugins (loaded once per process; importing them imports torch)."""
    with loading_libraries():
        from lottery_core.plugins import get_plugins

        return get_plugins()


class CommandList(click.Group):
    """The top-level group: each command's one-line help as wide as the terminal allows."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(formatter.width - 6)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class RunCommand(click.Command):
    """A command that also takes one flag per config field, whose choices are the installed
    plugins' names: made when click first asks for the parameters (to parse, or for
    ``--help``), once per invocation, so a plugin installed since the last one is offered.
    The flags are made without the plugins (nor torch): those load only when a plugin-named
    value is checked or ``--help`` is shown, so a mistyped flag is refused at once."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if CONFIG_OPTIONS not in ctx.meta:
            from lottery_core.options import config_options

            ctx.meta[CONFIG_OPTIONS] = config_options(plugins)
        params = super().get_params(ctx)  # the command's own, then the help option
        own = len(self.params)
        return [*params[:own], *ctx.meta[CONFIG_OPTIONS], *params[own:]]


LOCAL_PLUGINS = "LOTTERY_PLUGINS"  # lottery_core.plugins.LOCAL_PLUGINS, without importing torch


def use_local_plugins(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    """``--plugins``: its entries added to ``LOTTERY_PLUGINS`` in this process's environment,
    files made absolute (as ``lottery_core.plugins.is_file_entry`` tells them), so the plugins
    load for every command and in the Ray workers of sweeps and ``--workers``, which inherit
    the environment (whatever their working folder)."""
    entries = [*os.environ.get(LOCAL_PLUGINS, "").split(","), *",".join(values).split(",")]
    wanted: list[str] = []
    for entry in filter(None, (e.strip() for e in entries)):
        if entry.endswith(".py") or "/" in entry or os.sep in entry:
            entry = str(Path(entry).expanduser().resolve())
        if entry not in wanted:
            wanted.append(entry)
    value = ",".join(wanted)
    if value == os.environ.get(LOCAL_PLUGINS, ""):
        return
    os.environ[LOCAL_PLUGINS] = value
    loaded = sys.modules.get("lottery_core.plugins")  # an in-process caller's, loaded before
    if loaded is not None:
        loaded.get_plugins.cache_clear()


@click.group(cls=CommandList, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--plugins",
    multiple=True,
    metavar="MODULE|FILE.py",
    expose_value=False,
    callback=use_local_plugins,
    help="Also load this local plugin: a module's import name or a .py file's path; repeat, "
    "or separate with commas (added to LOTTERY_PLUGINS).",
)
def cli() -> None:
    """lottery: lottery-ticket experiments (iterative magnitude pruning) with plugins."""


@cli.command("run", cls=RunCommand)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="TOML or JSON file of settings; flags override it.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue the stopped run in this folder.",
)
@click.option(
    "--from-previous",
    is_flag=True,
    help="With --resume: continue from checkpoint.prev.pt (the round before) when "
    "checkpoint.pt is damaged; the damaged one is kept as checkpoint.damaged.pt.",
)
@click.option(
    "--trials",
    type=int,
    default=1,
    show_default=True,
    help="Independent trials (seeds seed, seed+1, ...).",
)
@click.option(
    "--controls",
    is_flag=True,
    help="Also run Frankle & Carbin's controls: the reinit and random-prune branches at every "
    "pruned round.",
)
@click.option(
    "--workers",
    type=int,
    help="With --trials/--controls: run them on this many Ray workers at once (one "
    "process each; threads split the cores).",
)
@click.option(
    "--quiet", is_flag=True, help="No progress bar (each round's row is printed all the same)."
)
def run(config_file, resume, from_previous, trials, controls, workers, quiet, **values) -> None:
    """Run an IMP experiment: a row per round as it finishes, then its per-round table."""
    from lottery_core.options import config_flags
    from lottery_core.progress import reporting

    flags = config_flags(values)
    check_run_flags(flags, config_file, resume, from_previous, trials, controls, workers)
    with reporting(lines=True) as report:  # data: first, then each round's row, flushed
        if resume is not None:
            result = resume_run(resume, flags.get("rounds"), from_previous, workers, quiet)
        else:
            result = start_run(flags, config_file, trials, controls, workers, quiet)
        if result is not None:  # None: a finished run, already reported with its table
            print_run(result, report.data_shown)


def check_run_flags(
    flags: dict[str, Any],
    config_file: Path | None,
    resume: Path | None,
    from_previous: bool,
    trials: int,
    controls: bool,
    workers: int | None,
) -> None:
    """``run``'s flags that do not go together: one ``Error:`` line each."""
    from lottery_core.config import check_trials

    if trials < 1:
        fail(f"--trials must be at least 1 (got {trials})")
    check_trials(trials, "--trials")
    if from_previous and resume is None:
        fail("--from-previous goes with --resume DIR")
    if workers is not None and resume is None and trials == 1 and not controls and not flags.get(
        "branches"
    ):
        fail("--workers runs --trials/--controls in parallel; a single run is one process")
    if resume is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items()
                 if v is not None and k != "rounds"]  # fmt: skip
        given += ["--config"] if config_file else []
        given += [f"--trials {trials}"] if trials != 1 else []
        given += ["--controls"] if controls else []
        if given:
            fail(
                f"--resume continues a run as configured (only --rounds N may change: it "
                f"extends it to N rounds); drop {', '.join(given)}"
            )
        if flags.get("rounds") is not None and from_previous:
            fail(
                "--rounds extends a run from its intact checkpoint.pt: resume it with "
                "--from-previous first, then extend it"
            )


def start_run(
    flags: dict[str, Any],
    config_file: Path | None,
    trials: int,
    controls: bool,
    workers: int | None,
    quiet: bool,
) -> Any:
    """A new run, or trials and controls, of the config the file and the flags make. Without
    ``--out``, a ``results/<name>`` that already holds this very experiment is reported with its
    table when it is done (``None`` is returned), else continued; either is said in one line."""
    from lottery_core.api import find_run, run_experiment, run_trials
    from lottery_core.config import make_config

    config = make_config(config_file, **flags)
    group = bool(trials > 1 or controls or config.branches)
    found = None
    if config.out is None:
        found = find_run(config, trials=trials, controls=controls, group=group)
        if found.same and not found.complete:
            what = "IMP runs" if group else "run"
            click.echo(
                f"{found.path} already holds this experiment, {found.done} of {found.rounds} "
                f"rounds of its {what} finished: continuing it"
            )
    result: Any
    if group:
        result = run_trials(
            config, trials=trials, controls=controls, progress=not quiet, workers=workers
        )
    else:
        result = run_experiment(config, progress=not quiet)
    if found is not None and found.complete:
        already_done(result, found.done)
        return None
    return result


def resume_run(
    resume: Path, rounds: int | None, from_previous: bool, workers: int | None, quiet: bool
) -> Any:
    """``run --resume DIR [--rounds N]``: with N, its rounds set to N first, said in one line
    (a run already done with N rounds is reported with its table: ``None`` is returned)."""
    from lottery_core.api import extend_experiment, resume_experiment

    if rounds is not None:
        extension = extend_experiment(resume, rounds, workers=workers)
        if extension.changed:
            click.echo(
                f"extended {resume} from {extension.before} to {extension.after} rounds "
                f"({extension.done} finished; recorded in its config.json)"
            )
        elif not extension.group and extension.done >= extension.after:
            already_done(resume_experiment(resume, progress=not quiet, rounds=rounds), rounds)
            return None
    return resume_experiment(
        resume, progress=not quiet, from_previous=from_previous, workers=workers, rounds=rounds
    )


def already_done(result: Any, rounds: int) -> None:
    """A run (or trials/controls folder) that had nothing left to train: where, and its table."""
    from lottery_core.tables import aggregate_table, summary_table

    click.echo(f"already done: {result.run_dir} ({rounds} rounds); its table:")
    if hasattr(result, "aggregate"):
        click.echo(aggregate_table(result.aggregate))
    else:
        click.echo(summary_table(result.results))


def print_run(result: Any, data_shown: str | None = None) -> None:
    """Where the data came from (unless the rows printed while training began with it), the
    per-round table (or the trials' aggregate), the folder."""
    from lottery_core.tables import aggregate_table, summary_table

    if result.data_source != data_shown:
        click.echo(f"data: {result.data_source}")
    if hasattr(result, "aggregate"):
        click.echo(aggregate_table(result.aggregate))
    else:
        click.echo(summary_table(result.results))
    click.echo(f"results written to {result.run_dir}")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_plugins(as_json: bool) -> None:
    """List every plugin, where it comes from, its file and what it registers."""
    rows = plugins().describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        if row["broken"]:
            click.echo(f"{row['name']}  ({row['origin']}) BROKEN: {row['broken']}")
            continue
        click.echo(f"{row['name']}  ({row['origin']}; module {row['module']})")
        if row["path"]:
            click.echo(f"    file: {row['path']}")
        for item in row["registers"]:
            click.echo(f"    registers {item}")
        click.echo(f"    hooks: {', '.join(row['hooks'])}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Report folder [<first run>/report].")
@click.option(
    "--tolerance",
    type=float,
    default=0.5,
    show_default=True,
    help="Points of test accuracy a ticket may lose against the dense round.",
)
@click.option(
    "--by",
    multiple=True,
    help="Sweep folders: one series per value of this grid field (or experiment); "
    "repeat for combinations [every grid field and the experiment].",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="NAME",
    help="Legend name of each run folder, in their order: one per folder given "
    "[the method or experiment in words].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "pdf", "svg"]),
    default="png",
    show_default=True,
    help="File format of the figures.",
)
def report(run_dirs, out, tolerance, by, labels, fmt) -> None:
    """Write figures (PNG, PDF or SVG) and a Markdown summary of one or more runs."""
    if labels and len(labels) != len(run_dirs):  # before loading anything: one line
        fail(f"--label given {len(labels)} time(s) for {len(run_dirs)} run folder(s): give one "
             "per folder, in the order of the folders")  # fmt: skip
    with loading_libraries():
        from lottery_core.report import write_report

    if not math.isfinite(tolerance) or tolerance < 0:
        fail(f"--tolerance must be a finite number of points, 0 or more (got {tolerance})")
    path = write_report(list(run_dirs), out, tolerance=tolerance, by=list(by) or None,
                        labels=list(labels) or None, fmt=fmt)  # fmt: skip
    click.echo(f"report written to {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--round", "round_index", type=int, required=True, help="Round to export.")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Output file [RUN_DIR/ticket_round<K>.pt]."
)
@click.option(
    "--pruned",
    is_flag=True,
    help="A plain model (re-parametrisation removed, pruned weights zero).",
)
@click.option(
    "--trained",
    is_flag=True,
    help="Round K's trained weights instead of its starting ones (the last round's are in the "
    "checkpoint; any round's with --keep-trained).",
)
def export(run_dir, round_index, out, pruned, trained) -> None:
    """Export the ticket of a round: its masks plus the rewind state (θ0, or θk with
    --rewind-iter; whatever the reinit policy did), for lottery_core.export.load_ticket."""
    with loading_libraries():
        from lottery_core.export import export_ticket

    if out is None:
        kind = ("trained_" if trained else "") + ("pruned" if pruned else "ticket")
        out = run_dir / f"{kind}_round{round_index}.pt"
    if out.exists():
        fail(f"{str(out)!r} already exists; choose another --out")
    info = export_ticket(run_dir, round_index, out, pruned=pruned, plugins=plugins(),
                         trained=trained)  # fmt: skip
    click.echo(
        f"{info['kind']} of round {info['round']} written to {info['path']}: "
        f"{info['bytes']:,} bytes, {info['nonzero']:,} of {info['total']:,} weights nonzero "
        f"({info['remaining']:.1f}% remaining)"
    )
    if info.get("note"):
        click.echo(f"note: {info['note']}")


class BranchGroup(click.Group):
    """``branch KIND RUN_DIR``: one subcommand per installed branch kind, its flags generated
    from the kind's options model, made when click asks for it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return plugins().branches.names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        registry = plugins().branches
        if name not in registry.names() and name not in registry.conflicts:
            return None
        return branch_command(name, registry.items[name].description if name in
                              registry.items else "")  # fmt: skip

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = self.list_commands(ctx)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail(f"no branch kind {name!r}{hint}; installed: {', '.join(known)}")
        return super().resolve_command(ctx, args)


class BranchCommand(click.Command):
    """One branch kind's command: its options' flags made from the kind's model on first use."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        key = f"lottery.branch.{self.name}"
        if key not in ctx.meta:
            with loading_libraries():
                from lottery_core.options import model_options

                registry = plugins().branches
                kind = registry.get(str(self.name))
                ctx.meta[key] = model_options(kind.options, plugins)
        params = super().get_params(ctx)
        own = len(self.params)
        return [*params[:own], *ctx.meta[key], *params[own:]]


def branch_command(name: str, description: str) -> click.Command:
    """``branch NAME RUN_DIR [--rounds ...] [options]``."""

    def callback(run_dir: Path, rounds: str | None, trials: int | None, branch_seed: int,
                 workers: int | None, quiet: bool, batched: bool | None,
                 **options: Any) -> None:  # fmt: skip
        with loading_libraries():
            from lottery_core.api import run_branch

        if workers is not None and workers < 1:
            fail(f"--workers must be at least 1 (got {workers})")
        from lottery_core.config import check_trials

        if trials is not None:
            check_trials(trials, "--trials")
        from lottery_core.progress import reporting

        with reporting(lines=True) as report:  # each network's row as it finishes
            result = run_branch(
                name, run_dir, rounds=rounds, trials=trials, seed=branch_seed, workers=workers,
                progress=not quiet, plugins=plugins(), batched=batched, **options,
            )  # fmt: skip
            print_branch(result, report.data_shown)

    params: list[click.Parameter] = [
        click.Argument(["run_dir"], type=click.Path(path_type=Path)),
        click.Option(["--rounds"], help="Trunk rounds to branch from, e.g. 1,3-8 [default: "
                     "every pruned round the trunk finished]."),  # fmt: skip
        click.Option(["--trials"], type=int,
                     help="Networks per round (the branch's own seeds) [default: 1, or the "
                     "kind's least: stability compares 2 copies]."),  # fmt: skip
        click.Option(["--branch-seed"], type=int, default=0, show_default=True,
                     help="Seed of the branch's own random stream (recorded)."),  # fmt: skip
        click.Option(["--workers"], type=int,
                     help="Train this many networks at once on Ray workers."),  # fmt: skip
        click.Option(["--quiet"], is_flag=True,
                     help="No progress bar (each network's row is printed all the same)."),
        click.Option(["--batched/--no-batched"], default=None,
                     help="Train the networks as one batched model [default: as the run's "
                     "config]."),  # fmt: skip
    ]
    return BranchCommand(
        name, callback=callback, params=params,
        help=f"Branch {name}: {description}." if description else None,
        short_help=description or None,
    )  # fmt: skip


ANALYSIS_SHOWN = 40  # an analysis table longer than this is named, not printed


def print_branch(result: Any, data_shown: str | None = None) -> None:
    """The networks' rows beside the trunk's same rounds, and where they are."""
    from lottery_core.tables import branch_table

    if result.data_source != data_shown:
        click.echo(f"data: {result.data_source}")
    click.echo(branch_table(result.results, result.trunk))
    for name, table in result.analysis.items():
        if len(table) <= ANALYSIS_SHOWN:
            click.echo(f"{name}:")
            click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        else:
            click.echo(f"{name}: {len(table)} rows in {result.folder / (name + '.csv')}")
    click.echo(f"branch written to {result.folder}")


@cli.group(cls=BranchGroup)
def branch() -> None:
    """Train something else from round r of a finished run (controls, sanity checks...).

    \b
      lottery branch KIND RUN_DIR [--rounds 1,3-8] [--trials N] [--workers N] [options]
      lottery branch KIND --help      (the kind's options)
    Built-in kinds: reinit, random-prune, shuffle, sign-reinit, invert, retrain; plugins add
    more. The networks land in RUN_DIR/branches/<kind>-<hash>/; run the same command again to
    continue it.
    """


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--k", "k", default="0,100,500,2000", show_default=True,
              help="Iterations the copies start from, comma-separated (500, 500it, 2ep).")
@click.option("--control", help="Subnetworks to test, comma-separated: none (the ticket), "
              "reinit, random-prune [default: the ticket].")
@click.option("--copies", type=int, default=2, show_default=True,
              help="Networks trained from each start, with different data orders.")
@click.option("--alphas", type=int, default=30, show_default=True,
              help="Evenly spaced points on each linear path.")
@click.option("--rounds", help="Rounds of the run, e.g. 0,3-8 [default: every round it "
              "finished].")
@click.option("--between-rounds", is_flag=True,
              help="Also the barrier between successive rounds' trained networks (a run with "
              "--keep-trained).")
@click.option("--branch-seed", type=int, default=0, show_default=True,
              help="Seed of the copies' own random streams (recorded).")
@click.option("--workers", type=int, help="Train this many networks at once on Ray workers.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--batched/--no-batched", default=None,
              help="Train each k x control's copies as one batched model [default: as the "
              "run's config].")
def stability(run_dir: Path, k: str, control: str | None, copies: int, alphas: int,
              rounds: str | None, between_rounds: bool, branch_seed: int, workers: int | None,
              quiet: bool, batched: bool | None) -> None:  # fmt: skip
    """Instability analysis (Frankle et al. 2020) of a finished run.

    \b
      lottery stability RUN_DIR [--k 0,100,500,2000] [--control none,reinit,random-prune]
                                [--copies 2] [--rounds 0,3,7] [--between-rounds] [--workers N]
    From each round's subnetwork at iteration k, --copies networks trained with different
    data orders; the error along the linear path between them (test and training data); the
    barrier (highest error minus the ends' mean: stable under 2 points) and whether the
    subnetwork matches the dense network (within 0.2 points). Rows: RUN_DIR/stability.csv;
    run the same command again to continue it.
    """
    if workers is not None and workers < 1:
        fail(f"--workers must be at least 1 (got {workers})")
    if alphas < 2:
        fail(f"--alphas must be at least 2 (got {alphas})")
    with loading_libraries():
        from lottery_core.api import run_stability
        from lottery_core.progress import reporting
    with reporting(lines=True):
        result = run_stability(
            run_dir, k=k, control=control, copies=copies, alphas=alphas, rounds=rounds,
            between_rounds=between_rounds, seed=branch_seed, workers=workers,
            progress=not quiet, plugins=plugins(), batched=batched,
        )  # fmt: skip
    print_stability(result)


def print_stability(result: Any) -> None:
    """Mean test barrier by subnetwork and k, the verdict in words, the between-rounds rows."""
    from lottery_core import stability as analysis

    table = analysis.pivot(result.table)
    if not table.empty:
        click.echo("test barrier (points of error; stable < 2), mean over pairs, by k:")
        click.echo(table.to_string(float_format=lambda v: f"{v:.2f}"))
        for line in analysis.verdict(result.table):
            click.echo(line)
    if result.between is not None:
        click.echo("between successive rounds:")
        shown = result.between[["round", "next_round", "remaining", "test_barrier",
                                 "train_barrier", "distance"]]  # fmt: skip
        click.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    click.echo(f"tables written to {result.trunk}")


class SweepGroup(click.Group):
    """``sweep FILE`` means ``sweep run FILE``: a first word that names no subcommand runs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=SweepGroup)
def sweep() -> None:
    """A grid of experiments x trials, each run a Ray task (see lottery_core/sweep.py).

    \b
      python cli.py sweep SWEEP.toml [--workers N] [--address HOST:PORT] [--out DIR]
      python cli.py sweep --resume DIR
      python cli.py sweep status DIR
    """


@sweep.command("run")
@click.argument("sweep_file", required=False, type=click.Path(path_type=Path))
@click.option(
    "--workers",
    type=int,
    help="Runs at once [local: the cores; cluster: as many as its CPUs fit]; each gets "
    "cores/workers threads unless the sweep sets threads.",
)
@click.option(
    "--address", help="Use the existing Ray cluster at host:port (or auto), not a local Ray."
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Sweep folder [results/sweep-<file name>]."
)
@click.option(
    "--resume", type=click.Path(path_type=Path), help="Continue the sweep in this folder."
)
@click.option(
    "--quiet", is_flag=True, help="No progress line (each round's row is printed all the same)."
)
def sweep_run(sweep_file, workers, address, out, resume, quiet) -> None:
    """Run SWEEP_FILE's grid points x trials; run again, it skips finished runs."""
    with loading_libraries():
        from lottery_core.progress import reporting
        from lottery_core.sweep import run_sweep, summary_table

    with reporting(lines=True):  # a row per round a worker finishes, named by its run
        result = run_sweep(
            sweep_file, plugins=plugins(), out=out, resume=resume, workers=workers,
            address=address, progress=not quiet,
        )  # fmt: skip
    if not result.results.empty:
        click.echo(summary_table(result.aggregate))
    click.echo(
        f"{result.done} of {result.runs} runs done in {result.seconds:.0f} s; tables in "
        f"{result.folder}/results.csv and aggregate.csv; report: "
        f"{command('report', result.folder)}"
    )
    if result.failures or result.skipped:
        print_sweep_failures(result)
        sys.exit(1)


def print_sweep_failures(result: Any) -> None:
    """The runs of a sweep that failed or were not run, and how to resume it, on stderr."""
    click.echo(f"{len(result.failures)} run(s) failed:", err=True)
    for name, error in result.failures.items():
        click.echo(f"  {name}: {error}", err=True)
    if result.skipped:
        click.echo(f"{len(result.skipped)} run(s) not run: they branch from a failed run", err=True)
    click.echo(f"Resume with: {result.resume_command}", err=True)


@sweep.command("status")
@click.argument("folder", type=click.Path(path_type=Path))
def sweep_status(folder) -> None:
    """Every run's rounds, what runs now, and the failures of a sweep folder."""
    with loading_libraries():
        from lottery_core.sweep_status import status_text

    click.echo(status_text(folder, plugins()))


def warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A warning as the one line of its message: a terminal user needs no source location."""
    click.echo(str(message), err=True)


def _first_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C stops the run (it saves what finished); later ones must not interrupt
    that, nor the interpreter's teardown after the one line is printed."""
    signal.signal(signal.SIGINT, _later_ctrl_c)
    raise KeyboardInterrupt


def _later_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """A Ctrl-C after the first: the run is already stopping."""


@contextmanager
def loading_libraries() -> Iterator[None]:
    """Ctrl-C held back while torch and the plugins load: raised inside torch's start-up, where
    its C++ calls back into Python, it aborts the process with a C++ trace instead of one line.
    A Ctrl-C pressed meanwhile stops the program as soon as the import is done, as the first
    Ctrl-C does (nothing is written before it). Outside ``main`` it changes nothing."""
    from lottery_core.interrupts import held

    with held(lambda handler: handler is _first_ctrl_c):  # not when main's is off, or held
        yield


def main(argv: list[str] | None = None, restore: bool = True) -> None:
    """Run the CLI; every failure a user can cause is one line on stderr and an exit code.
    ``restore``: give Ctrl-C its previous handler back on return (in-process callers); the
    program keeps ignoring a second Ctrl-C until it has exited."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _first_ctrl_c)
    try:
        _main(argv)
    finally:
        if previous is not None and restore:
            signal.signal(signal.SIGINT, previous)


def _main(argv: list[str] | None) -> None:
    try:
        with warnings.catch_warnings():
            warnings.showwarning = warning_line
            prog_name = INSTALLED if program() == INSTALLED else "cli.py"
            cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(USAGE_ERROR)
    except (click.Abort, KeyboardInterrupt):
        click.echo("Interrupted.", err=True)
        sys.exit(INTERRUPTED)
    except Interrupted as exc:
        stopped(exc)
    except LotteryError as exc:
        halted = exc.exit_code == INTERRUPTED  # a sweep's Ctrl-C: its message says how to resume
        click.echo(f"{'' if halted else 'Error: '}{exc}", err=True)
        sys.exit(exc.exit_code)


def stopped(exc: Interrupted) -> None:
    """A run stopped by Ctrl-C: what it kept and how to resume it; exit code 130."""
    if exc.run_dir is not None:
        click.echo(
            f"\nInterrupted: {exc.kept}. Resume with: {command('run', '--resume', exc.run_dir)}",
            err=True,
        )
    else:
        click.echo("\nInterrupted before the first round finished; nothing was kept.", err=True)
    sys.exit(INTERRUPTED)
