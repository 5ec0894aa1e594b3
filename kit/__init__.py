"""The machinery the stage scripts share; each module answers one question.

    cli          argument types, the runtime flags, one-line errors (no torch: --help is instant)
    runtime      device, precision, seeds and RNG state, torchrun
    files        atomic writes, tables read with one-line errors
    readers      the datasets' native layouts -> rows (one reader per dataset)
    manifests    patient-level splits, the paper's source protocol, train fractions, manifest files
    data         manifest rows -> datasets and loaders
    cache        the preprocessing cache (decode and resize once)
    models       DenseNet-121 + head and its initialisations
    checkpoints  checkpoint files: atomic saves, loads that cannot run code
    losses       the losses and their class weights
    loop         the training loop (fit) and evaluation passes
    runs         a run folder: its settings fingerprint, resume, args.json
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

The transform chains live in the top-level module ``transforms`` (transforms.py, the file clinical
code reads and copies); the modules here that need them ``import transforms``. Installed (``pip
install -e .`` or ``pip install .``, see pyproject.toml), the names are the same: ``transforms`` and
``kit``.
"""
