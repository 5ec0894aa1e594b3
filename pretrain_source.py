"""Pretrain DenseNet-121 on one source dataset (paper Section 5.2.1): ChestX-ray14 -> CXR_RI / CXR_IN,
BreakHis -> HWSI_RI / HWSI_IN, EyePACS -> EFI_RI / EFI_IN.

CPU demo (tiny images, minutes):
    python pretrain_source.py --manifest runs/demo/manifests/chestxray14.csv --init random \
        --out runs/demo/pretrain/CXR_RI --image-size 64 --epochs 2 --batch-size 16
One GPU, paper scale:
    python pretrain_source.py --manifest OUT/manifests/eyepacs.csv --init imagenet --out OUT/pretrain/EFI_IN
The manifest says the task: multi-label BCE for ChestX-ray14, cross-entropy (class-weighted for
EyePACS, as in the paper) for the others. Train on the manifest's `train` split, select on `val`.
"""

import argparse

import datasets
import engine
import models


def get_args_parser():
    parser = argparse.ArgumentParser(description="Pretrain DenseNet-121 on one source dataset.")
    # Data
    parser.add_argument("--manifest", type=str, required=True, help="manifest CSV from prepare_data.py")
    parser.add_argument("--image-size", type=engine.image_size, default=224, help="input side in px (paper: 224; >= 32)")
    # Model
    parser.add_argument("--init", type=str, default="random", choices=["random", "imagenet"],
                        help="random -> <AREA>_RI, imagenet -> <AREA>_IN")
    parser.add_argument("--imagenet-weights", type=str, default=None,
                        help="torchvision densenet121-a639ec97.pth (default: the torch hub cache, else download)")
    parser.add_argument("--hidden-dim", type=engine.positive_int, default=512, help="width of the head's FC layer")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout in the head, 0..1")
    # Optimisation
    parser.add_argument("--epochs", type=engine.positive_int, default=30, help="passes over the train split")
    parser.add_argument("--batch-size", type=engine.positive_int, default=32, help="images per step (per process)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate (cosine decay to 0)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--class-weights", type=str, default="auto", choices=["auto", "balanced", "none"],
                        help="cross-entropy class weights; auto = what the manifest recommends (balanced for EyePACS)")
    # Checkpointing
    parser.add_argument("--out", type=str, required=True, help="run folder, e.g. OUT/pretrain/CXR_RI")
    engine.add_runtime_args(parser)
    return parser


def main(args):
    engine.seed_everything(args.seed)

    # --- data
    df, data_meta = datasets.load_manifest(args.manifest)
    train_set, val_set = engine.split_datasets(df, data_meta, args.image_size)

    # --- model
    model = models.build_model(len(data_meta["classes"]), hidden_dim=args.hidden_dim, dropout=args.dropout)
    init_description = models.initialise(model, args.init, imagenet_weights=args.imagenet_weights)
    print(f"model: DenseNet-121, {init_description}")

    # --- train
    meta = engine.run_meta(data_meta, args, init_description=init_description)
    engine.fit(model, train_set, val_set, meta=meta, args=args)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with engine.user_errors():
        main(args)
