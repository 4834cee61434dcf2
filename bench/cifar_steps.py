"""ResNet-20 and VGG-16 training steps on CIFAR-10-format files: ours, a bare loop, OpenLTH's.

``python -m bench.cifar_steps --open-lth PATH`` writes a few thousand random images as CIFAR-10
python batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``) to a temporary folder and
times, per step of batch 128 (SGD, momentum 0.9, weight decay 1e-4, random crop and flip on),
for OpenLTH's ``cifar_resnet_20`` and ``cifar_vgg_16``, dense and pruned (global magnitude, 20%
a pruning, ``--prunings`` times: about 21% remaining), three loops interleaved in rotating
order (``bench.steps.interleave``):

- *ours*: the framework's ``train_round`` on its own model, data (read from those files by its
  ``cifar10`` dataset) and recipe, validation and test cut to one image so steps are timed alone
  (as ``python -m bench`` does);
- *bare*: a textbook loop over the same in-memory images: a permutation, ``x[index]``, pad-4
  random crop and flip, normalise, ``torch.optim.SGD`` (fused), on a copy of our model whose
  weights are pruned with ``prune.custom_from_mask`` to the same masks;
- *OpenLTH*: OpenLTH's own ``training.train.train`` loop (its DataLoader over its ``cifar10``
  dataset, reading the same files through torchvision, its optimizer and LambdaLR, its
  ``PrunedModel`` holding the same masks), in a child process with OpenLTH's copy on its path,
  timed by a callback that OpenLTH's loop calls before every step.

All three run on the same fixed thread count (``--threads``, default one per core), so the
ratios compare loops, not thread choices. Every figure is a median over repeats; every ratio the
median of per-repeat ratios. OpenLTH's copy is made and patched as ``bench.openlth_lenet`` does.
The parameter counts of our models and OpenLTH's are printed too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import prune

from bench.data import CIFAR_NORM, cifar_dataset, with_small_eval
from bench.openlth_lenet import (
    DEFAULT_OPEN_LTH,
    Missing,
    apply_fixes,
    copy_open_lth,
    cpu_model,
    find_open_lth,
    machine_slug,
    open_lth_home,
)
from bench.steps import interleave, median, num_threads, paired_ratio
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.loading import load_data
from lottery_core.masks import remaining_percent
from lottery_core.plugins import get_plugins
from lottery_core.resolution import default_threads, resolve
from lottery_core.threads import ThreadRule
from lottery_core.training import train_round

BATCH = 128
VALIDATION = 256  # ours holds these out of the files' training images (OpenLTH: none)
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]

# Run by ``python -c`` in OpenLTH's copy (its packages import from the working directory):
# builds OpenLTH's model, mask and data loader, then answers each line "N" on stdin with the
# seconds per step of N steps of OpenLTH's training loop. Protocol lines start with "@@".
CHILD = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
import torch, torchvision
torch.set_num_threads(cfg["threads"])
cls = torchvision.datasets.CIFAR10  # the random files' md5s as the official ones
cls.train_list = [[n, cfg["md5"][n]] for n, _ in cls.train_list]
cls.test_list = [[n, cfg["md5"][n]] for n, _ in cls.test_list]
cls.meta = {**cls.meta, "md5": cfg["md5"][cls.meta["filename"]]}
from platforms import local, platform
platform._PLATFORM = local.Platform()
from foundations.step import Step
import datasets.registry, models.registry
from pruning.mask import Mask
from pruning.pruned_model import PrunedModel
from training import train
desc = models.registry.get_default_hparams(cfg["model"])
model = models.registry.get(desc.model_hparams)
params = sum(p.numel() for p in model.parameters())
if cfg["masks"]:
    mask = Mask(torch.load(cfg["masks"]))
else:
    mask = Mask.ones_like(model)  # OpenLTH's level 0 trains a PrunedModel of all-ones masks
pruned = PrunedModel(model, mask)
loader = datasets.registry.get(desc.dataset_hparams, train=True)
th = desc.training_hparams
print("@@" + json.dumps({"params": params, "remaining": 100 * float(mask.density),
      "examples": len(loader.dataset), "per_epoch": int(loader.iterations_per_epoch),
      "recipe": f"{th.optimizer_name} lr {th.lr} momentum {th.momentum} "
                f"wd {th.weight_decay} milestones {th.milestone_steps} batch "
                f"{desc.dataset_hparams.batch_size} augment "
                f"{not desc.dataset_hparams.do_not_augment}"}), flush=True)
for line in sys.stdin:
    n = int(line)
    times = []
    def timer(output_location, step, model, optimizer, logger):
        times.append(time.perf_counter())
    train.train(th, pruned, loader, cfg["out"], [timer],
                end_step=Step.from_iteration(n, loader.iterations_per_epoch))
    print("@@" + json.dumps({"seconds_per_step": (times[-1] - times[0]) / n}), flush=True)
"""


# -- the data -------------------------------------------------------------------------------


def write_files(root: Path, images: int) -> dict[str, str]:
    """Random images as CIFAR-10 python batches under ``root/cifar-10-batches-py``; returns
    each file's md5 (torchvision checks them on every load)."""
    cifar_dataset(root, images)
    folder = root / "cifar-10-batches-py"
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in CIFAR_FILES}


@contextmanager
def trusted(md5: dict[str, str]) -> Iterator[None]:
    """torchvision's CIFAR10 taking these files' md5s for the official ones (as the tests'
    ``trust_cifar_files`` does), restored afterwards."""
    cls = torchvision.datasets.CIFAR10
    saved = cls.train_list, cls.test_list, cls.meta
    cls.train_list = [[n, md5[n]] for n, _ in cls.train_list]
    cls.test_list = [[n, md5[n]] for n, _ in cls.test_list]
    cls.meta = {**cls.meta, "md5": md5[cls.meta["filename"]]}
    try:
        yield
    finally:
        cls.train_list, cls.test_list, cls.meta = saved


# -- the three loops ------------------------------------------------------------------------


@dataclass
class Ours:
    """Our model pruned ``prunings`` times (global magnitude, 20%) and a runner of
    ``train_round`` rounds of ``count`` steps."""

    experiment: Experiment
    remaining: float
    threads: int

    @property
    def model(self) -> nn.Module:
        assert self.experiment.model is not None
        return self.experiment.model

    def masks(self) -> dict[str, torch.Tensor]:
        return {
            f"{layer.name}.weight": layer.mask.detach().clone() for layer in self.experiment.layers
        }

    def runner(self, steps: int):
        experiment, rule = self.experiment, ThreadRule(self.threads, adaptive=False)
        base = experiment.settings(0)

        def run(count: int = steps) -> float:
            settings = replace(base, iterations=count, eval_every=count)
            with num_threads(self.threads):
                start = time.perf_counter()
                train_round(self.model, experiment.data, settings, data_seed=0, threads=rule)
                return (time.perf_counter() - start) / count

        return run


def ours(model: str, root: Path, prunings: int, threads: int) -> Ours:
    plugins = get_plugins()
    config = resolve(
        make_config(
            model=model,
            dataset="cifar10",
            data_dir=root,
            download=False,
            validation_size=VALIDATION,
            batch_size=BATCH,
            iterations=100_000,
            eval_every=100_000,
            rounds=prunings + 1,
            scope="global",
            rate=0.2,
            device="cpu",
            seed=0,
            threads=threads,
            thread_rule="fixed",
        ),
        plugins,
    )
    data = with_small_eval(load_data(config, plugins), 1)  # steps timed alone, as bench does
    experiment = Experiment(config, plugins=plugins, data=data)
    state = experiment.start()
    for r in range(1, prunings + 1):
        experiment.prune(state, r)
    return Ours(experiment, remaining_percent(experiment.layers), threads)


def bare_model(source: Ours) -> nn.Module:
    """A fresh instance of our model's class, each ``nn.Conv2d`` / ``nn.Linear`` weight pruned
    with ``prune.custom_from_mask`` to our mask (PyTorch's own pre-hook multiplies it in), then
    our parameters and buffers loaded into it."""
    data = source.experiment.data
    bare = source.experiment.model_spec.build(data.input_shape, data.num_classes)
    ours = dict(source.model.named_modules())
    for name, module in bare.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            mask = cast(torch.Tensor, ours[name].weight_mask)
            prune.custom_from_mask(module, "weight", mask.detach().clone())
    bare.load_state_dict(source.model.state_dict())
    return bare


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The textbook augmentation, image by image: pad, a random 32x32 crop, a coin-flip mirror."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.empty_like(x)
    for i, ((top, left), flip) in enumerate(zip(offsets, flips, strict=True)):
        crop = padded[i, :, top : top + h, left : left + w]
        out[i] = crop.flip(-1) if flip else crop
    return out


def bare_runner(source: Ours, steps: int):
    """The textbook loop (see the module docstring) on ``bare_model(source.model)``."""
    model = bare_model(source)
    data = source.experiment.data
    x, y, n = data.train_x, data.train_y, data.train_x.shape[0]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in CIFAR_NORM)
    generator = torch.Generator().manual_seed(0)

    def run(count: int = steps) -> float:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
        model.train()
        with num_threads(source.threads):
            start = time.perf_counter()
            done = 0
            while done < count:
                order = torch.randperm(n, generator=generator)
                for i in range(min(n // BATCH, count - done)):
                    index = order[i * BATCH : (i + 1) * BATCH]
                    batch = crop_flip(x[index], generator).float().div_(255).sub_(mean).div_(std)
                    loss = F.cross_entropy(model(batch), y[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    done += 1
            return (time.perf_counter() - start) / count

    return run


class OpenLTH:
    """OpenLTH's training loop in a child process (see ``CHILD``), timed ``count`` steps a call."""

    def __init__(
        self,
        tree: Path,
        env: dict[str, str],
        model: str,
        masks: Path | None,
        threads: int,
        md5: dict[str, str],
        out: Path,
        steps: int,
    ):
        self.steps = steps
        cfg = {
            "model": model,
            "masks": str(masks) if masks else None,
            "threads": threads,
            "md5": md5,
            "out": str(out),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg)],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._answer()

    def _answer(self) -> dict:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"OpenLTH's child exited ({self.process.wait()}) without answering")

    def __call__(self, count: int | None = None) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{count or self.steps}\n")
        self.process.stdin.flush()
        return float(self._answer()["seconds_per_step"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


# -- the run --------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    remaining: float
    openlth_remaining: float
    ours_ms: float
    bare_ms: float
    openlth_ms: float
    ours_over_bare: float
    ours_over_openlth: float


def format_rows(rows: Sequence[Row]) -> str:
    head = (
        "model",
        "remain%",
        "OLTH remain%",
        "ours ms",
        "bare ms",
        "OLTH ms",
        "ours/bare",
        "ours/OLTH",
    )
    body = [
        (
            r.model,
            f"{r.remaining:.1f}",
            f"{r.openlth_remaining:.1f}",
            f"{r.ours_ms:.1f}",
            f"{r.bare_ms:.1f}",
            f"{r.openlth_ms:.1f}",
            f"{r.ours_over_bare:.2f}x",
            f"{r.ours_over_openlth:.2f}x",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = [" ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += [" ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cifar_steps", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--open-lth",
        type=Path,
        default=Path(DEFAULT_OPEN_LTH),
        help="OpenLTH checkout or bare git repository (default: $OPEN_LTH, else "
        "/tmp/open_lth); never written, a copy is patched",
    )
    parser.add_argument(
        "--models",
        default="cifar_resnet_20,cifar_vgg_16",
        help="comma-separated, names both tools know",
    )
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument(
        "--prunings",
        type=int,
        default=7,
        help="global 20%% prunings of the pruned level (7: 21%% remaining)",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=4096,
        help="images in the written training batches (ours holds 256 out)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="intra-op threads of all three loops (default: one per core)",
    )
    parser.add_argument("--save", type=Path, default=None, help="also write the output here")
    args = parser.parse_args(argv)
    if min(args.steps, args.repeats, args.threads) < 1 or args.prunings < 0:
        parser.error("--steps, --repeats and --threads must be >= 1, --prunings >= 0")
    if (args.images - VALIDATION) // BATCH < args.steps:
        parser.error(
            f"--images must leave {args.steps} full batches of {BATCH} after the "
            f"{VALIDATION} held out"
        )
    return args


def run(args: argparse.Namespace, work: Path) -> str:
    tree = work / "open_lth"
    commit = copy_open_lth(args.open_lth, tree)
    fixes = apply_fixes(tree)
    data_root = work / "cifar"
    md5 = write_files(data_root, args.images)
    env = open_lth_home(work / "home", {"cifar10": data_root})
    lines = [
        f"CIFAR-10-format step time, batch {BATCH}, SGD momentum 0.9 wd 1e-4, crop+flip; "
        f"{args.repeats} interleaved repeats of {args.steps} steps; {args.threads} thread(s) "
        f"for all three loops; {args.images} random images written as CIFAR-10 python batches "
        f"to {data_root}, read by ours (cifar10, {VALIDATION} held out) and OpenLTH "
        f"{commit[:7]} (torchvision CIFAR10)",
        "OpenLTH compatibility fixes applied to its temporary copy:",
        *(f"  {line}" for line in fixes),
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
    rows: list[Row] = []
    counts: list[str] = []
    for model in args.models.split(","):
        for prunings in sorted({0, args.prunings}):
            with trusted(md5):
                mine = ours(model, data_root, prunings, args.threads)
            masks = None
            if prunings:
                masks = work / f"{model}-masks.pt"
                torch.save(mine.masks(), masks)
            theirs = OpenLTH(tree, env, model, masks, args.threads, md5, work / "out", args.steps)
            try:
                if prunings == 0:
                    ours_params = sum(p.numel() for p in mine.model.parameters())
                    counts.append(
                        f"parameters of {model}: ours {ours_params:,}, OpenLTH's "
                        f"{theirs.info['params']:,}"
                    )
                    lines.append(
                        f"OpenLTH's {model} recipe: {theirs.info['recipe']}; "
                        f"{theirs.info['examples']} training images"
                    )
                print(
                    f"  {model}, {mine.remaining:.1f}% remaining ...", file=sys.stderr, flush=True
                )
                runners = {
                    "ours": mine.runner(args.steps),
                    "bare": bare_runner(mine, args.steps),
                    "openlth": theirs,
                }
                times = interleave(runners, args.repeats, [], probe_steps=2)
            finally:
                theirs.close()
            rows.append(
                Row(
                    model,
                    mine.remaining,
                    theirs.info["remaining"],
                    1e3 * median(times["ours"]),
                    1e3 * median(times["bare"]),
                    1e3 * median(times["openlth"]),
                    paired_ratio(times["ours"], times["bare"]),
                    paired_ratio(times["ours"], times["openlth"]),
                )
            )
            print("  " + format_rows(rows[-1:]).splitlines()[1], file=sys.stderr, flush=True)
    lines += [
        format_rows(rows),
        "ms: median milliseconds per step over the repeats; ratios: medians of per-repeat ratios "
        "(ours/bare: our step over the bare loop's; ours/OLTH: over OpenLTH's step)",
        *counts,
        f"machine: {cpu_model()} ({machine_slug(cpu_model())}), {os.cpu_count()} cores, torch "
        f"{torch.__version__}, load average at the end {os.getloadavg()[0]:.2f}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        find_open_lth(args.open_lth)
    except Missing as missing:
        print(f"Error: {missing}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cifar-steps-") as folder:
        text = run(args, Path(folder))
    print(text)
    if args.save is not None:
        args.save.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
