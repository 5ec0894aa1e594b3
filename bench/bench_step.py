"""Training images/s of the kit's loop (kit/loop.py run_epoch) vs a bare PyTorch loop (augment +
normalise the uint8 batch with transforms.apply_tail, forward, loss, backward, AdamW step,
zero_grad(set_to_none=True)) on the same DenseNet-121, batch and precision, from batches
already in memory, in the same run.

    python bench/bench_step.py                       # ~2 minutes on 2 CPU cores
    python bench/bench_step.py --device cuda --image-size 224 --batch-size 64

The two loops run back to back in each round, in alternating order, after warm-up steps; the
ratio is the median of the per-round ratios (other load on the machine hits both alike).
Prints the figures; the last line is ratio=<kit loop images/s / bare images/s> (target >= 0.95:
the kit's loop adds at most 5 %).
bench/bench_precision.py compares bf16 autocast + channels-last with fp32 the same way.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import transforms  # noqa: E402
from kit import loop, models, runtime  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64, help="input side in px")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and loop")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, alternating between the loops")
    parser.add_argument("--device", type=str, default="cpu", help="cpu | cuda")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last memory format")
    return parser


class Setup:
    """One model, optimiser and in-memory batches, shared by the loops being compared."""

    def __init__(self, *, image_size, batch_size, steps, device):
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.model = models.build_model(2, hidden_dim=512, dropout=0.5).to(self.device)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=10_000)
        # what data.ImageDataset yields: uint8 pixels, each image's augmentation (fundus: flips,
        # rotation, jitter) as 8 numbers (transforms.RandTaild), targets
        draw = transforms.RandTaild(keys="image", domain="efi", image_size=image_size, train=True)
        draw.set_random_state(seed=0)
        self.batches = [(torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8),
                         torch.stack([draw.randomize() for _ in range(batch_size)]),
                         torch.randint(0, 2, (batch_size,))) for _ in range(steps)]
        self.images = batch_size * steps

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def bare(self, *, amp_dtype, channels_last):
        """The minimal training loop: what the kit's loop is measured against."""
        self.model.train()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for images, tails, targets in self.batches:
            # the augmentation's pixel work, as in the kit's loop: it runs on the device in any loop
            images = transforms.apply_tail(images.to(self.device, non_blocking=True), tails,
                                           memory_format=memory_format)
            targets = targets.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                logits = self.model(images)
            loss = self.criterion(logits.float(), targets)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def kit_loop(self, *, amp_dtype, channels_last):
        scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        loop.run_epoch(self.model, self.batches, self.criterion, self.device, task="multiclass",
                          amp_dtype=amp_dtype, channels_last=channels_last, optimizer=self.optimizer,
                          scheduler=self.scheduler, scaler=scaler, desc="bench")

    def images_per_second(self, loop, *, amp_dtype, channels_last):
        self.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.sync()
        start = time.perf_counter()
        loop(amp_dtype=amp_dtype, channels_last=channels_last)
        self.sync()
        return self.images / (time.perf_counter() - start)


def compare(setup, configs, *, rounds):
    """{name: [images/s per round]} for configs {name: (loop, amp_dtype, channels_last)}: one
    warm-up pass of each, then rounds that run every config once, in reversed order every
    other round (ABBA), so that drift in the machine's load hits all alike."""
    for run, amp_dtype, channels_last in configs.values():
        setup.images_per_second(run, amp_dtype=amp_dtype, channels_last=channels_last)
    rates = {name: [] for name in configs}
    for round_ in range(rounds):
        for name in (list(configs) if round_ % 2 == 0 else list(configs)[::-1]):
            run, amp_dtype, channels_last = configs[name]
            rates[name].append(setup.images_per_second(run, amp_dtype=amp_dtype, channels_last=channels_last))
    return rates


def paired_ratio(rates, numerator, denominator):
    """Median over rounds of the per-round ratio: each round's pair ran back to back."""
    return statistics.median(a / b for a, b in zip(rates[numerator], rates[denominator]))


def report(rates, label):
    for name, values in rates.items():
        print(f"{label} {name}: median {statistics.median(values):.1f} images/s "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main(args):
    setup = Setup(image_size=args.image_size, batch_size=args.batch_size, steps=args.steps, device=args.device)
    amp_dtype = runtime.autocast_dtype(setup.device, args.amp)
    configs = {"bare loop": (setup.bare, amp_dtype, args.channels_last),
               "loop.run_epoch": (setup.kit_loop, amp_dtype, args.channels_last)}
    rates = compare(setup, configs, rounds=args.rounds)
    print(f"DenseNet-121, batch {args.batch_size} x {args.image_size} px, {amp_dtype or 'fp32'}, "
          f"channels-last {args.channels_last}, {machine(setup.device)}, torch {torch.__version__}")
    report(rates, "train")
    print(f"ratio={paired_ratio(rates, 'loop.run_epoch', 'bare loop'):.3f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
