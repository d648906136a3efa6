"""What one ONNX Runtime forward pass costs when calls come one at a time with gaps between
them (a lone caller: Predict at concurrency 1), against back to back (how "raw batch 1" is
measured), on the same thread, in the same run (docs/PREDICT.md cites it).

    .venv/bin/python bench/runtime_gaps.py [--calls 300] [--gap-ms 2] [--image-size 64]

Prints wall and thread CPU per call for: back to back; with a sleep of --gap-ms between
calls; two threads taking turns (the server's two runners at concurrency 1). The ratio of
each to back to back is the cost of a cold start (caches, branch predictors, frequency)
that no server around the model can avoid.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from graft.backbones import DEFAULT_BACKBONE, create_model
from graft.predict.exported import OnnxRuntime
from graft.predict.runtimes import verification_batch


def _cpu() -> float:
    return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = create_model(DEFAULT_BACKBONE, 10, pretrained=False).eval()
    runtime = OnnxRuntime(model, verification_batch(args.image_size, 2), threads=1)
    x = verification_batch(args.image_size, 1)
    n, gap = args.calls, args.gap_ms / 1000
    for _ in range(20):
        runtime(x)

    c0, t0 = _cpu(), time.perf_counter()
    for _ in range(n):
        runtime(x)
    hot_wall, hot_cpu = (time.perf_counter() - t0) / n, (_cpu() - c0) / n

    wall, c0 = 0.0, _cpu()
    for _ in range(n):
        t0 = time.perf_counter()
        runtime(x)
        wall += time.perf_counter() - t0
        time.sleep(gap)
    gap_wall, gap_cpu = wall / n, (_cpu() - c0 - n * 0.0) / n  # sleep costs no CPU

    turns = threading.Condition()
    pending: list[threading.Event | None] = []
    cpu: dict[int, tuple[float, int]] = {}

    def runner(i: int) -> None:
        torch.set_num_threads(1)
        c0, k = _cpu(), 0
        while True:
            with turns:
                while not pending:
                    turns.wait()
                item = pending.pop()
            if item is None:
                break
            runtime(x)
            k += 1
            item.set()
        cpu[i] = (_cpu() - c0, k)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for _ in range(n):
        done = threading.Event()
        with turns:
            pending.append(done)
            turns.notify()
        done.wait()
        time.sleep(gap)
    with turns:
        pending.extend([None, None])
        turns.notify_all()
    for t in threads:
        t.join()
    two_cpu = sum(c for c, _ in cpu.values()) / n

    print(f"| how | wall ms/call | thread CPU ms/call | CPU vs back to back |\n{'|---' * 4}|")
    print(f"| back to back | {hot_wall * 1e3:.2f} | {hot_cpu * 1e3:.2f} | 1.00 |")
    print(
        f"| {args.gap_ms:g} ms gaps, one thread | {gap_wall * 1e3:.2f} | {gap_cpu * 1e3:.2f} "
        f"| {gap_cpu / hot_cpu:.2f} |"
    )
    print(
        f"| {args.gap_ms:g} ms gaps, two threads in turn | | {two_cpu * 1e3:.2f} | "
        f"{two_cpu / hot_cpu:.2f} |"
    )


if __name__ == "__main__":
    main()
