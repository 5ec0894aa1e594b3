"""Pretrain DenseNet-121 on the three sources aggregated (paper Section 5.2.3) -> All_RI / All_IN.

ChestX-ray14 (15 labels), BreakHis (2) and EyePACS (5) become one multi-label set of 22 labels,
named by their dataset (`chestxray14/Effusion`, `breakhis/malignant`, `eyepacs/grade_3`), each
image a vector of its labels over the 22 (the paper's "one-hot encoding vector of length 22") and
no class weights, as in the paper (5.2.3, 5.4). The loss and what the other datasets' labels count
as are not stated: the kit's choice is BCE with them as negatives (0), or with --label-mask left out
of the image's loss (masked BCE). Each image keeps its own domain's transform chain.

--balance: the paper draws every image equally often, so ChestX-ray14's 112k images dominate
BreakHis's 7.9k (Section 5.4 names this as a limitation). domain draws each source equally often,
sqrt in proportion to the square root of its size; an epoch is as many draws as the train split
has images, so runs are comparable (the kit's option, for the study's All_RI_bal / All_IN_bal).

CPU demo:
    python pretrain_all.py --manifests runs/demo/manifests/{chestxray14,breakhis,eyepacs}.csv \\
        --init random --out runs/demo/pretrain/All_RI/seed0 --image-size 64 --epochs 2 --batch-size 16
One GPU, 224 px:
    python pretrain_all.py --manifests OUT/manifests/{chestxray14,breakhis,eyepacs}.csv --init imagenet \\
        --out OUT/pretrain/All_IN/seed0
Eight GPUs (--batch-size is per process):
    torchrun --nproc_per_node=8 pretrain_all.py --manifests OUT/manifests/{chestxray14,breakhis,eyepacs}.csv \\
        --init imagenet --out OUT/pretrain/All_IN/seed0

The recipe is main() below, top to bottom: data, model, loss, optimizer, schedule, the shared loop.
"""
import argparse

from kit import cli


def get_args_parser():
    parser = cli.Parser(__doc__)
    data = parser.add_argument_group("data")
    data.add_argument("--manifests", type=cli.existing_file, nargs="+", required=True,
                      help="source manifest CSVs from prepare_data.py (paper: chestxray14, breakhis, eyepacs)")
    data.add_argument("--image-size", type=cli.image_size, default=224, help="input side in px (32-1024; paper: 224)")
    data.add_argument("--exclude-overlap", type=cli.existing_file, default=None, metavar="OVERLAP_CSV",
                      help="leave out of training and validation the images that check_overlap.py found to be "
                           "pictures of a target (its overlap.csv), so no target image is seen in pretraining; "
                           "default: none left out (the paper's way)")
    model = parser.add_argument_group("model")
    model.add_argument("--init", type=str, default="random", choices=["random", "imagenet"],
                       help="random -> All_RI, imagenet -> All_IN")
    model.add_argument("--hidden-dim", type=cli.positive_int, default=512, help="width of the head's FC layer")
    model.add_argument("--dropout", type=cli.dropout_rate, default=0.5, help="dropout in the head, in [0, 1)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--label-mask", action=argparse.BooleanOptionalAction, default=False,
                       help="leave the other datasets' labels out of each image's loss (masked BCE) instead of "
                            "counting them as negatives (plain BCE; the paper states neither: both are the kit's "
                            "choice)")
    optim.add_argument("--balance", type=str, default="none", choices=["none", "domain", "sqrt"],
                       help="how often each source is drawn per epoch: none = each image equally likely (the "
                            "paper's); domain = each source equally; sqrt = by the square root of its size. An "
                            "epoch is as many draws as the train split has images")
    optim.add_argument("--epochs", type=cli.epochs, default=30, help="passes over the train split")
    optim.add_argument("--batch-size", type=cli.train_batch_size, default=32,
                       help="images per step per process (under torchrun the global batch is N x this; scale "
                            "--lr with it)")
    optim.add_argument("--lr", type=cli.positive_float, default=3e-4, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=cli.non_negative_float, default=1e-4, help="AdamW weight decay")
    optim.add_argument("--warmup-epochs", type=cli.non_negative_int, default=0,
                       help="epochs of linear learning-rate warm-up before the cosine decay to 0")
    optim.add_argument("--seed", type=cli.seed, default=0, help="fixes init, augmentation and data order")
    cli.add_run_folder_args(parser, example="OUT/pretrain/All_RI/seed0")
    cli.add_runtime_args(parser, training=True)
    return parser


def main(args):
    import torch  # here, after parsing: --help answers without loading torch and MONAI

    from kit import data, loop, losses, manifests, models, overlap, paper, runs, runtime

    runtime.seed_everything(args.seed)
    dist_info, device = runtime.init_distributed(args.device)

    # --- data: the union of the source manifests (22 labels), each keeping its own train/val split
    df, data_meta = manifests.aggregate_manifests(args.manifests)
    overlap_record = None
    if args.exclude_overlap:  # no target's picture in pretraining (check_overlap.py); recorded in the run's meta
        df, overlap_record = overlap.leave_out(df, args.exclude_overlap, pretraining=str(args.out))
        runtime.log(overlap.left_out_line(overlap_record))
    run = runs.open_run(args.out, arguments=vars(args), data_meta=data_meta, df=df, world_size=dist_info.world_size,
                        resume=args.resume, restart_if_changed=args.restart_if_changed)  # locked; another run's refused
    used = df[df["split"].isin(["train", "val"])]  # a source's test rows (--protocol held-out-test) are never used
    runtime.log(f"aggregated {len(args.manifests)} manifests: {len(data_meta['classes'])} labels, {len(used)} train+val "
                f"images" + (f" ({len(df) - len(used)} test rows left out)" if len(used) < len(df) else ""))
    if sorted(data_meta["sources"]) == sorted(k for k in paper.SOURCE_IMAGES if k != "all"):  # the paper's three sources
        runtime.log(paper.stated_vs_built("all", len(used), int((used["split"] == "train").sum()),
                                          int((used["split"] == "val").sum())))
    if args.label_mask:
        df = data.mask_unknown_labels(df, data_meta)
        runtime.log("each image is scored on its own dataset labels only (--label-mask)")
    train_loader, val_loader, n_skipped = data.train_val_loaders(
        df, data_meta, manifests=args.manifests, image_size=args.image_size, batch_size=args.batch_size,
        workers=args.workers, seed=args.seed, skip_bad=args.skip_bad, out_dir=args.out, device=device,
        dist_info=dist_info, balance=args.balance)
    if args.balance != "none":  # each source's share of an epoch's draws (the paper's: its share of the images)
        counts = train_loader.sampler.counts()
        runtime.log(f"--balance {args.balance}: draws per epoch " + ", ".join(
            f"{key} {n:,} ({100 * n / sum(counts.values()):.1f} %)" for key, n in counts.items()))

    # --- model: DenseNet-121 + head, from random init (All_RI) or ImageNet (All_IN)
    model, init_description = models.create_model(len(data_meta["classes"]), args.init, hidden_dim=args.hidden_dim,
                                                  dropout=args.dropout, imagenet_weights=args.imagenet_weights)
    model.to(device)

    # --- loss: binary cross-entropy over the 22 labels, no class weights (paper 5.2.3); labels
    # masked as unknown (--label-mask) are left out
    criterion = losses.MultiLabelBCE()

    # --- optimizer: AdamW over every parameter
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  **loop.fast_kernels(device))

    # --- schedule: linear warm-up for --warmup-epochs, then cosine decay to 0, stepped every step
    steps_per_epoch = len(train_loader)
    scheduler = loop.warmup_cosine(optimizer, total_steps=args.epochs * steps_per_epoch,
                                   warmup_steps=args.warmup_epochs * steps_per_epoch)

    # --- train: the shared loop (AMP, DDP, checkpoints, resume, NaN stop) writes the run folder
    meta = runs.run_meta(data_meta, run, init=args.init, init_description=init_description,
                         hidden_dim=args.hidden_dim, dropout=args.dropout, image_size=args.image_size,
                         manifests=args.manifests, skipped_images=n_skipped, overlap=overlap_record)
    loop.fit(model, train_loader, val_loader, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
             meta=meta, run=run, settings=loop.Settings.of(vars(args)), device=device, dist_info=dist_info)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
