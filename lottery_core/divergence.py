"""Rounds that trained into nonsense without a NaN: a loss that exploded, or chance accuracy.

A non-finite loss already stops a run (``training.NonFiniteLoss``); a learning rate far too high
can instead leave every loss finite but huge (``--lr 1e4``: losses of 1e16) and the accuracy at
chance, and exit 0. Each round's record says so in its ``flag`` column, which the CLI table and
the report show: ``"diverged"``, ``"chance"``, or an empty cell (NaN, as pandas reads an empty
cell back, so a run's in-memory table equals its ``results.csv``).
"""

from __future__ import annotations

import math

FLAGS = ("diverged", "chance")
# The loss of guessing uniformly is ln(classes) (2.3 for 10): a final loss ten times that has
# exploded, as has a final training loss four times the round's first evaluation window's.
EXPLODED = 10.0
GROWTH = 4.0
# Validation accuracy at most this many points above chance (100 / classes) is chance.
CHANCE_MARGIN = 5.0


def round_flag(history: list[dict], val_acc: float, num_classes: int) -> str | float:
    """``"diverged"``, ``"chance"`` or NaN for a round with evaluation rows ``history``
    (``train_loss``, ``val_loss``) and validation accuracy ``val_acc`` (%) at early stopping."""
    return check(history, val_acc, num_classes) or math.nan


def check(history: list[dict], val_acc: float, num_classes: int) -> str:
    """``round_flag``'s verdict, ``""`` when nothing is wrong."""
    if not history or num_classes < 2:
        return ""
    bound = EXPLODED * math.log(num_classes)
    first, last = history[0], history[-1]
    if max(last["train_loss"], last["val_loss"]) > bound:
        return "diverged"
    if len(history) > 1 and last["train_loss"] > GROWTH * first["train_loss"]:
        return "diverged"
    if val_acc <= 100.0 / num_classes + CHANCE_MARGIN:
        return "chance"
    return ""


def describe(flag: str) -> str:
    """A flag in words, for the report."""
    return {
        "diverged": "its loss exploded (try a lower --lr)",
        "chance": "its validation accuracy stayed at chance",
    }.get(flag, flag)
