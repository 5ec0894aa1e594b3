"""Training images/s of the kit's loop in bf16 autocast + channels-last (the default) vs fp32
with the contiguous layout, plus each of the two alone, on DenseNet-121 in the same run.

    python bench/bench_precision.py                  # 128 px: under a minute on 2 quiet CPU cores
    python bench/bench_precision.py --device cuda --image-size 224 --batch-size 64

Default 128 px: at 64 px DenseNet-121's last blocks work on 2x2 maps and per-op overheads,
which bf16 does not shrink, dominate (measured on 2 cores: 1.73x at 64 px, 2.06x at 96 px,
2.14x at 128 px). Rounds in alternating order after a warm-up; median of the per-round ratios (see bench_step.py). Prints the
figures; the last line is ratio=<bf16 + channels-last images/s / fp32 images/s> (target >= 1.8
on a CPU with native bf16, e.g. AVX512-BF16 or AMX).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import Setup, compare, get_args_parser, machine, paired_ratio, report  # noqa: E402


def main(args):
    setup = Setup(image_size=args.image_size, batch_size=args.batch_size, steps=args.steps, device=args.device)
    bf16 = torch.float16 if setup.device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    configs = {"fp32": (setup.kit_loop, None, False),
               "bf16 + channels-last": (setup.kit_loop, bf16, True),
               "bf16 only": (setup.kit_loop, bf16, False),
               "channels-last only": (setup.kit_loop, None, True)}
    rates = compare(setup, configs, rounds=args.rounds)
    print(f"DenseNet-121 through loop.run_epoch, batch {args.batch_size} x {args.image_size} px, "
          f"{machine(setup.device)}, torch {torch.__version__}")
    report(rates, "train")
    for name in ("bf16 only", "channels-last only"):
        print(f"{name} vs fp32: {paired_ratio(rates, name, 'fp32'):.2f}x")
    print(f"ratio={paired_ratio(rates, 'bf16 + channels-last', 'fp32'):.2f}")


if __name__ == "__main__":
    parser = get_args_parser()
    parser.set_defaults(steps=2, rounds=4, image_size=128)
    main(parser.parse_args())
