"""Where torchvision's ImageNet DenseNet-121 file is: an explicit path, the torch hub cache, or a download
there. No torch import unless it downloads, so the study workflow finds the file at once when it starts."""
import os
import socket
import sys
from pathlib import Path

from .files import first_line

IMAGENET_FILE = "densenet121-a639ec97.pth"  # torchvision's ImageNet DenseNet-121 weights
DOWNLOAD_TIMEOUT = 30  # seconds without an answer before the download counts as failed
IMAGENET_URL = f"https://download.pytorch.org/models/{IMAGENET_FILE}"


class ImageNetWeightsUnavailable(FileNotFoundError):
    """The ImageNet weights file is neither on disk nor downloadable; the message says how to supply it."""


def hub_dir() -> Path:
    """torch.hub.get_dir(): $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub (where
    torch is loaded already, torch's own answer, which honours torch.hub.set_dir)."""
    if "torch.hub" in sys.modules:
        return Path(sys.modules["torch.hub"].get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


def _how_to_supply(dst):
    return (f"Download {IMAGENET_URL} on a machine with internet access and put it at {dst} "
            "(the torch hub cache; set TORCH_HOME to move it), or pass its path: --imagenet-weights PATH "
            "to the training scripts, imagenet_weights=PATH to the study workflow (--config).")


def find_imagenet_weights(path=None, *, download=True):
    """The path of torchvision's ImageNet DenseNet-121 weights.

    An explicit ``path`` must exist. Otherwise the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/densenet121-a639ec97.pth``) is used, downloading the
    file there when ``download`` is true. Raises ImageNetWeightsUnavailable otherwise.
    """
    dst = hub_dir() / "checkpoints" / IMAGENET_FILE
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ImageNetWeightsUnavailable(f"{path}: ImageNet weights file not found. {_how_to_supply(dst)}")
        return path
    if dst.is_file():
        return dst
    if not download:
        raise ImageNetWeightsUnavailable(f"{dst}: ImageNet weights not found (download disabled). "
                                         f"{_how_to_supply(dst)}")
    import torch.hub

    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # an offline machine that drops packets must not hang the study
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(IMAGENET_URL, str(dst), progress=False)  # temp file, then rename
    except Exception as err:
        raise ImageNetWeightsUnavailable(f"{dst}: ImageNet weights not found and the download failed "
                                         f"({first_line(err)}). {_how_to_supply(dst)}") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return dst
