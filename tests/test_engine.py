"""The engine's embedded Ray instance, started in this process and stopped by it."""

from __future__ import annotations

import os

import pytest

from lottery_core import engine


@pytest.mark.slow
def test_the_embedded_workers_keep_the_drivers_priority_unless_told(monkeypatch):
    """Ray adds 15 to its workers' niceness by default: beside other work they would get a few
    percent of a core. The embedded instance's workers run at the driver's niceness, or at what
    ``RAY_worker_niceness`` adds when the user set it; each unit records its worker's."""
    ray = engine.import_ray(None)
    assert not ray.is_initialized()
    driver = os.nice(0)
    units = [engine.Unit(key=f"u{i}", run=f"r{i}", target="os:getpid", kwargs={}) for i in (0, 1)]
    for told, added in ((None, 0), ("3", 3)):
        if told is not None:
            monkeypatch.setenv(engine.WORKER_NICENESS, told)
        with engine.Engine(engine.plan(workers=2, address=None, threads=1)) as ours:
            outcomes = ours.run(units)
        assert all(o.ok for o in outcomes.values()), outcomes
        assert {o.pid for o in outcomes.values()} != {os.getpid()}
        assert {o.niceness for o in outcomes.values()} == {driver + added}
        assert os.environ.get(engine.WORKER_NICENESS) == told  # the driver's environment kept
        assert not ray.is_initialized()
