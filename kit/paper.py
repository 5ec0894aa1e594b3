"""The paper's study as data: its targets D1-D5 with their headline metrics, its five arms, and
how figures and tables name them.

Jindal & Singh, "Towards Domain-Aware Transfer Learning for Medical Image Analysis", Section 5.
"""

# Paper order (Section 5.1): D1..D5 with the metric Table 2 reports for each (5.3: accuracy for
# D1-D3, Cohen kappa for the graded eye data sets D4-D5).
TARGETS = {  # key -> (paper label, readable name, domain source name, headline metric)
    "shenzhen": ("D1", "Shenzhen CXR", "CXR", "accuracy"),
    "covid19_radiography": ("D2", "COVID-19 Radiography", "CXR", "accuracy"),
    "kather2016": ("D3", "Kather Texture 2016", "HWSI", "accuracy"),
    "messidor": ("D4", "Messidor", "EFI", "kappa"),
    "deepdrid": ("D5", "DeepDRiD", "EFI", "kappa"),
}

ARMS = ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]  # paper order (Table 2 columns)

ARM_HEADERS = {"IN": "IN", "Domain_RI": "Dom RI", "Domain_IN": "Dom IN", "All_RI": "ALL RI", "All_IN": "ALL IN"}

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "kappa": "Kappa Score",
    "balanced_accuracy": "Balanced accuracy",
    "qwk": "Quadratic kappa",
    "auroc": "AUROC",
    "map": "mAP",
}

CURVE_SPLITS = [("train", "Training"), ("val", "Validation")]


def paper_sorted(names, order):
    """Known names in `order`, then the unknown ones sorted."""
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


def target_title(target):
    if target in TARGETS:
        return f"{TARGETS[target][0]} {TARGETS[target][1]}"
    return target


def short_name(target):
    return TARGETS.get(target, (target,))[0]


def metric_label(metric):
    return METRIC_LABELS.get(metric, metric)


def arm_legend_label(target, arm):
    """Name the domain source model where the paper does (5.3: 'EFI_IN and EFI_RI')."""
    if target in TARGETS and arm.startswith("Domain_"):
        return f"{arm} ({TARGETS[target][2]}_{arm.split('_', 1)[1]})"
    return arm


def fraction_label(fraction):
    return f"{fraction:g}"


# --------------------------------------------------------------------------- the source data as the paper used it

# Section 5.2: the images each source contributes. BreakHis: the text says 9109 but also
# "5429 malignant and 2480 benign" = 7,909, and 112,120 + 7,909 + 49,169 = 169,198, the All
# set's stated size, so 9109 is a typo. EyePACS: the 35,126 training images plus the 14,043
# test images of grades 1-4 ("samples of 1-4 levels from the test set have also been added in
# training"); its grade-0 test images are not used.
SOURCE_IMAGES = {"chestxray14": 112_120, "breakhis": 7_909, "eyepacs": 35_126 + 14_043, "all": 169_198}
SOURCE_VAL_FRAC = 0.1               # "partitioned into 90/10% for train/validation sets" (All; EyePACS: 10 %)
EYEPACS_TEST_GRADES_ADDED = (1, 2, 3, 4)
EYEPACS_TEST_ADDED = 14_043
SOURCE_SECTION = {"chestxray14": "5.2.1", "breakhis": "5.2.1", "eyepacs": "5.2.1", "all": "5.2.3"}


def stated_vs_built(key, n_built, n_train=None, n_val=None):
    """One line: the image count the paper states for a source (or the All set) next to what was built."""
    stated = SOURCE_IMAGES[key]
    splits = f" (train {n_train:,} / val {n_val:,})" if n_train is not None and n_val is not None else ""
    if n_built == stated:
        verdict = "as the paper states"
    else:
        verdict = (f"{100 * n_built / stated:.1f} % of the paper's count (demo data, --max-per-class, --skip-bad "
                   f"or a partial download)")
    return f"paper (Section {SOURCE_SECTION[key]}): {stated:,} images; built: {n_built:,}{splits}, {verdict}"


# --------------------------------------------------------------------------- Table 2 of the paper

# Table 2, "Model's performance at last epoch" (Section 5.3), in %: {target: {arm: (training, validation)}}.
# Accuracy for D1-D3, Cohen's kappa for D4-D5. One run per arm; the paper has no test split.
TABLE2 = {
    "shenzhen": {"IN": (95.6, 86.7), "Domain_RI": (98.6, 90.0), "Domain_IN": (96.8, 91.7),
                 "All_RI": (99.1, 90.0), "All_IN": (99.5, 91.7)},
    "covid19_radiography": {"IN": (99.9, 96.5), "Domain_RI": (99.9, 95.9), "Domain_IN": (99.9, 96.0),
                            "All_RI": (100.0, 96.2), "All_IN": (100.0, 96.6)},
    "kather2016": {"IN": (98.7, 95.1), "Domain_RI": (98.1, 93.9), "Domain_IN": (98.2, 95.2),
                   "All_RI": (99.6, 94.4), "All_IN": (99.6, 95.2)},
    "messidor": {"IN": (77.5, 52.1), "Domain_RI": (97.5, 38.8), "Domain_IN": (95.5, 51.0),
                 "All_RI": (97.8, 33.6), "All_IN": (98.6, 45.3)},
    "deepdrid": {"IN": (90.0, 36.1), "Domain_RI": (99.6, 47.3), "Domain_IN": (99.3, 46.0),
                 "All_RI": (100.0, 31.6), "All_IN": (100.0, 46.2)},
}


def ranking(values, digits=1):
    """'All_IN = Domain_IN > Domain_RI' from {arm: value}: best first, values equal at `digits`
    decimals tied (the paper prints one decimal); arms without a value left out."""
    known = {arm: round(float(v), digits) for arm, v in values.items() if v is not None and v == v}
    order = sorted(known, key=lambda arm: (-known[arm], ARMS.index(arm) if arm in ARMS else len(ARMS)))
    text = ""
    for i, arm in enumerate(order):
        if i:
            text += " = " if known[arm] == known[order[i - 1]] else " > "
        text += arm
    return text


# --------------------------------------------------------------------------- settings: the paper's and the kit's

# One row per setting: (setting, what the paper states or None, the kit's choice, why, the args.json
# key holding this run's value or None, the paper's value of that key or None). Rendered in
# report.md; docs/settings.md says the same at length.
SETTINGS = [
    ("network", "DenseNet-121 + a head of FC, BN and dropout layers (Section 5.1, Fig. 1)",
     "MONAI DenseNet121 features + Linear-BN-ReLU-Dropout-Linear", "the paper names the layers only", None, None),
    ("input size", "224 × 224 (Section 5.2)", "--image-size, 224 on full data", "", "image_size", 224),
    ("BreakHis / histology", "resized to 340 × 224 keeping the aspect ratio, random 224 × 224 crops in training "
     "(Section 5.2.1)", "shorter side to the input size, random crop (train), centre crop (eval)", "", None, None),
    ("eye fundus", "resized to 340 × 224, centre crop of the eye area at 224 × 224 (Section 5.2.1)",
     "crop to the eye's bounding box, shorter side to the input size, centre crop",
     "cameras place the eye differently in the frame", None, None),
    ("All set", "22 labels (15 + 2 + 5) one-hot, binary cross-entropy, no class weights, 90/10 train/val "
     "(Sections 5.2.3, 5.4)", "the same", "", None, None),
    ("source splits", "ChestX-ray14, BreakHis: not stated; EyePACS: test grades 1-4 added, 10 % validation; "
     "All: 90/10", "every image, 90/10 train/val by patient, no test split (prepare_data.py --protocol paper)",
     "the paper's counts (112,120 + 7,909 + 49,169 = 169,198) hold every image", None, None),
    ("class weights", "balanced for EyePACS, Messidor, DeepDRiD; none for All (Sections 5.2.1, 5.3, 5.4)",
     "the same (--class-weights auto)", "", "class_weights", None),
    ("metrics", "accuracy for D1-D3, Cohen's kappa for D4-D5 (Section 5.3)", "the same (unweighted kappa)", "",
     None, None),
    ("reported epoch", "the last epoch (Table 2)", "the last epoch for Table 2 and the claims; the "
     "best-validation checkpoint is evaluated too", "", None, None),
    ("target splits", None, "patient-level, stratified, seeded train/val/test (70/15/15)",
     "a held-out test split is the only unbiased yardstick, and the paper reports validation only", None, None),
    ("optimizer", None, "AdamW with weight decay (--weight-decay)", "it trains every arm without per-arm tuning",
     "weight_decay", None),
    ("learning rate", None, "--lr: 1e-4 fine-tuning, 3e-4 pretraining",
     "fine-tuning should not wash out the pretrained features", "lr", None),
    ("schedule", None, "cosine decay to 0 after --warmup-epochs of warm-up",
     "the run then ends at a small step, so the last epoch (Table 2) is stable", "warmup_epochs", None),
    ("epochs", "\"a fixed number of epochs\", the number not stated", "--epochs, 30 on full data",
     "every arm gets the same budget", "epochs", None),
    ("batch size", None, "--batch-size, 32 on full data", "it fits DenseNet-121 at 224 px on one GPU", "batch_size",
     None),
    ("head width", None, "--hidden-dim 512", "it is a common width for a 1024-feature backbone", "hidden_dim", None),
    ("dropout", None, "--dropout 0.5", "it is a common rate before a small classifier", "dropout", None),
    ("augmentation", "random 224 crops of BreakHis only", "per domain (transforms.py): chest X-ray small rotations, "
     "zoom and shifts, no flips; histology flips, quarter turns, colour jitter; fundus flips, any rotation, jitter",
     "a chest film is upright, and tissue and the eye have no orientation", None, None),
    ("seeds", "one run per arm", "study.sh SEEDS", "several seeds show the training noise", "seed", None),
]
