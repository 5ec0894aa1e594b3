#!/usr/bin/env bash
# Install PyTorch into the Python given as $1, choosing the build for this machine:
#   a visible NVIDIA GPU (nvidia-smi answers) -> the default build from PyPI (CUDA);
#   no GPU -> the CPU build (a local or configured torch==<version>+cpu wheel, else PyTorch's CPU index),
#   which is ~200 MB instead of several GB.
# Choose yourself with TORCH_INDEX=<index url> (e.g. https://download.pytorch.org/whl/cu126) or
# TORCH_BUILD=cpu|cuda; TORCH_VERSION sets the version (default below).
set -euo pipefail
python=${1:?usage: tools/install_torch.sh PYTHON}
version=${TORCH_VERSION:-2.13.0}
pip=("$python" -m pip install --quiet)
if "$python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
  echo "torch $version already installed"; exit 0
fi
if [[ -n "${TORCH_INDEX:-}" ]]; then
  echo "installing torch==$version from $TORCH_INDEX"
  exec "${pip[@]}" "torch==$version" --index-url "$TORCH_INDEX"
fi
build=${TORCH_BUILD:-}
if [[ -z "$build" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then build=cuda; else build=cpu; fi
fi
if [[ "$build" == cuda ]]; then
  echo "installing torch==$version (CUDA build from PyPI: an NVIDIA GPU is visible)"
  exec "${pip[@]}" "torch==$version"
fi
echo "installing torch==$version, CPU build (no NVIDIA GPU visible; TORCH_BUILD=cuda to override)"
"${pip[@]}" "torch==$version+cpu" 2>/dev/null \
  || "${pip[@]}" "torch==$version" --index-url https://download.pytorch.org/whl/cpu
