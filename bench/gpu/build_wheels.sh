#!/usr/bin/env bash
# Build bench/gpu/wheels/: the packages the benchmarks import that the GPU box (the device's
# 'cuda' image: Python 3.12, torch 2.11, transformers 5.17, huggingface_hub 1.33, no diffusers)
# lacks, or has in a version our code is not tested with. Pure-Python wheels, --no-deps; their
# other requirements (numpy, regex, requests, safetensors, Pillow, filelock, tokenizers 0.23,
# huggingface_hub >= 1.31, zipp, peft, accelerate, psutil, scipy, opencv) are already there.
#
#   bash bench/gpu/build_wheels.sh            # then carry bench/gpu/wheels (git-ignored)
#
# Checks that the folder stays well inside the 64 MiB the device takes with the working tree.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../../venv/bin/python}
[ -x "$PY" ] || PY=python3
rm -rf wheels.tmp && mkdir wheels.tmp
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d wheels.tmp \
    diffusers==0.42.1 transformers==5.23.0 importlib_metadata==8.7.0
rm -rf wheels && mv wheels.tmp wheels
ls -l wheels
kib=$(du -sk wheels | cut -f1)
echo "wheels/: $((kib / 1024)) MiB"
if [ "$kib" -gt $((40 * 1024)) ]; then
    echo "error: wheels/ is over 40 MiB (the working tree and the wheels travel within 64 MiB)" >&2
    exit 1
fi
