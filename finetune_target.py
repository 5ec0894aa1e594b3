"""Fine-tune DenseNet-121 on one target dataset from one initialisation: one arm of the study
(paper Section 5.1). The five arms of a target differ only in --init:

    IN         --init imagenet
    Domain_RI  --init OUT/pretrain/<AREA>_RI/seed0/last.pt   (AREA = the target's own: CXR, HWSI or EFI)
    Domain_IN  --init OUT/pretrain/<AREA>_IN/seed0/last.pt
    All_RI     --init OUT/pretrain/All_RI/seed0/last.pt
    All_IN     --init OUT/pretrain/All_IN/seed0/last.pt

A checkpoint gives the backbone only; the head (FC, BN, ReLU, Dropout, FC) is always new. All
arms of a target read the same manifest, so they see the same split. --init also takes a published
DenseNet-121 file (torchvision, CheXNet-style, torchxrayvision, MONAI: kit/backbones.py), mapped
strictly, its layout and hash recorded in the checkpoint's meta.

CPU demo:
    python finetune_target.py --manifest runs/demo/manifests/shenzhen.csv \\
        --init runs/demo/pretrain/CXR_RI/seed0/last.pt --out runs/demo/finetune/shenzhen/Domain_RI/seed0 \\
        --image-size 64 --epochs 4 --batch-size 16
One GPU, 224 px:
    python finetune_target.py --manifest OUT/manifests/messidor.csv --init imagenet --out OUT/finetune/messidor/IN/seed0
Eight GPUs (the same file; --batch-size is per process):
    torchrun --nproc_per_node=8 finetune_target.py --manifest OUT/manifests/messidor.csv --init imagenet \\
        --out OUT/finetune/messidor/IN/seed0 --batch-size 32 --lr 8e-4
A published DenseNet-121 file (here CheXNet's) as the init:
    python finetune_target.py --manifest OUT/manifests/shenzhen.csv --init chexnet.pth.tar --out OUT/finetune/shenzhen/CheXNet/seed0
A killed run continues from OUT/.../last.pt when the same command is run again (--no-resume starts over).

The recipe is main() below, top to bottom: data, model, loss, what trains (--strategy: full,
partial, linear), optimizer, schedule, then the shared loop. To train with SGD, edit the optimizer
line as its comment says.
"""

from kit import cli
from kit.paper import STRATEGIES


def get_args_parser():
    parser = cli.Parser(__doc__)
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", type=cli.existing_file, required=True,
                      help="target manifest CSV from prepare_data.py")
    data.add_argument("--image-size", type=cli.image_size, default=224, help="input side in px (32-1024; paper: 224)")
    data.add_argument("--train-fraction", type=cli.fraction, default=1.0,
                      help="train on this share of the train split's patients, in (0, 1]: stratified and nested "
                           "(for one --seed, 0.05 is a subset of 0.1); val and test stay whole")
    model = parser.add_argument_group("model")
    model.add_argument("--init", type=cli.init_source, required=True,
                       help="random | imagenet | path to a pretrain checkpoint or a published DenseNet-121 file "
                            "(torchvision, CheXNet-style, torchxrayvision, MONAI); its backbone only is taken")
    model.add_argument("--hidden-dim", type=cli.positive_int, default=512, help="width of the head's FC layer")
    model.add_argument("--dropout", type=cli.dropout_rate, default=0.5, help="dropout in the head, in [0, 1)")
    model.add_argument("--strategy", type=str, default="full", choices=STRATEGIES,
                       help="what trains: full = every layer; partial = the last dense block and the head; linear = "
                            "the head alone (the backbone and its BatchNorm statistics frozen: a linear probe)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=cli.epochs, default=30, help="passes over the train split")
    optim.add_argument("--batch-size", type=cli.train_batch_size, default=32,
                       help="images per step per process (under torchrun the global batch is N x this; scale "
                            "--lr with it)")
    optim.add_argument("--lr", type=cli.positive_float, default=1e-4, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=cli.non_negative_float, default=1e-4, help="AdamW weight decay")
    optim.add_argument("--warmup-epochs", type=cli.non_negative_int, default=0,
                       help="epochs of linear learning-rate warm-up before the cosine decay to 0")
    optim.add_argument("--class-weights", type=str, default="auto", choices=["auto", "balanced", "none"],
                       help="cross-entropy class weights; auto = what the manifest recommends (balanced for "
                            "Messidor and DeepDRiD, as in the paper; none elsewhere)")
    optim.add_argument("--seed", type=cli.seed, default=0, help="fixes init of the head, augmentation and data order")
    cli.add_run_folder_args(parser, example="OUT/finetune/shenzhen/Domain_RI/seed0")
    cli.add_runtime_args(parser, training=True)
    return parser


def main(args):
    import torch  # here, after parsing: --help answers without loading torch and MONAI

    from kit import data, loop, losses, manifests, models, runs, runtime

    runtime.seed_everything(args.seed)
    dist_info, device = runtime.init_distributed(args.device)

    # --- data: the target manifest (every arm of a target reads the same one), its train/val splits
    df, data_meta = manifests.load_manifest(args.manifest)
    run = runs.open_run(args.out, arguments=vars(args), data_meta=data_meta, df=df, world_size=dist_info.world_size,
                        resume=args.resume, restart_if_changed=args.restart_if_changed)  # locked; another run's refused
    if args.train_fraction < 1:  # label efficiency: fewer training patients, the same val and test
        df = manifests.nested_fraction(df, args.train_fraction, seed=args.seed)
        runtime.log(f"--train-fraction {args.train_fraction}: {(df['split'] == 'train').sum()} train images")
    train_loader, val_loader, n_skipped = data.train_val_loaders(
        df, data_meta, manifests=[args.manifest], image_size=args.image_size, batch_size=args.batch_size,
        workers=args.workers, seed=args.seed, skip_bad=args.skip_bad, out_dir=args.out, device=device,
        dist_info=dist_info)

    # --- model: DenseNet-121 + a new head; the backbone from --init (random, ImageNet or a pretrained model)
    model, init_description = models.create_model(len(data_meta["classes"]), args.init, hidden_dim=args.hidden_dim,
                                                  dropout=args.dropout, imagenet_weights=args.imagenet_weights)
    model.to(device)
    pretraining = runs.pretraining_of(args.init, run)  # what the backbone saw: evaluate.py checks the test split

    # --- loss: cross-entropy, class-weighted where the paper weights (Messidor, DeepDRiD)
    class_weights = losses.class_weights(args.class_weights, data_meta, train_loader.dataset.targets)
    criterion = losses.make_criterion(data_meta["task"], class_weights)

    # --- what trains: --strategy full (every layer), partial (the last dense block and the head) or linear (the
    # head alone); a frozen part keeps its weights and its BatchNorm statistics
    params = models.freeze(model, args.strategy)

    # --- optimizer: AdamW over what trains. SGD instead: torch.optim.SGD(params, lr=args.lr, momentum=0.9)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, **loop.fast_kernels(device))

    # --- schedule: linear warm-up for --warmup-epochs, then cosine decay to 0, stepped every step
    scheduler = loop.warmup_cosine(optimizer, total_steps=args.epochs * len(train_loader),
                                   warmup_steps=args.warmup_epochs * len(train_loader))

    # --- train: the shared loop (AMP, DDP, checkpoints, resume, NaN stop) writes the run folder
    meta = runs.run_meta(data_meta, run, init=args.init, init_description=init_description,
                         hidden_dim=args.hidden_dim, dropout=args.dropout, image_size=args.image_size,
                         manifests=[args.manifest], loss_weights=class_weights, skipped_images=n_skipped,
                         pretraining=pretraining)
    loop.fit(model, train_loader, val_loader, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
             meta=meta, run=run, settings=loop.Settings.of(vars(args)), device=device, dist_info=dist_info)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
