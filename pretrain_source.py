"""Pretrain DenseNet-121 on one source dataset (paper Section 5.2.1): ChestX-ray14 -> CXR_RI / CXR_IN,
BreakHis -> HWSI_RI / HWSI_IN, EyePACS -> EFI_RI / EFI_IN.

CPU demo (tiny images, minutes):
    python pretrain_source.py --manifest runs/demo/manifests/chestxray14.csv --init random \\
        --out runs/demo/pretrain/CXR_RI/seed0 --image-size 64 --epochs 2 --batch-size 16
One GPU, 224 px:
    python pretrain_source.py --manifest OUT/manifests/eyepacs.csv --init imagenet --out OUT/pretrain/EFI_IN/seed0
Two nodes of eight GPUs (run on each node; --batch-size is per process):
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        pretrain_source.py --manifest OUT/manifests/chestxray14.csv --init imagenet --out OUT/pretrain/CXR_IN/seed0

The manifest says the task: multi-label BCE for ChestX-ray14, cross-entropy (class-weighted for
EyePACS, as in the paper) for the others. Trains on the manifest's train split, selects on val.
The recipe is main() below, top to bottom: data, model, loss, optimizer, schedule, the shared loop.
"""

from kit import cli


def get_args_parser():
    parser = cli.Parser(__doc__)
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", type=cli.existing_file, required=True, help="source manifest CSV from prepare_data.py")
    data.add_argument("--image-size", type=cli.image_size, default=224, help="input side in px (32-1024; paper: 224)")
    data.add_argument("--exclude-overlap", type=cli.existing_file, default=None, metavar="OVERLAP_CSV",
                      help="leave out of training and validation the images that check_overlap.py found to be "
                           "pictures of a target (its overlap.csv), so no target image is seen in pretraining; "
                           "default: none left out (the paper's way)")
    model = parser.add_argument_group("model")
    model.add_argument("--init", type=str, default="random", choices=["random", "imagenet"],
                       help="random -> <AREA>_RI, imagenet -> <AREA>_IN")
    model.add_argument("--hidden-dim", type=cli.positive_int, default=512, help="width of the head's FC layer")
    model.add_argument("--dropout", type=cli.dropout_rate, default=0.5, help="dropout in the head, in [0, 1)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=cli.epochs, default=30, help="passes over the train split")
    optim.add_argument("--batch-size", type=cli.train_batch_size, default=32,
                       help="images per step per process (under torchrun the global batch is N x this; scale "
                            "--lr with it)")
    optim.add_argument("--lr", type=cli.positive_float, default=3e-4, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=cli.non_negative_float, default=1e-4, help="AdamW weight decay")
    optim.add_argument("--warmup-epochs", type=cli.non_negative_int, default=0,
                       help="epochs of linear learning-rate warm-up before the cosine decay to 0")
    optim.add_argument("--class-weights", type=str, default="auto", choices=["auto", "balanced", "none"],
                       help="cross-entropy class weights; auto = what the manifest recommends (balanced for "
                            "EyePACS, as in the paper; none elsewhere; multi-label sets are never weighted)")
    optim.add_argument("--seed", type=cli.seed, default=0, help="fixes init, augmentation and data order")
    cli.add_run_folder_args(parser, example="OUT/pretrain/CXR_RI/seed0")
    cli.add_runtime_args(parser, training=True)
    return parser


def main(args):
    import torch  # here, after parsing: --help answers without loading torch and MONAI

    from kit import data, loop, losses, manifests, models, overlap, runs, runtime

    runtime.seed_everything(args.seed)
    dist_info, device = runtime.init_distributed(args.device)

    # --- data: one source manifest, its own train/val split
    df, data_meta = manifests.load_manifest(args.manifest)
    overlap_record = None
    if args.exclude_overlap:  # no target's picture in pretraining (check_overlap.py); recorded in the run's meta
        df, overlap_record = overlap.leave_out(df, args.exclude_overlap, pretraining=str(args.out))
        runtime.log(overlap.left_out_line(overlap_record))
    run = runs.open_run(args.out, arguments=vars(args), data_meta=data_meta, df=df, world_size=dist_info.world_size,
                        resume=args.resume, restart_if_changed=args.restart_if_changed)  # locked; another run's refused
    train_loader, val_loader, n_skipped = data.train_val_loaders(
        df, data_meta, manifests=[args.manifest], image_size=args.image_size, batch_size=args.batch_size,
        workers=args.workers, seed=args.seed, skip_bad=args.skip_bad, out_dir=args.out, device=device,
        dist_info=dist_info)

    # --- model: DenseNet-121 + head, from random init (<AREA>_RI) or ImageNet (<AREA>_IN)
    model, init_description = models.create_model(len(data_meta["classes"]), args.init, hidden_dim=args.hidden_dim,
                                                  dropout=args.dropout, imagenet_weights=args.imagenet_weights)
    model.to(device)

    # --- loss: the manifest's task decides: BCE over 15 labels (ChestX-ray14), else cross-entropy,
    # class-weighted for EyePACS as in the paper
    class_weights = losses.class_weights(args.class_weights, data_meta, train_loader.dataset.targets)
    criterion = losses.make_criterion(data_meta["task"], class_weights)

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
                         manifests=[args.manifest], loss_weights=class_weights, skipped_images=n_skipped,
                         overlap=overlap_record)
    loop.fit(model, train_loader, val_loader, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
             meta=meta, run=run, settings=loop.Settings.of(vars(args)), device=device, dist_info=dist_info)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
