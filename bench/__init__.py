"""Speed benchmark of the training step, run as ``python -m bench`` (see ``bench/README.md``).

It compares, on this machine and in one run, the framework's own round loop (``train_round``)
with a bare PyTorch loop using the same ``torch.nn.utils.prune`` pre-hooks and with the usual
torchvision ``DataLoader`` loop, against the machine's compute floor, and reports the share of a
round spent evaluating and the peak memory of a default run. It prints ratios of medians over
interleaved repeats, never a single absolute timing alone.
"""
