#!/usr/bin/env bash
# results/stability-fashion: LeNet-5 (lenet_conv) on full Fashion-MNIST, the protocol of
# results/fashion-conv (Adam 1.2e-3, batch 60, 2,000 iterations a round, 30% of conv and fc
# weights and 15% of the output layer pruned a round), one trunk of 5 rounds kept whole; then
# the instability analysis at 100%, 49% and 24% remaining, k = 0, 100, 500.
# Usage: run.sh OUT   (running it again continues where it stopped)
set -euo pipefail
OUT=${1:?usage: run.sh OUT_FOLDER}
LOTTERY=${LOTTERY:-python cli.py}
if [ ! -f "$OUT/trunk/results.csv" ] || [ "$(wc -l < "$OUT/trunk/results.csv")" -lt 6 ]; then
  if [ -f "$OUT/trunk/config.json" ]; then
    $LOTTERY run --resume "$OUT/trunk" --quiet
  else
    $LOTTERY run --model lenet_conv --dataset fashion --no-download --rounds 5 \
      --iterations 2000 --batch-size 60 --lr 0.0012 --rate 0.3 --conv-rate 0.3 \
      --output-rate 0.15 --eval-every 100 --keep-trained --out "$OUT/trunk" --quiet
  fi
fi
$LOTTERY stability "$OUT/trunk" --k 0,100,500 --rounds 0,2,4 --between-rounds --workers 2 --quiet
