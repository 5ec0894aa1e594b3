"""kit.figures: learning curves per target and for all targets, the forest plot and label efficiency,
as plot_results.py draws them for hand-written runs trees; one style per arm."""
import numpy as np
from PIL import Image

from kit import figures


def test_figures_are_real_images(plain_study):
    root, _ = plain_study
    figures = root / "figures"
    names = ["shenzhen", "kather2016", "messidor", "learning_curves", "shenzhen_loss", "messidor_loss"]
    for name in names:
        with Image.open(figures / f"{name}.png") as image:
            image.verify()
        with Image.open(figures / f"{name}.png") as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[0] > 300 and pixels.shape[1] > 800, name
        colours = pixels.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
        assert len(np.unique(colours)) > 20, name  # not one flat colour
    # The overview grid has one row of panels per target: taller than one target figure.
    with Image.open(figures / "learning_curves.png") as grid, Image.open(figures / "shenzhen.png") as one:
        assert grid.height > 2 * one.height


def test_forest_label_efficiency_and_curves_of_a_seeded_study(seeded_study):
    root, _ = seeded_study
    for name in ("forest", "label_efficiency", "learning_curves", "shenzhen"):
        with Image.open(root / "figures" / f"{name}.png") as image:
            assert image.width > 500 and image.height > 300, name


def test_every_arm_keeps_its_style():
    assert figures.arm_style("IN", []) == ("tab:blue", "o")
    assert figures.arm_style("All_IN", ["zz"]) == figures.ARM_STYLES["All_IN"]
    extra = ["custom_a", "custom_b"]
    styles = [figures.arm_style(arm, extra) for arm in extra]
    assert styles[0] != styles[1] and not set(styles) & set(figures.ARM_STYLES.values())


def curves(train, val, sd=float("nan")):
    """One arm's seed-mean curves (tables.mean_curves' columns) from per-epoch train and val values."""
    import pandas as pd

    rows = [{"epoch": e + 1, "split": split, "value": v, "value_sd": sd, "loss": 1 - v, "loss_sd": sd}
            for split, values in (("train", train), ("val", val)) for e, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_training_and_validation_panels_of_a_target_share_their_y_range(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    runs = {"IN": curves([0.47, 0.60, 0.75], [0.50, 0.60, 0.68]),
            "All_IN": curves([0.52, 0.66, 0.74], [0.55, 0.61, 0.66])}
    for column in ("value", "loss"):
        fig = figures.plot_target("shenzhen", runs, "accuracy", column, tmp_path / f"{column}.png", 60, [], 1)
        train, val = fig.axes[:2]
        assert (train.get_title(), val.get_title()) == ("Training", "Validation")
        assert train.get_ylim() == val.get_ylim(), column
        scale = 100 if column == "value" else 1
        values = [v * scale if column == "value" else 1 - v for v in (0.47, 0.75)]
        low, high = train.get_ylim()
        assert low <= min(values) and high >= max(values)  # both panels show the whole range of both splits
    fig = figures.plot_overview({"shenzhen": runs, "messidor": {"IN": curves([0.2, 0.9, 0.95], [0.1, 0.3, 0.35])}},
                                {"shenzhen": "accuracy", "messidor": "kappa"}, tmp_path / "overview.png", 60, [], 1)
    (shenzhen_train, shenzhen_val), (messidor_train, messidor_val) = fig.axes[:2], fig.axes[2:4]
    assert shenzhen_train.get_ylim() == shenzhen_val.get_ylim()
    assert messidor_train.get_ylim() == messidor_val.get_ylim() != shenzhen_train.get_ylim()  # one range per target


def test_a_target_figure_is_titled_with_its_name_and_the_metric_full_name(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    runs = {"IN": curves([0.5, 0.7], [0.4, 0.6])}
    titles = {}
    for target, metric in (("mytask", "qwk"), ("shenzhen", "accuracy"), ("messidor", "kappa"),
                           ("mytask", "balanced_accuracy")):
        fig = figures.plot_target(target, runs, metric, "value", tmp_path / "t.png", 60, [], 1)
        titles[target, metric] = fig.get_suptitle()
    assert titles == {("mytask", "qwk"): "mytask — quadratic weighted kappa",
                      ("shenzhen", "accuracy"): "D1 Shenzhen CXR — accuracy",
                      ("messidor", "kappa"): "D4 Messidor — Cohen's kappa",
                      ("mytask", "balanced_accuracy"): "mytask — balanced accuracy"}
    fig = figures.plot_target("mytask", runs, "qwk", "loss", tmp_path / "t.png", 60, [], 1)
    assert fig.get_suptitle() == "mytask — loss"
