"""Pretrain DenseNet-121 on the three sources aggregated (paper Section 5.2.3) -> All_RI / All_IN.

ChestX-ray14 (15 labels), BreakHis (2) and EyePACS (5) become one multi-label set of 22 labels,
named by their dataset (`chestxray14/Effusion`, `breakhis/malignant`, `eyepacs/grade_3`), each
image one-hot over the labels of its own dataset and 0 elsewhere, trained with BCE as in the paper
(no class weights: Section 5.4). Each image keeps its own domain's transform chain. With
--label-mask, an image's loss skips the other datasets' labels instead (masked BCE).

CPU demo:
    python pretrain_all.py --manifests runs/demo/manifests/{chestxray14,breakhis,eyepacs}.csv \
        --init random --out runs/demo/pretrain/All_RI --image-size 64 --epochs 2 --batch-size 16
One GPU, paper scale:
    python pretrain_all.py --manifests OUT/manifests/{chestxray14,breakhis,eyepacs}.csv --init imagenet --out OUT/pretrain/All_IN
Eight GPUs (--batch-size is per process):
    torchrun --nproc_per_node=8 pretrain_all.py --manifests OUT/manifests/{chestxray14,breakhis,eyepacs}.csv \
        --init imagenet --out OUT/pretrain/All_IN
"""

import argparse

import datasets
import engine


def get_args_parser():
    parser = argparse.ArgumentParser(description="Pretrain DenseNet-121 on the aggregated 22-label source set.")
    # Data
    parser.add_argument("--manifests", type=engine.existing_file, nargs="+", required=True,
                        help="source manifest CSVs from prepare_data.py (paper: chestxray14, breakhis, eyepacs)")
    parser.add_argument("--label-mask", action=argparse.BooleanOptionalAction, default=False,
                        help="ignore, in each image's loss, the labels of the other datasets (masked BCE) instead "
                             "of counting them as negatives (the paper's choice, the default)")
    parser.add_argument("--image-size", type=engine.image_size, default=224, help="input side in px (paper: 224; >= 32)")
    # Model
    parser.add_argument("--init", type=str, default="random", choices=["random", "imagenet"],
                        help="random -> All_RI, imagenet -> All_IN")
    engine.add_model_args(parser, hidden_dim=512, dropout=0.5)
    # Optimisation
    engine.add_optimisation_args(parser, epochs=30, batch_size=32, lr=3e-4, weight_decay=1e-4,
                                 class_weights=("none",))  # multi-label BCE, unweighted as in the paper
    # Checkpointing
    engine.add_checkpointing_args(parser, out_example="OUT/pretrain/All_RI")
    engine.add_runtime_args(parser)
    return parser


def main(args):
    engine.seed_everything(args.seed)

    # --- data: the union of the source manifests, their own train/val splits kept
    df, data_meta = datasets.aggregate_manifests(args.manifests)
    engine.log(f"aggregated {len(args.manifests)} manifests: {len(data_meta['classes'])} labels, {len(df)} images"
               f"{'; each image is scored on its own dataset labels only (--label-mask)' if args.label_mask else ''}")
    if args.label_mask:
        df = engine.mask_unknown_labels(df, data_meta)

    # --- model from --init (random -> All_RI, imagenet -> All_IN), then training
    engine.train(df, data_meta, args)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with engine.user_errors():
        main(args)
