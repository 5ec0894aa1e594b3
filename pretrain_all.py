"""Pretrain DenseNet-121 on the three sources aggregated (paper Section 5.2.3) -> All_RI / All_IN.

ChestX-ray14 (15 labels), BreakHis (2) and EyePACS (5) become one multi-label set of 22 labels,
named by their dataset (`chestxray14/Effusion`, `breakhis/malignant`, `eyepacs/grade_3`), each
image one-hot over the labels of its own dataset and 0 elsewhere, trained with BCE as in the paper
(no class weights: Section 5.4). Each image keeps its own domain's transform chain.

CPU demo:
    python pretrain_all.py --manifests runs/demo/manifests/{chestxray14,breakhis,eyepacs}.csv \
        --init random --out runs/demo/pretrain/All_RI --image-size 64 --epochs 2 --batch-size 16
One GPU, paper scale:
    python pretrain_all.py --manifests OUT/manifests/{chestxray14,breakhis,eyepacs}.csv --init imagenet --out OUT/pretrain/All_IN
"""

import argparse

import datasets
import engine
import models


def get_args_parser():
    parser = argparse.ArgumentParser(description="Pretrain DenseNet-121 on the aggregated 22-label source set.")
    # Data
    parser.add_argument("--manifests", type=str, nargs="+", required=True,
                        help="source manifest CSVs from prepare_data.py (paper: chestxray14, breakhis, eyepacs)")
    parser.add_argument("--image-size", type=engine.image_size, default=224, help="input side in px (paper: 224; >= 32)")
    # Model
    parser.add_argument("--init", type=str, default="random", choices=["random", "imagenet"],
                        help="random -> All_RI, imagenet -> All_IN")
    parser.add_argument("--imagenet-weights", type=str, default=None,
                        help="torchvision densenet121-a639ec97.pth (default: the torch hub cache, else download)")
    parser.add_argument("--hidden-dim", type=engine.positive_int, default=512, help="width of the head's FC layer")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout in the head, 0..1")
    # Optimisation
    parser.add_argument("--epochs", type=engine.positive_int, default=30, help="passes over the train split")
    parser.add_argument("--batch-size", type=engine.positive_int, default=32, help="images per step (per process)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate (cosine decay to 0)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--class-weights", type=str, default="none", choices=["none"],
                        help="multi-label BCE is unweighted, as in the paper")
    # Checkpointing
    parser.add_argument("--out", type=str, required=True, help="run folder, e.g. OUT/pretrain/All_RI")
    engine.add_runtime_args(parser)
    return parser


def main(args):
    engine.seed_everything(args.seed)

    # --- data: the union of the source manifests, their own train/val splits kept
    df, data_meta = datasets.aggregate_manifests(args.manifests)
    train_set, val_set = engine.split_datasets(df, data_meta, args.image_size)
    print(f"aggregated {len(args.manifests)} manifests: {len(data_meta['classes'])} labels, {len(df)} images")

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
