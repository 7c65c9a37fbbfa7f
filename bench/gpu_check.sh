#!/usr/bin/env bash
# The GPU check on a machine with an NVIDIA GPU, from the repository root:
#     bash bench/gpu_check.sh [extra bench/gpu_check.py options]
# The machine needs python3 with torch (CUDA), numpy, pandas, h5py, pillow, pyyaml, matplotlib,
# scipy and tqdm. The other packages bench/gpu_check.py imports (segment_anything, laplace-torch
# and its dependencies, jsonschema and its dependencies, torchvision) come as wheels in .whl/
# and are installed, with no network, into /tmp/site; torchvision only where the machine has
# none. Output: $OUT/gpu_check.log and $OUT/gpu_check.json (OUT defaults to /tmp).
set -euo pipefail
OUT="${OUT:-/tmp}"
SITE=/tmp/site
SHIM=/tmp/torchvision_standin
mkdir -p "$OUT" "$SITE"

# Installs .whl/*.whl into $SITE (torchvision's only where the machine has no torchvision).
install_wheels() {
    local wheel wheels=()
    shopt -s nullglob
    for wheel in .whl/*.whl; do
        if [[ $wheel == */torchvision-* ]] && python3 -c "import torchvision" 2>/dev/null; then
            continue # the machine's own torchvision fits its torch
        fi
        wheels+=("$wheel")
    done
    if ((${#wheels[@]})); then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${wheels[@]}"
    fi
}

# A torchvision wheel is built for one torch release and CUDA version. Where it cannot load
# here, a stand-in takes its place: the two functions segment_anything's predictor uses
# (ResizeLongestSide.apply_image: the PIL bilinear resize torchvision applies to a PIL image,
# so SAM sees the same pixels), and for every other torchvision module or name an empty
# placeholder module, so that what imports torchvision optionally (torchmetrics through
# laplace-torch, SAM's automatic mask generator) still imports. The check calls none of them.
write_torchvision_standin() {
    rm -rf "$SITE"/torchvision "$SITE"/torchvision-*.dist-info "$SITE"/torchvision.libs
    rm -rf "$SHIM" && mkdir -p "$SHIM/torchvision/transforms"
    cat >"$SHIM/torchvision/__init__.py" <<'PY'
"""Stand-in for torchvision (bench/gpu_check.sh): transforms.functional is real, every other
submodule or name is an empty placeholder module that fails when used."""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types


def _submodule(parent, name):
    if name.startswith("__"):
        raise AttributeError(name)
    return importlib.import_module(f"{parent}.{name}")


class _Placeholder(types.ModuleType):
    def __getattr__(self, name):
        return _submodule(self.__name__, name)


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.append(_PlaceholderFinder())  # after the path finders: real files win


def __getattr__(name):
    return _submodule(__name__, name)
PY
    : >"$SHIM/torchvision/transforms/__init__.py"
    cat >"$SHIM/torchvision/transforms/functional.py" <<'PY'
from PIL import Image


def to_pil_image(array):
    return Image.fromarray(array)


def resize(image, size):
    return image.resize((int(size[1]), int(size[0])), Image.BILINEAR)
PY
}

check() {
    install_wheels
    export PYTHONPATH="$SITE:$PWD"
    if ! python3 -c "import torchvision.transforms.functional" 2>/dev/null; then
        echo "torchvision does not load with this torch; using the stand-in in $SHIM"
        write_torchvision_standin
        export PYTHONPATH="$SHIM:$PYTHONPATH"
    fi
    export PYTHONUNBUFFERED=1
    export TQDM_DISABLE=1 # progress bars would bury the table in the log
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
    python3 bench/gpu_check.py --json "$OUT/gpu_check.json" "$@"
}

check "$@" 2>&1 | tee "$OUT/gpu_check.log"
