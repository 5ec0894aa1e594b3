"""Pretrain DenseNet-121 on one source dataset (paper Section 5.2.1): ChestX-ray14 -> CXR_RI / CXR_IN,
BreakHis -> HWSI_RI / HWSI_IN, EyePACS -> EFI_RI / EFI_IN.

CPU demo (tiny images, minutes):
    python pretrain_source.py --manifest runs/demo/manifests/chestxray14.csv --init random \
        --out runs/demo/pretrain/CXR_RI --image-size 64 --epochs 2 --batch-size 16
One GPU, paper scale:
    python pretrain_source.py --manifest OUT/manifests/eyepacs.csv --init imagenet --out OUT/pretrain/EFI_IN
Two nodes of eight GPUs (run on each node; --batch-size is per process):
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
        pretrain_source.py --manifest OUT/manifests/chestxray14.csv --init imagenet --out OUT/pretrain/CXR_IN
The manifest says the task: multi-label BCE for ChestX-ray14, cross-entropy (class-weighted for
EyePACS, as in the paper) for the others. Train on the manifest's `train` split, select on `val`.
"""

import argparse

import datasets
import engine


def get_args_parser():
    parser = argparse.ArgumentParser(description="Pretrain DenseNet-121 on one source dataset.")
    # Data
    parser.add_argument("--manifest", type=engine.existing_file, required=True, help="manifest CSV from prepare_data.py")
    parser.add_argument("--image-size", type=engine.image_size, default=224, help="input side in px (paper: 224; >= 32)")
    # Model
    parser.add_argument("--init", type=str, default="random", choices=["random", "imagenet"],
                        help="random -> <AREA>_RI, imagenet -> <AREA>_IN")
    engine.add_model_args(parser, hidden_dim=512, dropout=0.5)
    # Optimisation
    engine.add_optimisation_args(parser, epochs=30, batch_size=32, lr=3e-4, weight_decay=1e-4)
    # Checkpointing
    engine.add_checkpointing_args(parser, out_example="OUT/pretrain/CXR_RI")
    engine.add_runtime_args(parser)
    return parser


def main(args):
    engine.seed_everything(args.seed)

    # --- data: one source manifest, its own train/val split
    df, data_meta = datasets.load_manifest(args.manifest)

    # --- model from --init (random -> <AREA>_RI, imagenet -> <AREA>_IN), then training
    engine.train(df, data_meta, args)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with engine.user_errors():
        main(args)
