"""Fine-tune DenseNet-121 on one target dataset from one initialisation: one arm of the study
(paper Section 5.1). The five arms of a target differ only in --init:

    IN         --init imagenet
    Domain_RI  --init OUT/pretrain/<AREA>_RI/last.pt   (AREA = the target's own: CXR, HWSI or EFI)
    Domain_IN  --init OUT/pretrain/<AREA>_IN/last.pt
    All_RI     --init OUT/pretrain/All_RI/last.pt
    All_IN     --init OUT/pretrain/All_IN/last.pt

A checkpoint gives the backbone only; the head (FC, BN, Dropout, FC) is always new. All arms of
a target read the same manifest, so they see the same split.

CPU demo:
    python finetune_target.py --manifest runs/demo/manifests/shenzhen.csv \
        --init runs/demo/pretrain/CXR_RI/last.pt --out runs/demo/finetune/shenzhen/Domain_RI \
        --image-size 64 --epochs 4 --batch-size 16
One GPU, paper scale:
    python finetune_target.py --manifest OUT/manifests/messidor.csv --init imagenet --out OUT/finetune/messidor/IN
"""

import argparse

import datasets
import engine
import models


def get_args_parser():
    parser = argparse.ArgumentParser(description="Fine-tune DenseNet-121 on one target dataset (one arm).")
    # Data
    parser.add_argument("--manifest", type=str, required=True, help="target manifest CSV from prepare_data.py")
    parser.add_argument("--image-size", type=engine.image_size, default=224, help="input side in px (paper: 224; >= 32)")
    # Model
    parser.add_argument("--init", type=str, required=True,
                        help="random | imagenet | path to a pretrain checkpoint (backbone only is taken)")
    parser.add_argument("--imagenet-weights", type=str, default=None,
                        help="torchvision densenet121-a639ec97.pth for --init imagenet (default: torch hub cache)")
    parser.add_argument("--hidden-dim", type=engine.positive_int, default=512, help="width of the head's FC layer")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout in the head, 0..1")
    # Optimisation
    parser.add_argument("--epochs", type=engine.positive_int, default=30, help="passes over the train split")
    parser.add_argument("--batch-size", type=engine.positive_int, default=32, help="images per step (per process)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (cosine decay to 0)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--class-weights", type=str, default="auto", choices=["auto", "balanced", "none"],
                        help="cross-entropy class weights; auto = what the manifest recommends "
                             "(balanced for Messidor and DeepDRiD, as in the paper)")
    # Checkpointing
    parser.add_argument("--out", type=str, required=True, help="run folder, e.g. OUT/finetune/shenzhen/Domain_RI")
    engine.add_runtime_args(parser)
    return parser


def main(args):
    engine.seed_everything(args.seed)

    # --- data
    df, data_meta = datasets.load_manifest(args.manifest)
    train_set, val_set = engine.split_datasets(df, data_meta, args.image_size)

    # --- model: new head on a random, ImageNet or project-pretrained backbone
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
