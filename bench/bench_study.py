"""Wall time of the demo study run one job at a time and several side by side (each with the cores split
among them), from the same generated data, in one run of this script.

    python bench/bench_study.py                                # ~10 minutes on 2 CPU cores
    python bench/bench_study.py --targets shenzhen             # a smaller study

Each study runs the workflow (`snakemake`, config/demo.yaml) into a fresh folder under a temporary
directory, offline without ImageNet weights (4 pretrained models and 2 arms per target): first with
`--cores 1`, then with `--cores N --config threads=1`. Both generate the same seeded demo data and do
the same work with one thread per run, so their tables are equal (tests/test_study.py checks it). The
last line is ratio=<seconds with one job / seconds with N side by side>.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="jobs side by side in the parallel study (--cores)")
    parser.add_argument("--targets", type=str, nargs="+", default=None, help="targets (default: the paper's five)")
    parser.add_argument("--image-size", type=int, default=None, help="image_size (default: the demo's 64)")
    parser.add_argument("--epochs-pretrain", type=int, default=None, help="epochs_pretrain (default: the demo's)")
    parser.add_argument("--epochs-finetune", type=int, default=None, help="epochs_finetune (default: the demo's)")
    return parser


def study(out: Path, cores: int, settings: dict) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["TORCH_HOME"] = str(out.parent / "no_torch_home")
    config = [f"{key}={value}" for key, value in {"out": out, "threads": 1, **settings}.items()]
    command = [str(Path(sys.executable).parent / "snakemake"), "--cores", str(cores), "--config", *config]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the study failed ({settings}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def main(args):
    settings = {"device": "cpu"}
    for name, value in (("targets", f"[{','.join(args.targets)}]" if args.targets else None),
                        ("image_size", args.image_size), ("epochs_pretrain", args.epochs_pretrain),
                        ("epochs_finetune", args.epochs_finetune)):
        if value is not None:
            settings[name] = value
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "cores1", Path(tmp) / f"cores{args.jobs}"
        seconds_one = study(one, 1, settings)
        seconds_many = study(many, args.jobs, settings)
        runs = len(list(one.glob("finetune/*/*/*/summary.json"))) + len(list(one.glob("pretrain/*/*/summary.json")))
    print(f"demo study ({runs} training runs, {settings}, one thread per run), {cores} cores: one job at a time "
          f"{seconds_one:.0f} s, {args.jobs} side by side {seconds_many:.0f} s")
    print(f"ratio={seconds_one / seconds_many:.2f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
