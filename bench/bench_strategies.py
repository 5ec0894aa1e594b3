"""Training images/s of the fine-tuning strategies (finetune_target.py --strategy): full (every
layer trains), partial (the last dense block and the head) and linear (the head alone), through
the kit's loop (kit/loop.py run_epoch) on the same DenseNet-121, batches and precision.

    python bench/bench_strategies.py                  # ~1 minute on 2 CPU cores
    python bench/bench_strategies.py --device cuda --image-size 224 --batch-size 64

A frozen part needs no backward pass and no optimizer step, and every epoch still runs the whole
forward pass on freshly augmented images (no features are cached: the augmentation changes the
input every epoch). The strategies run in alternating order over rounds; each line gives the
median images/s; the last line is ratio=<linear images/s / full images/s>.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import transforms  # noqa: E402
from kit import loop, models, runtime  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64, help="input side in px")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and strategy")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, alternating between the strategies")
    parser.add_argument("--device", type=str, default="cpu", help="cpu | cuda")
    return parser


def main(args):
    device = torch.device(args.device)
    runtime.set_cpu_threads()
    amp_dtype = runtime.autocast_dtype(device, True)
    draw = transforms.RandTaild(keys="image", domain="efi", image_size=args.image_size, train=True)
    draw.set_random_state(seed=0)
    batches = [(torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8),
                torch.stack([draw.randomize() for _ in range(args.batch_size)]),
                torch.randint(0, 2, (args.batch_size,))) for _ in range(args.steps)]
    setups = {}
    for strategy in models.STRATEGIES:
        torch.manual_seed(0)
        model = models.build_model(2).to(device, memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(models.freeze(model, strategy), lr=1e-4, **loop.fast_kernels(device))
        setups[strategy] = (model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10_000))

    def images_per_second(strategy):
        model, optimizer, scheduler = setups[strategy]
        start = time.perf_counter()
        loop.run_epoch(model, batches, torch.nn.CrossEntropyLoss(), device, task="multiclass", amp_dtype=amp_dtype,
                       channels_last=True, optimizer=optimizer, scheduler=scheduler,
                       scaler=torch.amp.GradScaler(device.type, enabled=False), log_every=args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.batch_size * args.steps / (time.perf_counter() - start)

    for strategy in setups:  # warm-up
        images_per_second(strategy)
    rates = {strategy: [] for strategy in setups}
    for round_ in range(args.rounds):
        for strategy in (list(setups) if round_ % 2 == 0 else list(setups)[::-1]):
            rates[strategy].append(images_per_second(strategy))
    print(f"DenseNet-121 training, batch {args.batch_size} x {args.image_size} px, {device}, "
          f"{amp_dtype or 'fp32'}, torch {torch.__version__}")
    for strategy, values in rates.items():
        print(f"{strategy:8s} {statistics.median(values):8.1f} images/s")
    print(f"ratio={statistics.median(rates['linear']) / statistics.median(rates['full']):.2f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
