"""Why two training processes on one CPU must split its cores: the step time of DenseNet-121
when one process trains alone, and when two train side by side with every core each, with every
core each but OpenMP's idle threads sleeping (OMP_WAIT_POLICY=PASSIVE), and with the cores split
(threads = cores / 2 each: what the workflow's `threads` setting does with two runs side by side).

    python bench/bench_threads.py                  # ~2 minutes on 2 CPU cores

If the slow-down of "every core each" came only from OpenMP threads spinning while they wait
for siblings the OS has descheduled, the passive wait policy would remove most of it; the split
removes it by giving each process cores of its own. Each line gives the median seconds per
training step (64 px, batch 16, bf16 + channels-last) and the slow-down against the process
alone. The last line is ratio=<median step of 'every core each' / median step of 'cores split'>.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64, help="input side in px")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one training process
    return parser


def worker(args):
    """Time `steps` training steps after two warm-up steps; print the step times as JSON."""
    import torch

    sys.path.insert(0, str(ROOT))
    import transforms
    from kit import loop, models, runtime

    torch.manual_seed(0)
    device = torch.device("cpu")
    model = models.build_model(2).to(device, memory_format=torch.channels_last)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **loop.fast_kernels(device))
    draw = transforms.RandTaild(keys="image", domain="efi", image_size=args.image_size, train=True)
    draw.set_random_state(seed=0)
    batch = (torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8),
             torch.stack([draw.randomize() for _ in range(args.batch_size)]), torch.randint(0, 2, (args.batch_size,)))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10_000)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    times = []
    for step in range(args.steps + 2):
        start = time.perf_counter()
        loop.run_epoch(model, [batch], criterion, device, task="multiclass",
                       amp_dtype=runtime.autocast_dtype(device, True), channels_last=True, optimizer=optimizer,
                       scheduler=scheduler, scaler=scaler, log_every=1)
        if step >= 2:
            times.append(time.perf_counter() - start)
    print(json.dumps({"threads": torch.get_num_threads(), "times": times}))


def side_by_side(args, processes, env):
    """Start `processes` workers at once with `env`; their step times, all together."""
    command = [sys.executable, __file__, "--worker", "--image-size", str(args.image_size), "--batch-size",
               str(args.batch_size), "--steps", str(args.steps)]
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    running = [subprocess.Popen(command, env={**clean, **env}, stdout=subprocess.PIPE, text=True)
               for _ in range(processes)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in running]
    return [t for r in results for t in r["times"]], results[0]["threads"]


def main(args):
    if args.worker:
        return worker(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base = {"OMP_NUM_THREADS": str(cores)}  # OpenMP's default wait policy, as a plain `python` run has
    configs = [
        ("one process alone, every core", 1, base),
        ("two processes, every core each", 2, base),
        ("two processes, every core each, OMP_WAIT_POLICY=PASSIVE", 2, {**base, "OMP_WAIT_POLICY": "PASSIVE"}),
        ("two processes, cores split", 2, {**base, "OMP_NUM_THREADS": str(max(1, cores // 2))}),
    ]
    print(f"DenseNet-121 training step, batch {args.batch_size} x {args.image_size} px, bf16 + channels-last, "
          f"{cores} cores; median s per step of each process")
    medians = {}
    for name, processes, env in configs:
        times, threads = side_by_side(args, processes, env)
        medians[name] = statistics.median(times)
        alone = medians[configs[0][0]]
        print(f"{name:58s} {threads} thread(s)  {medians[name]:8.3f} s/step  x{medians[name] / alone:6.1f}")
    print(f"ratio={medians[configs[1][0]] / medians[configs[3][0]]:.1f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
