"""Where a script runs: device and precision, seeds and RNG state, and its place in a torchrun job.

One process on a CPU or a GPU, or one of N processes started by ``torchrun``: torchrun sets
WORLD_SIZE, RANK and LOCAL_RANK, and ``init_distributed`` joins the job (NCCL on GPUs, one GPU
per process; gloo on CPUs). Rank 0 alone prints (``log``) and writes files.
"""
import dataclasses
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from . import cli


_THREADS_CHOSEN = []


def set_cpu_threads() -> int:
    """Threads for this process's CPU tensor work, chosen once and printed once: OMP_NUM_THREADS
    when it is set (torchrun sets 1 per process unless told otherwise), else the cores this process
    may use divided among the processes that share them (cli.processes_per_machine). Processes that
    each take every core stall one another: OpenMP threads spin waiting for siblings the OS has
    descheduled (bench/bench_threads.py measures it)."""
    if not _THREADS_CHOSEN:
        cores, sharing = cli.available_cores(), cli.processes_per_machine()
        if os.environ.get("OMP_NUM_THREADS"):
            threads, why = torch.get_num_threads(), "OMP_NUM_THREADS"
        else:
            threads, why = max(1, cores // sharing), f"{cores} cores / {sharing} process(es)"
            torch.set_num_threads(threads)
        _THREADS_CHOSEN.append(threads)
        log(f"CPU threads: {threads} ({why})")
    return _THREADS_CHOSEN[0]


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU is an error, not a silent CPU run.
    Also sets this process's CPU threads (set_cpu_threads)."""
    set_cpu_threads()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is visible; use --device cpu or auto")
    return device


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the hardware has it (CPUs with AVX-512 BF16/AMX, Ampere+ GPUs), fp16 on older
    GPUs, none (fp32) on CPUs without native bf16."""
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None  # emulated bf16 on an older CPU is slower than fp32
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch; MONAI's random transforms are seeded by monai.data.DataLoader."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states as plain values/tensors, so a checkpoint stays loadable with weights_only=True."""
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores what rng_state() saved (resume: dropout and every other draw continue as if never stopped)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclasses.dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun job; a plain `python` run is rank 0 of 1."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0, or a plain `python` run: the one process that prints and writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def log(*values) -> None:
    """print() on the main process only: under torchrun every rank runs the same script."""
    if is_main_process():
        print(*values, flush=True)


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """(Distributed, device) of this process; joins the torchrun job on the first call.

    torchrun sets WORLD_SIZE, RANK and LOCAL_RANK: NCCL on GPUs (one GPU per process,
    cuda:LOCAL_RANK), gloo on CPUs. Without them there is no process group: one process.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank), device


def gather(obj, info: Distributed) -> list:
    """`obj` of every process, in rank order (a one-element list in a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


