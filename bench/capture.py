"""``python -m bench.capture``: does capturing the batched step (``torch.compile``) pay here,
and is it exact?

Issue 30 asks for the step "captured once (CUDA graphs or ``torch.compile``) where it pays;
measured on and off". CUDA graphs need a GPU; this measures ``torch.compile`` on whatever
device there is. The step is the batched LeNet-300-100 step of ``batched``'s ``bmm`` forward
written in plain torch ops, so the compiler can take all of it: per layer
``baddbmm(bias, h, (weight * mask)^T)`` over N members (about 21% of each layer's weights kept),
ReLU, the members' summed mean cross-entropy, backward, fused Adam over the stacked tensors;
batches gathered from uint8 MNIST-shaped data in memory and normalised per batch. Eager and
compiled run from the same weights and batches, interleaved, 3 repeats; per N it prints the
median step of each, their ratio, and how far the parameters are apart after one step and
after all of them. The framework would capture the step only if it were at least 10% faster
*and* exact.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .report import cpu_name

BATCH = 60
SHAPES = ((300, 784), (100, 300), (10, 100))
TRAIN = 55_000
KEPT = 0.21

Step = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def problem(members: int, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                          torch.Tensor, torch.Tensor]:  # fmt: skip
    """Starting parameters (weight, bias per layer, stacked), masks and uint8 data."""
    g = torch.Generator().manual_seed(0)
    params, masks = [], []
    for out, inp in SHAPES:
        params += [torch.randn(members, out, inp, generator=g) * 0.05, torch.zeros(members, out)]
        masks.append((torch.rand(members, out, inp, generator=g) < KEPT).float().to(device))
    x = torch.randint(0, 256, (TRAIN, 784), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (TRAIN,), generator=g)
    return [p.to(device) for p in params], masks, x.to(device), y.to(device)


def loss_of(masks: list[torch.Tensor], members: int) -> Step:
    def loss(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x
        for k, mask in enumerate(masks):
            weight, bias = params[2 * k], params[2 * k + 1]
            h = torch.baddbmm(bias.unsqueeze(1), h, (weight * mask).transpose(1, 2))
            if k < len(masks) - 1:
                h = torch.relu(h)
        per_example = F.cross_entropy(h.reshape(members * BATCH, -1), y, reduction="none")
        return per_example.sum() / BATCH

    return loss


def train(step: Step, start: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
          members: int, steps: int) -> tuple[float, list[torch.Tensor]]:  # fmt: skip
    """Median seconds per step (after 3), and the parameters after ``steps``."""
    params = [p.clone().requires_grad_(True) for p in start]
    optimizer = torch.optim.Adam(params, lr=1.2e-3, fused=True)
    order = torch.Generator(device=x.device).manual_seed(1)
    times = []
    for _ in range(steps):
        index = torch.randint(0, TRAIN, (members * BATCH,), generator=order, device=x.device)
        batch = ((x[index].float() / 255 - 0.1307) / 0.3081).view(members, BATCH, -1)
        sync(x.device)
        started = time.perf_counter()
        loss = step(params, batch, y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(x.device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:] or times), [p.detach() for p in params]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def apart(one: list[torch.Tensor], two: list[torch.Tensor]) -> str:
    same = sum(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    most = max(float((a - b).abs().max()) for a, b in zip(one, two, strict=True))
    return f"{same}/{len(one)} tensors bit-identical, max |diff| {most:.2g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,8,64", help="N values, comma-separated")
    parser.add_argument("--member-steps", type=int, default=2000,
                        help="member-steps a timed round takes (at least 20 steps)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started, load = time.perf_counter(), os.getloadavg()[0]
    print(f"torch.compile of the batched LeNet-300-100 step ({KEPT:.0%} kept, batch {BATCH}, "
          f"fused Adam) on {device}, {args.threads} thread(s); medians of {args.repeats} "
          "interleaved repeats")  # fmt: skip
    for members in (int(n) for n in args.members.split(",")):
        start, masks, x, y = problem(members, device)
        eager = loss_of(masks, members)
        compiled = torch.compile(eager)
        began = time.perf_counter()
        _, compiled_one = train(compiled, start, x, y, members, 1)  # the compilation
        compile_s = time.perf_counter() - began
        _, eager_one = train(eager, start, x, y, members, 1)
        steps = max(20, args.member_steps // members)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        ends: dict[str, list[torch.Tensor]] = {}
        for _ in range(args.repeats):
            for name, step in (("eager", eager), ("compiled", compiled)):
                seconds, ends[name] = train(step, start, x, y, members, steps)
                times[name].append(seconds)
        e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
        print(f"N={members:>3}: eager {e * 1e3:7.2f} ms/step, compiled {c * 1e3:7.2f} ms/step, "
              f"eager/compiled {e / c:.2f}x; first call {compile_s:.1f} s; after 1 step "
              f"{apart(eager_one, compiled_one)}; after {steps} steps "
              f"{apart(ends['eager'], ends['compiled'])}", flush=True)  # fmt: skip
    where = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    print(f"{where}, {os.cpu_count()} cores; torch {torch.__version__}; load average "
          f"{load:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
