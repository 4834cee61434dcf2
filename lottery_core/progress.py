"""A progress bar with an ETA over all steps of a run, updated once per evaluation.

Only on a terminal: written to a log or a pipe, a bar's carriage returns become lines of their
own around the one line an error or Ctrl-C prints."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """Thin wrapper over tqdm so the training loop needs no knowledge of it."""

    def __init__(self, total: int, enabled: bool = True):
        on_terminal = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            disable=not (enabled and on_terminal),
            unit="it",
            dynamic_ncols=True,
            file=sys.stderr,
            leave=False,
            mininterval=0.5,
        )

    def advance(self, steps: int) -> None:
        self.bar.update(steps)

    def describe(self, round_index: int, val_acc: float) -> None:
        self.bar.set_description(f"round {round_index}", refresh=False)
        self.bar.set_postfix_str(f"val {val_acc:.2f}%", refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
