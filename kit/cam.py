"""Where the model looked: Grad-CAM heat maps over the model's input, as PNGs.

Grad-CAM (Selvaraju et al. 2017, MONAI's ``monai.visualize.GradCAM``) on the output of the last
dense block (``features.denseblock4``, 1024 channels at 1/32 of the input side): each channel's
activation weighted by the mean gradient of the chosen class's logit, summed, ReLU, upsampled
bilinearly to the input and scaled to [0, 1] per image, the largest value 1 (``unit_range``:
MONAI's default normaliser maps (min, max) to (1, 0), which would paint the least used region
hottest). ``features.norm5`` would be the same map up to its per-channel affine, but the model's
in-place ReLU after it does not mix with the backward hooks Grad-CAM needs.

``GradCam`` takes the normalised batch the model sees (transforms.apply_tail's output);
``save_overlay`` writes a PNG: the input as the model saw it (left) and the heat map over it
(right, jet colours, red = most weight), above a caption: the class the map explains and its
probability (left), the colour bar of the map (right). predict.py --cam and evaluate.py --cam use
both; ``pick_examples`` chooses evaluate's images per class, correct and wrong.
"""
import copy
import functools
import re
from pathlib import Path

import numpy as np
import torch
from monai.visualize import GradCAM
from monai.visualize.class_activation_maps import ModelWithHooks

TARGET_LAYER = "features.denseblock4"
CAM_BATCH = 8  # images per backward pass: Grad-CAM keeps every activation of the batch for the gradient
ALPHA = 0.45  # weight of the heat map's colour over the grey picture
MIN_SIDE = 256  # px: a smaller model input is enlarged (nearest neighbour) in the PNG so it can be seen


class _PerImageClass(ModelWithHooks):
    """MONAI's hooked model, scoring each image's own class (MONAI's indexes one class for all)."""

    def class_score(self, logits, class_idx):
        index = torch.as_tensor(class_idx, device=logits.device).reshape(-1, 1).expand(len(logits), 1)
        return logits.gather(1, index).squeeze(1)


def unit_range(maps):
    """Each map (B, 1, ...) scaled to [0, 1] by its own minimum and maximum, largest = 1 (a flat map: 0).
    MONAI's default normalizer maps (min, max) to (1, 0): it flips the map, which is not what a heat map shows."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return ((maps - low.view(shape)) / scale.view(shape)).clamp_(0, 1)


class GradCam:
    """Grad-CAM for a model of this kit, on a copy of it (the hooks stay off the model that predicts)."""

    def __init__(self, model, target_layer=TARGET_LAYER):
        net = copy.deepcopy(model).float().eval()
        self.cam = GradCAM(nn_module=_PerImageClass(net, target_layer, register_forward=True,
                                                    register_backward=True), target_layers=target_layer,
                           postprocessing=unit_range)

    def __call__(self, images, class_idx):
        """Normalised images (B, 3, S, S) and one class index per image -> heat maps (B, S, S) in
        [0, 1] on the CPU (all zeros where no channel pushes the class up)."""
        class_idx = torch.as_tensor(class_idx, dtype=torch.int64)
        maps = []
        for start in range(0, len(images), CAM_BATCH):
            batch = images[start:start + CAM_BATCH].float().contiguous()
            with torch.enable_grad():
                heat = self.cam(batch, class_idx=class_idx[start:start + CAM_BATCH].to(batch.device))
            maps.append(heat[:, 0].detach().float().cpu())
        return torch.nan_to_num(torch.cat(maps), nan=0.0).clamp_(0, 1)


def overlay(pixels, heat):
    """uint8 (C, S, S) model-input pixels (C = 1 or 3) and a heat map (S, S) in [0, 1] -> uint8
    (S', 2 S', 3): the picture left, the heat map over it right, enlarged to at least MIN_SIDE."""
    from matplotlib import colormaps

    picture = torch.as_tensor(pixels).float().div(255)
    picture = picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture[:3]
    picture = picture.permute(1, 2, 0).numpy()
    colours = colormaps["jet"](np.asarray(heat, dtype=np.float32))[..., :3]
    grey = picture.mean(axis=2, keepdims=True)
    blended = (1 - ALPHA) * grey + ALPHA * colours
    both = np.concatenate([picture, blended], axis=1)
    scale = max(1, -(-MIN_SIDE // picture.shape[0]))
    both = both.repeat(scale, axis=0).repeat(scale, axis=1)
    return (both * 255).round().clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _font(size):
    """DejaVu Sans, the font matplotlib ships: the same captions on every machine."""
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")), size)


def caption_lines(class_name, prob):
    """The caption under the input: which class the map explains, and the model's probability of it."""
    return [f"class: {class_name}", f"probability: {prob:.3f}"]


def _fit(draw, text, font, width):
    """`text`, cut with an ellipsis where it is wider than `width` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def captioned(pixels, heat, *, class_name, prob):
    """overlay() above a white strip: under the input the class the map explains and its probability
    (caption_lines), under the heat map the colour bar of the map (jet, 0 = no weight, 1 = the most
    weight in this image). uint8 (S' + caption, 2 S', 3); the top S' rows are overlay()'s."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    both = overlay(pixels, heat)
    side = both.shape[0]
    size = max(12, side // 16)  # px, 16 at the smallest side (MIN_SIDE)
    margin = size // 2
    font = _font(size)
    strip = Image.new("RGB", (both.shape[1], 3 * size + 2 * margin), "white")
    draw = ImageDraw.Draw(strip)
    for row, line in enumerate(caption_lines(class_name, prob)):
        draw.text((margin, margin + row * round(1.3 * size)), _fit(draw, line, font, side - 2 * margin), fill="black",
                  font=font)
    left, right = side + margin, both.shape[1] - margin
    bar = colormaps["jet"](np.linspace(0, 1, right - left))[:, :3]
    strip.paste(Image.fromarray((np.repeat(bar[None], size, axis=0) * 255).round().astype(np.uint8)),
                (left, margin))
    label_y = margin + size + 2
    draw.text((left, label_y), "0", fill="black", font=font)
    draw.text(((left + right) // 2, label_y), "Grad-CAM weight", fill="black", font=font, anchor="ma")
    draw.text((right, label_y), "1", fill="black", font=font, anchor="ra")
    return np.concatenate([both, np.asarray(strip)], axis=0)


def save_overlay(path, pixels, heat, *, class_name, prob):
    """captioned() as a PNG at `path` (folders made); written to a temporary name, then renamed."""
    from PIL import Image

    from . import files

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.write_atomic(path) as handle:  # a full disk is one line naming the file
        Image.fromarray(captioned(pixels, heat, class_name=class_name, prob=prob)).save(handle, format="PNG")


def normalised(pixels, tails, device):
    """The loader's uint8 pixels and tails -> what the model sees (transforms.apply_tail), on `device`."""
    import transforms

    return transforms.apply_tail(torch.as_tensor(pixels).to(device), torch.as_tensor(tails))


def file_name(image, taken):
    """`<stem>.png` for an input path, unique within `taken` (a set, updated): the same stem twice
    (e.g. IM0001 of two series) gets `_2`, `_3`..."""
    stem = re.sub(r"[^\w.-]+", "_", Path(str(image)).name)
    for suffix in (".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}.png"
    taken.add(name)
    return name


def folder_name(class_name):
    """A class name as a folder name ('breakhis/malignant' -> 'breakhis_malignant')."""
    return re.sub(r"[^\w. -]+", "_", str(class_name)).strip() or "class"


def pick_examples(task, classes, targets, probs, n):
    """evaluate.py --cam N: per class, up to N correctly and N wrongly decided images, the most
    confident first. Returns [(row, class index to explain, '<class>/<correct|wrong>'), ...].

    multiclass: the images of true class c; correct when the prediction is c; the map explains
    the predicted class (what the model looked at to decide). multilabel: the images carrying
    label c; correct when p_c >= 0.5; the map explains label c.
    """
    picks = []
    probs = np.asarray(probs)
    for c, name in enumerate(classes):
        if task == "multiclass":
            rows = np.flatnonzero(np.asarray(targets) == c)
            preds = probs[rows].argmax(axis=1)
            correct, explained, confidence = preds == c, preds, probs[rows].max(axis=1)
        else:
            rows = np.flatnonzero(np.asarray(targets)[:, c] == 1)
            correct = probs[rows, c] >= 0.5
            explained = np.full(len(rows), c)
            confidence = np.where(correct, probs[rows, c], 1 - probs[rows, c])
        for outcome, mask in (("correct", correct), ("wrong", ~correct)):
            chosen = np.flatnonzero(mask)
            chosen = chosen[np.argsort(-confidence[chosen], kind="stable")][:n]
            picks += [(int(rows[i]), int(explained[i]), f"{folder_name(name)}/{outcome}") for i in chosen]
    return picks


def write_examples(folder, model, dataset, *, task, classes, targets, probs, n, device):
    """evaluate.py --cam N: the heat maps of pick_examples' images as
    FOLDER/<class>/<correct|wrong>/<image name>.png, read through `dataset` (the evaluation's
    data.ImageDataset, so the pictures are what the model saw), and FOLDER/cam.csv listing them
    (image, file, true class, class explained, its probability). Returns the number of maps."""
    from . import files

    folder = Path(folder)
    picks = pick_examples(task, classes, targets, probs, n)
    explain = GradCam(model)
    taken, listed = {}, []
    for start in range(0, len(picks), CAM_BATCH):
        chunk = picks[start:start + CAM_BATCH]
        items = [dataset[row] for row, _, _ in chunk]
        pixels, tails = torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items])
        heat = explain(normalised(pixels, tails, device), [c for _, c, _ in chunk])
        for (row, c, where), picture, heat_map in zip(chunk, pixels, heat):
            path = folder / where / file_name(dataset.images[row], taken.setdefault(where, set()))
            save_overlay(path, picture, heat_map, class_name=classes[c], prob=float(probs[row][c]))
            listed.append({"image": dataset.images[row], "file": path.relative_to(folder).as_posix(),
                           "folder": where, "explained_class": classes[c], "prob": round(float(probs[row][c]), 6)})
    if listed:
        files.write_csv(listed, folder / "cam.csv", list(listed[0]))
    return len(listed)
