"""How far the eval chain in stock MONAI (transforms.stock_eval_transforms, the exported bundle's
preprocessing) is from the kit's own (transforms.eval_transforms), on your images and your model:
the largest difference of the model's input, in 8-bit grey levels, and of its probabilities.

With --alternatives, the same for the stock MONAI transform each of the chain's torch expressions
stands in for: ScaleIntensityd for the min-max (cxr), Resized(anti_aliasing=True) for the resize
(cxr; MONAI has no shorter-side resize for the others), CropForegroundd keeping the pixels above
the threshold for the eye box (efi). They show why those three steps are expressions.

    python bench/bench_stock_chain.py --checkpoint OUT/finetune/shenzhen/Domain_RI/seed0/best.pt \\
        OUT/demo_data/shenzhen/ChinaSet_AllFiles/CXR_png --alternatives
    python bench/bench_stock_chain.py --checkpoint best.pt my_images/ --image-size 224
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import transforms  # noqa: E402
from kit import inputs, models  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders (recursive) and CSVs with an `image` column")
    parser.add_argument("--checkpoint", type=str, required=True, help="a fine-tuned best.pt / last.pt")
    parser.add_argument("--image-size", type=int, default=None, help="input side in px (default: the checkpoint's)")
    parser.add_argument("--alternatives", action=argparse.BooleanOptionalAction, default=False,
                        help="also measure the stock transforms the chain's expressions replace")
    return parser


def alternatives(config, domain, size):
    """(name, config) for each stock transform that could replace one of the chain's expressions."""
    found = []
    for i, item in enumerate(config):
        swap = None
        if item.get("func") == transforms.MIN_MAX_EXPRESSION:
            swap = "ScaleIntensityd", {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0}
        elif item.get("_target_") == "Lambdad" and "interpolate" in item["func"] and domain == "cxr":
            swap = "Resized(anti_aliasing=True)", {"_target_": "Resized", "keys": "image", "spatial_size": [size, size],
                                                   "mode": "bilinear", "anti_aliasing": True}
        elif item.get("_target_") == "CropForegroundd":
            swap = "CropForegroundd(x > threshold)", dict(item, select_fn={
                "_target_": "torch.gt", "_mode_": "callable", "other": transforms.EYE_THRESHOLD})
        if swap:
            changed = copy.deepcopy(config)
            changed[i] = swap[1]
            found.append((swap[0], changed))
    return found


def chain_from(config):
    from monai.bundle import ConfigParser

    return ConfigParser({"chain": {"_target_": "Compose", "transforms": config}}).get_parsed_content("chain")


def main(args):
    images, _ = inputs.find_inputs(args.inputs)
    model, meta = models.load_model(args.checkpoint)
    domain, size = meta["domain"], args.image_size or meta["image_size"]
    kit = transforms.eval_transforms(domain, image_size=size)
    expected = torch.stack([kit({"image": path})["image"] for path in images])
    config = transforms.stock_eval_config(domain, image_size=size)
    std = torch.tensor(transforms.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = torch.cat([model(batch) for batch in expected.split(64)]).float()
    activation = torch.sigmoid if meta["task"] == "multilabel" else (lambda x: torch.softmax(x, dim=1))
    print(f"{len(images)} {domain} images at {size} px, {Path(args.checkpoint)}")
    runs = [("stock MONAI chain", config)] + (alternatives(config, domain, size) if args.alternatives else [])
    for name, variant in runs:
        chain = chain_from(variant)
        got = torch.stack([chain({"image": path})["image"].as_tensor() for path in images])
        with torch.no_grad():
            logits = torch.cat([model(batch) for batch in got.split(64)]).float()
        levels = float(((got - expected).abs() * std).max() * 255)
        probs = float((activation(logits) - activation(reference)).abs().max())
        print(f"{name:32s} input: max {levels:.4f} 8-bit levels apart; probabilities: max {probs:.2e} apart")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
