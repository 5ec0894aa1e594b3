"""One GPU per job when the study runs several at once on one machine:

    python -m kit.slots --gpus 0,1,2,3 -- python finetune_target.py ...

waits for a GPU of the list that no other job holds (an exclusive file lock per GPU, released by the
kernel when the job ends however it ends), runs the command with CUDA_VISIBLE_DEVICES set to it, and
exits with the command's exit status. A command started through torchrun takes every GPU of the list.
The Snakefile puts this in front of the training and evaluation commands when the `gpus` setting is
given; Snakemake's `--resources gpu=N` keeps at most N such jobs running, so none waits long.
"""
import argparse
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def take(gpus: list, *, every: bool, folder: Path, poll: float = 1.0) -> tuple[list, list]:
    """(the GPUs taken, their open lock files): all of `gpus` (waiting for each in turn) or the first free one."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        held, handles = [], []
        for gpu in gpus:
            handle = open(folder / f"gpu{gpu}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if every else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.close()
                continue
            held.append(gpu)
            handles.append(handle)
            if not every:
                return held, handles
        if held:
            return held, handles
        time.sleep(poll)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=str, required=True, help="GPU ids to share, e.g. 0,1,2,3")
    parser.add_argument("--lock-folder", type=Path, default=Path(tempfile.gettempdir()) / "study-gpu-slots",
                        help="where the per-GPU lock files live (one folder per machine)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run (put it after --)")
    gpus = [g for g in args.gpus.split(",") if g.strip()]
    if not gpus or not all(g.strip().isdigit() for g in gpus):
        parser.error(f"--gpus {args.gpus!r}: expected GPU ids such as 0,1,2,3")
    every = any(Path(word).name == "torchrun" for word in command)
    held, _handles = take(gpus, every=every, folder=args.lock_folder)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(held)}
    return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
