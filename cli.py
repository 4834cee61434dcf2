"""The command line: ``python cli.py run|plugins|report|export``.

Every plugin choice is a flag whose allowed values come from the installed plugins. User
mistakes end with one ``Error:`` line and exit code 2; nothing is written or overwritten.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lottery_core.errors import LotteryError
from lottery_core.plugins import Plugins, get_plugins

USAGE_ERROR = 2


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(USAGE_ERROR)


def summary_table(frame) -> str:
    columns = [c for c in ("round", "remaining", "ES", "val", "test", "final_test", "time_s")
               if c in frame.columns]
    shown = frame[columns].copy()
    formats = {"remaining": "{:.1f}", "val": "{:.2f}", "test": "{:.2f}", "final_test": "{:.2f}",
               "time_s": "{:.1f}"}
    for column, fmt in formats.items():
        if column in shown:
            shown[column] = shown[column].map(fmt.format)
    return shown.to_string(index=False)


def build_cli(plugins: Plugins) -> click.Group:
    """The click group, with choices taken from ``plugins``."""

    def choice(names: list[str]) -> click.Choice:
        return click.Choice(names, case_sensitive=True)

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    def cli() -> None:
        """lottery: lottery-ticket experiments (iterative magnitude pruning) with plugins."""

    @cli.command()
    @click.option("--config", "config_file", type=click.Path(path_type=Path),
                  help="TOML or JSON file of settings; flags override it.")
    @click.option("--dataset", type=choice(plugins.datasets.names()),
                  help="Dataset (default: the model's; lenet_fc uses mnist).")
    @click.option("--model", type=choice(plugins.models.names()), help="Architecture [lenet_fc].")
    @click.option("--prune", type=choice(plugins.strategies.names()),
                  help="Pruning strategy [magnitude].")
    @click.option("--scope", type=choice(["layerwise", "global"]), help="Pruning scope [layerwise].")
    @click.option("--reinit", type=choice(plugins.reinits.names()),
                  help="Reinitialisation after pruning [rewind].")
    @click.option("--rate", type=float,
                  help="Fraction of surviving fc weights pruned per round (global: of all) [0.2].")
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
    @click.option("--no-download", "download", flag_value=False, default=None,
                  help="Only read files already under --data-dir.")
    @click.option("--test-every-eval", is_flag=True, default=None,
                  help="Also evaluate the test set at every evaluation (history.csv).")
    @click.option("--out", type=click.Path(path_type=Path),
                  help="Run folder (must not exist) [results/<name from config>].")
    @click.option("--resume", type=click.Path(path_type=Path),
                  help="Continue the stopped run in this folder.")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    def run(config_file, resume, quiet, **flags) -> None:
        """Run an IMP experiment and print its per-round table."""
        from lottery_core.api import resume_experiment, run_experiment
        from lottery_core.config import make_config

        if resume is not None:
            given = [k for k, v in flags.items() if v is not None] + (["config"] if config_file else [])
            if given:
                fail(f"--resume continues a run as configured; drop {', '.join(given)}")
            result = resume_experiment(resume, progress=not quiet)
        else:
            config = make_config(config_file, **flags)
            result = run_experiment(config, progress=not quiet)
        click.echo(f"data: {result.data_source}")
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
    except LotteryError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
