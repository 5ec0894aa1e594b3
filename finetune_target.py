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
Eight GPUs (the same file; --batch-size is per process):
    torchrun --nproc_per_node=8 finetune_target.py --manifest OUT/manifests/messidor.csv --init imagenet \
        --out OUT/finetune/messidor/IN --batch-size 32 --lr 8e-4
A killed run continues from OUT/.../last.pt when the same command is run again (--no-resume starts over).
"""

import argparse

import datasets
import engine


def get_args_parser():
    parser = argparse.ArgumentParser(description="Fine-tune DenseNet-121 on one target dataset (one arm).")
    # Data
    parser.add_argument("--manifest", type=engine.existing_file, required=True, help="target manifest CSV from prepare_data.py")
    parser.add_argument("--image-size", type=engine.image_size, default=224, help="input side in px (paper: 224; >= 32)")
    parser.add_argument("--train-fraction", type=engine.fraction, default=1.0,
                        help="train on this share of the train split's patients, in (0, 1]: stratified, and nested "
                             "(for one --seed, 0.05 is a subset of 0.1); val and test stay whole")
    # Model
    parser.add_argument("--init", type=engine.init_source, required=True,
                        help="random | imagenet | path to a pretrain checkpoint (backbone only is taken)")
    engine.add_model_args(parser, hidden_dim=512, dropout=0.5)
    # Optimisation
    engine.add_optimisation_args(parser, epochs=30, batch_size=32, lr=1e-4, weight_decay=1e-4)
    # Checkpointing
    engine.add_checkpointing_args(parser, out_example="OUT/finetune/shenzhen/Domain_RI")
    engine.add_runtime_args(parser)
    return parser


def main(args):
    engine.seed_everything(args.seed)

    # --- data: the target manifest (every arm of a target reads the same one)
    df, data_meta = datasets.load_manifest(args.manifest)
    if args.train_fraction < 1:  # label-efficiency study: fewer training patients, same val/test
        df = datasets.nested_fraction(df, args.train_fraction, seed=args.seed)
        engine.log(f"--train-fraction {args.train_fraction}: {(df['split'] == 'train').sum()} train images")

    # --- model from --init (random, imagenet or a pretrain checkpoint; the head is always new), then training
    engine.train(df, data_meta, args)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with engine.user_errors():
        main(args)
