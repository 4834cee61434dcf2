"""Holding Ctrl-C back while code that must not be interrupted runs, then answering it.

A KeyboardInterrupt raised inside torch's start-up (its C++ calling back into Python) aborts the
process with a C++ trace; raised inside ``ray.init`` or ``ray.shutdown`` it leaves Ray's
processes running. ``held`` lets such a block finish, then calls the handler that was on, once,
as if Ctrl-C had come just then.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def held(applies: Callable[[Any], bool] = callable) -> Iterator[None]:
    """Ctrl-C held back for the block, then answered by the handler that was on (a Ctrl-C
    meanwhile calls it once, after the block). ``applies(handler)`` says whether to hold at all
    (default: a Python handler is on); outside the main thread nothing changes."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not applies(previous):
        yield
        return
    pressed: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed and callable(previous):
        previous(signal.SIGINT, None)
