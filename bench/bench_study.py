"""Wall time of the demo study run one job at a time (JOBS=1) and two side by side (JOBS=2, the
cores split between them), from the same generated data, in one run of this script.

    python bench/bench_study.py                     # ~8 minutes on 2 CPU cores
    python bench/bench_study.py --targets shenzhen  # a smaller study

Each study runs into a fresh folder under a temporary directory with study.sh's demo defaults
(64 px; add --image-size/--epochs-* to change them), offline without ImageNet weights (4
pretrained models and 2 arms per target). JOBS=1 runs first, then JOBS=2; each generates the same
seeded demo data and does the same work. The last line is ratio=<JOBS=1 seconds / JOBS=2 seconds>. (The numbers of the two studies differ in the
last digits, because a process's CPU threads change the order of floating-point sums; at equal
THREADS they are identical, which tests/test_study.py checks.)
"""
import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="JOBS of the parallel study")
    parser.add_argument("--targets", type=str, default=None, help="TARGETS (default: the paper's five)")
    parser.add_argument("--image-size", type=int, default=None, help="IMAGE_SIZE (default: the demo's 64)")
    parser.add_argument("--epochs-pretrain", type=int, default=None, help="EPOCHS_PRETRAIN (default: the demo's)")
    parser.add_argument("--epochs-finetune", type=int, default=None, help="EPOCHS_FINETUNE (default: the demo's)")
    return parser


def study(out: Path, settings: dict) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "IMAGENET_WEIGHTS", "OMP_NUM_THREADS", "THREADS")}
    env.update({"OUT": str(out), "TORCH_HOME": str(out.parent / "no_torch_home"), **settings})
    start = time.perf_counter()
    result = subprocess.run(["bash", str(ROOT / "study.sh")], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"study.sh failed ({settings}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def main(args):
    settings = {"DEVICE": "cpu"}
    for name, value in (("TARGETS", args.targets), ("IMAGE_SIZE", args.image_size),
                        ("EPOCHS_PRETRAIN", args.epochs_pretrain), ("EPOCHS_FINETUNE", args.epochs_finetune)):
        if value is not None:
            settings[name] = str(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "jobs1", Path(tmp) / f"jobs{args.jobs}"
        seconds_one = study(one, {**settings, "JOBS": "1"})
        seconds_many = study(many, {**settings, "JOBS": str(args.jobs)})
        runs = len(list(one.glob("finetune/*/*/*/summary.json"))) + len(list(one.glob("pretrain/*/*/summary.json")))
    print(f"demo study ({runs} training runs, {settings}), {cores} cores: JOBS=1 {seconds_one:.0f} s, "
          f"JOBS={args.jobs} {seconds_many:.0f} s")
    print(f"ratio={seconds_one / seconds_many:.2f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
