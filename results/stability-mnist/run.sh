#!/usr/bin/env bash
# The stability analyses of results/stability-mnist, on the finished trunks of sweep.toml
# (python cli.py sweep run results/stability-mnist/sweep.toml --out SWEEP --workers 2).
# Usage: run.sh SWEEP   (running it again continues where it stopped)
# As run: the Adam trunks' copies trained one by one; the SGD trunks' and the controls' copies
# as one batched model per k x control (--batched: on this CPU each copy is its single run
# bit for bit, tests/test_branch_batch.py).
set -euo pipefail
SWEEP=${1:?usage: run.sh SWEEP_FOLDER}
LOTTERY=${LOTTERY:-python cli.py}
ROUNDS=0,3,7,12,15   # 100, 51.3, 21.1, 7.0 and 3.6% of weights remaining
ADAM="batch_size=60,lr=0.0012,optimizer=adam"
SGD="batch_size=128,lr=0.1,optimizer=sgd"
for trial in 0 1 2; do
  $LOTTERY stability "$SWEEP/points/$ADAM/runs/imp/trial_$trial" --k 0,100,500,2000 \
    --rounds $ROUNDS --between-rounds --workers 2 --quiet
done
for trial in 0 1 2; do
  $LOTTERY stability "$SWEEP/points/$SGD/runs/imp/trial_$trial" --k 0,100,500,2000 \
    --rounds $ROUNDS --between-rounds --workers 2 --batched --quiet
done
# the controls beside IMP (Adam trunks): random reinit and random pruning of the pruned rounds
for trial in 0 1 2; do
  $LOTTERY stability "$SWEEP/points/$ADAM/runs/imp/trial_$trial" --k 0,500,2000 \
    --control reinit,random-prune --rounds 3,7,12,15 --workers 2 --batched --quiet
done
