"""What the scripts share on the command line: their parser (--help opens with the commands to
paste), argument types, the runtime flags, and the handler that turns bad input into one clear line.

Light on purpose (no torch, no MONAI): every script builds its parser and parses before it
imports the heavy modules, so ``--help`` and a mistyped flag answer at once.
"""
import argparse
import contextlib
import math
import os
import re
import sys
from pathlib import Path

from . import locks


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows the script's docstring as written and every flag's default (unless the flag
    is required, has no default, or its help already names one)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.required or action.default in (None, argparse.SUPPRESS) or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


COMMAND_STARTS = ("python ", "torchrun ")  # a docstring line starting so (indented) is a command to paste


def split_commands(doc: str) -> tuple[str, str]:
    """(the commands to paste, the rest) of a script's docstring. A command is a line starting with
    `python ` or `torchrun `, with the lines its trailing backslashes continue it onto; its label is the
    `#` comments and the one less indented line (e.g. `One GPU, 224 px:`) right above it, shown as a
    comment. The rest keeps every other line, in order."""
    lines = (doc or "").strip("\n").splitlines()
    commands, rest = [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(COMMAND_STARTS):
            rest.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        labels = []
        while rest and rest[-1].strip().startswith("#"):
            labels.insert(0, rest.pop().strip())
        if rest and rest[-1].strip() and len(rest[-1]) - len(rest[-1].lstrip()) < indent:
            labels.insert(0, "# " + rest.pop().strip().removesuffix(":"))
        block = [line]
        while block[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            block.append(lines[i])
        commands += labels + [text[indent:] if text[:indent].isspace() else text.strip() for text in block]
        i += 1
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in rest)).strip("\n")
    return "\n".join(commands), text


class Parser(argparse.ArgumentParser):
    """The scripts' ArgumentParser: --help opens with the commands to paste from the script's docstring
    (split_commands), then the usage, the rest of the docstring and every flag with its default."""

    def __init__(self, doc: str, **kwargs):
        self.commands, description = split_commands(doc)
        super().__init__(description=description, formatter_class=HelpFormatter, **kwargs)

    def format_help(self) -> str:
        text = super().format_help()
        return f"{self.commands}\n\n{text}" if self.commands else text


# --------------------------------------------------------------------------- argument types

def number(kind: type, *, at_least=None, above=None, at_most=None, below=None, unit: str = ""):
    """An argparse type: a finite `kind` (int or float) within the given bounds; outside them,
    argparse prints e.g. `argument --epochs: must be >= 1, got 0`."""
    bounds = [(at_least, ">=", lambda v, b: v >= b), (above, ">", lambda v, b: v > b),
              (at_most, "<=", lambda v, b: v <= b), (below, "<", lambda v, b: v < b)]
    wanted = " and ".join(f"{sign} {bound}{unit}" for bound, sign, _ in bounds if bound is not None)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value) or not all(ok(value, bound) for bound, _, ok in bounds if bound is not None):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    return parse


positive_int = number(int, at_least=1)
non_negative_int = number(int, at_least=0)
positive_float = number(float, above=0)
non_negative_float = number(float, at_least=0)
fraction = number(float, above=0, at_most=1)  # a share of a split
dropout_rate = number(float, at_least=0, below=1)
ci_level = number(float, above=0, below=1)  # confidence level of an interval
# DenseNet-121's stem and four poolings halve 5 times (>= 32 px); 1024 px already takes ~20x the paper's 224 px in
# memory and time per image, and a typo such as 100000 would try tens of GB per image
image_size = number(int, at_least=32, at_most=1024, unit=" px")
seed = number(int, at_least=0, at_most=2**32 - 1)  # what NumPy and torch's generators take
epochs = number(int, at_least=1, at_most=10_000)
train_batch_size = number(int, at_least=2, at_most=4096)  # BatchNorm cannot normalise a batch of one
demo_scale = number(float, above=0, at_most=100)  # tools/make_demo_data.py --scale


def device(text: str) -> str:
    """argparse type for --device: auto | cpu | cuda | cuda:N | mps (checked before torch is imported)."""
    kind, _, index = text.partition(":")
    if text == "auto" or (kind in ("cpu", "cuda", "mps") and (not index or (kind == "cuda" and index.isdigit()))):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")


def existing_file(text: str) -> str:
    """argparse type: a file that exists (checked before any work starts), as an absolute path, so
    that a run records where its inputs were whatever folder it was started from."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return str(Path(text).resolve())


def init_source(text: str) -> str:
    """argparse type for --init: random | imagenet | an existing checkpoint file."""
    return text if text in ("random", "imagenet") else existing_file(text)


# --------------------------------------------------------------------------- runtime flags

def available_cores() -> int:
    """The cores this process may run on (its affinity mask; cgroup CPU limits are not read)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def processes_per_machine() -> int:
    """The training/evaluation processes that share this machine's cores: the ones torchrun starts
    here (LOCAL_WORLD_SIZE). The study workflow sets each job's threads itself (OMP_NUM_THREADS)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def default_workers() -> int:
    """--workers default: the cores per training process (torchrun starts LOCAL_WORLD_SIZE on this
    machine), at most 8 (each worker holds its own MONAI and
    transforms). Decoding a full-size image takes ~10 ms of a core; a fully cached set loads in one
    thread instead."""
    return max(1, min(8, available_cores() // processes_per_machine()))


def add_run_folder_args(parser: argparse.ArgumentParser, *, example: str) -> None:
    """The `run folder` flags of the training scripts: where the run goes and whether it resumes there."""
    group = parser.add_argument_group("run folder")
    group.add_argument("--out", type=str, required=True, help=f"run folder, e.g. {example}")
    group.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="continue from OUT/last.pt when it holds this very run; --no-resume starts over in OUT")
    group.add_argument("--restart-if-changed", action=argparse.BooleanOptionalAction, default=False,
                       help="when OUT/last.pt holds another run (other settings or data), start over in OUT, saying "
                            "what changed, instead of refusing (what the study workflow does after a setting changed)")
    group.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False,
                       help="decode every train/val image first and leave out those that cannot be read (listed in "
                            "OUT/skipped.csv); default: stop at the first")


def add_runtime_args(parser: argparse.ArgumentParser, *, training: bool) -> None:
    """The `runtime` flags: where and how fast a script runs, never what it computes. Training
    scripts also get --compile, --log-every and --sync-bn."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", type=device, default="auto",
                       help="auto | cpu | cuda | cuda:N (under torchrun: one GPU per process, cuda:LOCAL_RANK)")
    group.add_argument("--workers", type=non_negative_int, default=default_workers(),
                       help="image-decoding processes (0 = in the main process; default: the cores per "
                            "process, at most 8); a set read wholly from the preprocessing cache loads in one "
                            "thread instead")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                       help="bf16 autocast (fp16 on GPUs without bf16; off on CPUs without native bf16)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels-last memory format (faster convolutions on CPUs and tensor cores)")
    if not training:
        return
    group.add_argument("--imagenet-weights", type=existing_file, default=None,
                       help="torchvision's densenet121-a639ec97.pth for --init imagenet (default: the torch hub cache, "
                            "else a download); where the file lies, not what the run computes")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                       help="torch.compile the model (minutes of compilation; pays off on long GPU runs)")
    group.add_argument("--log-every", type=positive_int, default=50,
                       help="steps between loss checks (a NaN stops the run) and progress-bar updates; the "
                            "host waits for the device only then")
    group.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                       help="under torchrun on GPUs: BatchNorm statistics over the global batch")


# --------------------------------------------------------------------------- errors

def one_line(err: BaseException) -> str:
    """An error as one line: an OS error as `<file>: <reason>`, any other message with its line
    breaks folded (pandas splits a CSV parse error over two lines)."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror.lower()}" if err.filename else err.strerror.lower()
    message = str(err)
    if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the original's last line
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(message.split())


# what every script (and the study workflow) says when a Ctrl-C stops it
INTERRUPTED = ("interrupted (Ctrl-C). Every file is written to a temporary name and renamed, so nothing is "
               "half-written; run the same command again to continue")


@contextlib.contextmanager
def user_errors():
    """Turns the errors that mean 'bad input or a bad disk' into one line instead of a traceback:
    ValueError and its kin (a file that cannot be read, a checkpoint of the wrong kind), OS errors
    (a missing file, a full disk, a read-only folder), a folder another process is writing, and
    Ctrl-C. STUDY_DEBUG=1 shows the traceback anyway."""
    try:
        yield
    except KeyboardInterrupt:
        if os.environ.get("STUDY_DEBUG"):
            raise
        print(INTERRUPTED, file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except (ValueError, OSError, locks.FolderInUse) as err:
        if os.environ.get("STUDY_DEBUG"):
            raise
        raise SystemExit(f"error: {one_line(err)}") from None
