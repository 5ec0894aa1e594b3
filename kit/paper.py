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
