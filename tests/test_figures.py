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
