"""The machinery the stage scripts share; each module answers one question.

    cli          argument types, the runtime flags, one-line errors (no torch: --help is instant)
    runtime      device, precision, seeds and RNG state, torchrun
    files        atomic writes (a refused write is one line), tables read with one-line errors
    readers/     the datasets' native layouts -> rows: one module per dataset, the shared frame and checks
    manifests    patient-level splits, the paper's source protocol, train fractions, manifest files
    identity     what data a run saw, by content: hashes of manifest rows, images, patients
    data         manifest rows -> datasets and loaders
    cache        the preprocessing cache (decode and resize once; built by prepare_data.py)
    overlap      the same picture in two data sets: thumbnails, candidates, twins (check_overlap.py)
    models       DenseNet-121 + head and its initialisations
    imagenet     where torchvision's ImageNet DenseNet-121 file is (path, hub cache, download); no torch
    backbones    DenseNet-121 files of other libraries (torchvision, CheXNet, torchxrayvision, MONAI): layout, strict key map
    checkpoints  checkpoint files: atomic saves, loads that cannot run code
    losses       the losses and their class weights
    loop         the training loop (fit) and evaluation passes
    recipe       what a run trained with (optimizer, schedule, loss, augmentation), read off its objects
    runs         a run folder: its settings fingerprint, resume, args.json
    locks        one writer per output folder
    metrics      accuracy, kappa, AUROC, ... per split
    stats        bootstrap CIs, paired tests, Holm, DeLong, convergence, stability
    paper        the paper as data: targets, arms, source counts, Table 2, its settings and the kit's
    results      reading a study's run and evaluation files (and study.json)
    tables       statistics over runs as tables (all pairs of arms, the paper's Table 2 next to this run)
    claims       the paper's claims as rules, and their verdicts on this run
    figures      learning curves, forest plot, label efficiency
    report       Markdown: Table 2 and report.md
    inputs       predict.py's inputs: files, folders, CSVs; what a model of each domain refuses
    cam          Grad-CAM heat maps over the input (predict.py --cam, evaluate.py --cam)
    export       TorchScript, MONAI bundle and backbone files from a checkpoint (export.py)
    study        the workflow's settings checked, its targets and run names (Snakefile)
    slots        GPU slots for the workflow's concurrent jobs

The transform chains live in the top-level module ``transforms`` (transforms.py, the file clinical
code reads and copies); the modules here that need them ``import transforms``. Installed (``pip
install -e .`` or ``pip install .``, see pyproject.toml), the names are the same: ``transforms`` and
``kit``.
"""
