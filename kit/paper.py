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

STRATEGIES = ("full", "partial", "linear")  # the kit's fine-tuning strategies (--strategy); the paper's is full

METRIC_LABELS = {  # axis labels and table headings (the paper's "Kappa Score", Figs. 3-4 and Table 2)
    "accuracy": "Accuracy",
    "kappa": "Kappa Score",
    "balanced_accuracy": "Balanced accuracy",
    "qwk": "Quadratic weighted kappa",
    "auroc": "AUROC",
    "map": "mAP",
}

METRIC_NAMES = {  # the full name, in figure titles and running text (kit/metrics.py computes them)
    "accuracy": "accuracy",
    "kappa": "Cohen's kappa",
    "balanced_accuracy": "balanced accuracy",
    "qwk": "quadratic weighted kappa",
    "auroc": "macro AUROC",
    "map": "mean average precision",
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


def metric_name(metric):
    return METRIC_NAMES.get(metric, metric)


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


# --------------------------------------------------------------------------- Tables 1 and 2 of the paper

# Table 1, "Target datasets details" (Section 5.2.2): images per class of each target, under the
# kit's class names (kit/readers.py). Kather_Texture_2016: "each class with 625 samples".
TABLE1 = {
    "shenzhen": {"normal": 326, "tuberculosis": 336},
    "covid19_radiography": {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345},
    "kather2016": {c: 625 for c in ("TUMOR", "STROMA", "COMPLEX", "LYMPHO", "DEBRIS", "MUCOSA", "ADIPOSE", "EMPTY")},
    "messidor": {"grade_0": 541, "grade_1": 154, "grade_2": 247, "grade_3": 254},
    "deepdrid": {"grade_0": 714, "grade_1": 186, "grade_2": 326, "grade_3": 282, "grade_4": 92},
}


def table1_vs_built(key, built):
    """One line: Table 1's images per class for a target next to what was built ({class: images})."""
    stated = TABLE1[key]
    cells = []
    for name, n in stated.items():
        have = int(built.get(name, 0))
        cells.append(f"{name} {have:,}" + ("" if have == n else f" (paper {n:,})"))
    total, have = sum(stated.values()), sum(int(built.get(c, 0)) for c in stated)
    verdict = ("as the paper states" if all(int(built.get(c, 0)) == n for c, n in stated.items()) else
               f"{100 * have / total:.1f} % of the paper's {total:,} (demo data, --max-per-class, --skip-bad, a "
               f"partial download or another release)")
    return f"paper (Table 1, Section 5.2.2): {total:,} images; built: {', '.join(cells)}; {verdict}"


def chance_agreement(key):
    """Cohen's chance agreement sum_c share_c^2 for predictions with Table 1's class shares."""
    counts = list(TABLE1[key].values())
    return sum((n / sum(counts)) ** 2 for n in counts)


# Table 2, "Model's performance at last epoch" (Section 5.3), in %: {target: {arm: (training, validation)}}.
# Accuracy for D1-D3, Cohen's kappa for D4-D5. One value per arm (no spread: the kit infers one run
# per arm); the paper has no test split.
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

# What the targets' data cannot give, whatever the kit does: said in report.md, the README and
# docs/settings.md. {target or None (every target): the limit}.
LIMITS = {
    "kather2016": "D3's tiles come from few slides and the download names no slide: tiles of one slide can fall in "
                  "both the train and the test split, which flatters every arm alike",
    None: "targets without patient ids (D1, D2, D3, D4) are split by image: two images of one patient can fall in "
          "different splits, and the bootstrap takes each image as its own patient",
}
NO_PATIENT_IDS = ("shenzhen", "covid19_radiography", "kather2016", "messidor")


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
# key holding this run's value or None, the paper's value of that key or None). Where the paper
# states part of a setting, the rest is marked "not stated" and the kit's filling-in says "the kit's
# inference" or "the kit's choice". Rendered in report.md; docs/settings.md says the same at length.
SETTINGS = [
    ("network", "DenseNet-121 + a head of FC, BN and dropout layers (Section 5.1, Fig. 1)",
     "MONAI DenseNet121 features + Linear-BN-ReLU-Dropout-Linear", "the paper names the layers only", None, None),
    ("input size", "224 × 224 (Section 5.2)", "--image-size, 224 on full data", "", "image_size", 224),
    ("BreakHis / histology", "resized to 340 × 224 keeping the aspect ratio, random 224 × 224 crops in training "
     "(Section 5.2.1)", "shorter side to the input size, random crop (train), centre crop (eval)", "", None, None),
    ("eye fundus", "resized to 340 × 224 keeping the aspect ratio, centre-cropped to the eye area at 224 × 224 "
     "(Section 5.2.1)", "crop to the eye's bounding box first (the kit's choice), then shorter side to the input size "
     "and a centre crop", "cameras place the eye differently in the frame: a fixed centre crop cuts some eyes",
     None, None),
    ("All set", "22 labels (15 + 2 + 5) as a one-hot vector, no class weights, 90/10 train/val (Sections 5.2.3, "
     "5.4); the loss not stated", "binary cross-entropy over the 22 labels (the kit's inference)",
     "a multi-label target takes a sigmoid per label", None, None),
    ("source splits", "ChestX-ray14, BreakHis: not stated; EyePACS: test grades 1-4 added, 10 % validation; "
     "All: 90/10", "every image, 90/10 train/val by patient, no test split (prepare_data.py --protocol paper)",
     "the paper's counts (112,120 + 7,909 + 49,169 = 169,198) hold every image", None, None),
    ("class weights", "balanced for EyePACS (Section 5.2.1), Messidor and DeepDRiD (Section 5.3); none for All "
     "(Section 5.4); D1-D3 not stated", "the same; none on D1-D3 (the kit's inference) (--class-weights auto)",
     "the paper names class weights for the eye sets only", "class_weights", None),
    ("metrics", "accuracy for D1-D3, Cohen's kappa for D4-D5 (Section 5.3); the kappa's weighting not stated",
     "unweighted Cohen's kappa (the kit's inference)", "\"Cohen kappa\" without a weighting is the unweighted one",
     None, None),
    ("reported epoch", "the last epoch (Table 2)", "the last epoch for Table 2 and the claims; the "
     "best-validation checkpoint is evaluated too", "", None, None),
    ("target splits", None, "patient-level, stratified, seeded train/val/test (70/15/15)",
     "a held-out test split is the only unbiased yardstick, and the paper reports validation only", None, None),
    ("optimizer and learning rate", None, "recipe:optimizer", "the scripts ship AdamW (--lr 1e-4 fine-tuning, 3e-4 "
     "pretraining, --weight-decay 1e-4), which trains every arm without per-arm tuning", None, None),
    ("schedule", None, "recipe:schedule", "the scripts ship a cosine decay to 0 after --warmup-epochs, which ends a "
     "run at a small step, so the last epoch (Table 2) is stable", None, None),
    ("loss", "class weights as above", "recipe:loss", "", None, None),
    ("epochs", "\"a fixed number of epochs\", the number not stated", "--epochs, 30 on full data",
     "every arm gets the same budget", "epochs", None),
    ("batch size", None, "--batch-size, 32 on full data", "it fits DenseNet-121 at 224 px on one GPU", "batch_size",
     None),
    ("head width", None, "--hidden-dim 512", "it is a common width for a 1024-feature backbone", "hidden_dim", None),
    ("dropout", None, "--dropout 0.5", "it is a common rate before a small classifier", "dropout", None),
    ("augmentation", "random 224 crops of BreakHis only", "recipe:augmentation",
     "transforms.py's per-domain tail: no flips for a chest film, which is upright; flips and turns for tissue and "
     "the eye, which have no orientation", None, None),
    ("runs per arm", "not stated (Table 2 gives one value per arm and no spread)",
     "one run per arm unless the seeds setting lists several (one run per arm is the kit's inference)",
     "the training noise is measured only across runs: verdicts need two or more seeds", "seed", None),
]
