"""The command line: ``python cli.py run|plugins|report|export``.

Every plugin choice is a flag whose allowed values come from the installed plugins. User
mistakes end with one ``Error:`` line and exit code 2; nothing is written or overwritten.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lottery_core.errors import Interrupted, LotteryError
from lottery_core.plugins import Plugins, get_plugins

USAGE_ERROR = 2


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(USAGE_ERROR)


def summary_table(frame) -> str:
    columns = [
        c
        for c in ("round", "remaining", "ES", "val", "test", "final_test", "time_s")
        if c in frame.columns
    ]
    shown = frame[columns].copy()
    formats = {
        "remaining": "{:.1f}",
        "val": "{:.2f}",
        "test": "{:.2f}",
        "final_test": "{:.2f}",
        "time_s": "{:.1f}",
    }
    for column, fmt in formats.items():
        if column in shown:
            shown[column] = shown[column].map(fmt.format)
    return shown.to_string(index=False)


def aggregate_table(frame) -> str:
    """Mean test accuracy at ES (min-max over trials) per experiment and round."""
    lines = []
    for name, part in frame.groupby("experiment", sort=False):
        lines.append(f"[{name}]")
        shown = part[["round", "remaining"]].copy()
        shown["remaining"] = shown["remaining"].map("{:.1f}".format)
        shown["ES"] = part["ES_mean"].map("{:.0f}".format)
        shown["test"] = [
            f"{m:.2f} ({lo:.2f}-{hi:.2f})"
            for m, lo, hi in zip(part["test_mean"], part["test_min"], part["test_max"], strict=True)
        ]
        lines.append(shown.to_string(index=False))
    return "\n".join(lines)


def build_cli(plugins: Plugins) -> click.Group:
    """The click group, with choices taken from ``plugins``."""

    def choice(names: list[str]) -> click.Choice:
        return click.Choice(names, case_sensitive=True)

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    def cli() -> None:
        """lottery: lottery-ticket experiments (iterative magnitude pruning) with plugins."""

    @cli.command()
    @click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        help="TOML or JSON file of settings; flags override it.",
    )
    @click.option(
        "--dataset",
        type=choice(plugins.datasets.names()),
        help="Dataset (default: the model's; lenet_fc uses mnist).",
    )
    @click.option("--model", type=choice(plugins.models.names()), help="Architecture [lenet_fc].")
    @click.option(
        "--prune", type=choice(plugins.strategies.names()), help="Pruning strategy [magnitude]."
    )
    @click.option(
        "--scope", type=choice(["layerwise", "global"]), help="Pruning scope [layerwise]."
    )
    @click.option(
        "--reinit",
        type=choice(plugins.reinits.names()),
        help="Reinitialisation after pruning [rewind].",
    )
    @click.option(
        "--rate",
        type=float,
        help="Fraction of surviving fc weights pruned per round (global: of all) [0.2].",
    )
    @click.option("--conv-rate", type=float, help="Per-round rate for conv layers [model's].")
    @click.option("--output-rate", type=float, help="Per-round rate for the output layer [rate/2].")
    @click.option("--rounds", type=int, help="Rounds, the dense one included [model's].")
    @click.option("--iterations", type=int, help="Training iterations per round [model's].")
    @click.option("--batch-size", type=int, help="Minibatch size [60].")
    @click.option("--lr", type=float, help="Adam learning rate [model's].")
    @click.option("--eval-every", type=int, help="Validate every N iterations [100].")
    @click.option("--rewind-iter", type=int, help="Rewind to the weights at iteration k [0].")
    @click.option("--seed", type=int, help="Seed for init, data order and pruning [0].")
    @click.option("--device", type=str, help="auto, cpu or cuda [auto].")
    @click.option("--data-dir", type=click.Path(path_type=Path), help="Dataset folder [data].")
    @click.option(
        "--no-download",
        "download",
        flag_value=False,
        default=None,
        help="Only read files already under --data-dir.",
    )
    @click.option(
        "--test-every-eval",
        is_flag=True,
        default=None,
        help="Also evaluate the test set at every evaluation (history.csv).",
    )
    @click.option(
        "--out",
        type=click.Path(path_type=Path),
        help="Run folder (must not exist) [results/<name from config>].",
    )
    @click.option(
        "--resume", type=click.Path(path_type=Path), help="Continue the stopped run in this folder."
    )
    @click.option(
        "--trials",
        type=int,
        default=1,
        show_default=True,
        help="Independent trials (seeds seed, seed+1, ...).",
    )
    @click.option(
        "--controls", is_flag=True, help="Also run the random-reinit and random-pruning controls."
    )
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    def run(config_file, resume, trials, controls, quiet, **flags) -> None:
        """Run an IMP experiment and print its per-round table."""
        from lottery_core.api import resume_experiment, run_experiment, run_trials
        from lottery_core.config import make_config

        if trials < 1:
            fail(f"--trials must be at least 1 (got {trials})")
        if resume is not None:
            given = [k for k, v in flags.items() if v is not None] + (
                ["config"] if config_file else []
            )
            if given:
                fail(f"--resume continues a run as configured; drop {', '.join(given)}")
            result = resume_experiment(resume, progress=not quiet)
        else:
            config = make_config(config_file, **flags)
            if trials > 1 or controls:
                result = run_trials(config, trials=trials, controls=controls, progress=not quiet)
            else:
                result = run_experiment(config, progress=not quiet)
        click.echo(f"data: {result.data_source}")
        if hasattr(result, "aggregate"):
            click.echo(aggregate_table(result.aggregate))
        else:
            click.echo(summary_table(result.results))
        click.echo(f"results written to {result.run_dir}")

    @cli.command("plugins")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def list_plugins(as_json: bool) -> None:
        """List every plugin, where it comes from and what it registers."""
        rows = plugins.describe()
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            click.echo(f"{row['name']}  ({row['origin']}; module {row['module']})")
            for item in row["registers"]:
                click.echo(f"    registers {item}")
            click.echo(f"    hooks: {', '.join(row['hooks'])}")

    @cli.command()
    @click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option(
        "--out", type=click.Path(path_type=Path), help="Report folder [<first run>/report]."
    )
    @click.option(
        "--tolerance",
        type=float,
        default=0.5,
        show_default=True,
        help="Points of test accuracy a ticket may lose against the dense round.",
    )
    def report(run_dirs, out, tolerance) -> None:
        """Write PNG plots and a Markdown summary of one or more runs."""
        from lottery_core.report import write_report

        path = write_report(list(run_dirs), out, tolerance=tolerance)
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
    def export(run_dir, round_index, out, pruned) -> None:
        """Export the winning ticket of a round: masks plus the weights to start from."""
        from lottery_core.export import export_ticket

        if out is None:
            out = run_dir / f"{'pruned' if pruned else 'ticket'}_round{round_index}.pt"
        if out.exists():
            fail(f"{str(out)!r} already exists; choose another --out")
        info = export_ticket(run_dir, round_index, out, pruned=pruned)
        click.echo(
            f"{info['kind']} of round {info['round']} written to {info['path']}: "
            f"{info['bytes']:,} bytes, {info['nonzero']:,} of {info['total']:,} weights nonzero "
            f"({info['remaining']:.1f}% remaining)"
        )
        if info.get("note"):
            click.echo(f"note: {info['note']}")

    return cli


def main(argv: list[str] | None = None) -> None:
    try:
        cli = build_cli(get_plugins())
        cli.main(args=argv, prog_name="cli.py", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        fail(exc.format_message())
    except click.ClickException as exc:
        fail(exc.format_message())
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except Interrupted as exc:
        where = exc.run_dir if exc.run_dir is not None else "the run folder"
        click.echo(
            f"\nInterrupted: rounds before round {exc.next_round} are saved in {where}. "
            f"Resume with: python cli.py run --resume {where}",
            err=True,
        )
        sys.exit(130)
    except LotteryError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
