"""The machinery the stage scripts share; each module answers one question.

    cli          argument types, the runtime flags, one-line errors (no torch: --help is instant)
    runtime      device, precision, seeds and RNG state, torchrun
    files        atomic writes (a refused write is one line), tables read with one-line errors
    readers/     the datasets' native layouts -> rows: one module per dataset, the shared frame and checks
    manifests    patient-level splits, the paper's source protocol, train fractions, manifest files
    identity     what data a run saw, by content: hashes of manifest rows, images, patients
    data         manifest rows -> datasets and loaders
    cache        the preprocessing cache (decode and resize once; built by prepare_data.py)
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

The transform chains live in the top-level ``transforms.py``, the file clinical code reads and
copies; inside this package it is ``kit.transforms``. Installed (``pip install -e .`` or
``pip install .``, see pyproject.toml), the repository root is the package ``domaintl``: this
package is ``domaintl.kit`` and ``transforms.py`` is ``domaintl.transforms``.
"""


def __getattr__(name):
    """``kit.transforms``, loaded on first use (it imports torch and MONAI; kit.cli must stay light)."""
    if name != "transforms":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:  # installed (pip install -e .): the top-level file is domaintl.transforms, beside this package
        from .. import transforms
    except (ImportError, ValueError):  # run from a checkout: the top-level transforms.py
        import transforms
    globals()["transforms"] = transforms
    return transforms
