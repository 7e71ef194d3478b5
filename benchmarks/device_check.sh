#!/usr/bin/env bash
# The GPU figures of issue 22 on a lent device machine (the library's `device` tool), in one call of about 7 minutes:
# `bench_families.py --gpu` (SDXL and FLUX.1-dev at 1024^2, random weights drawn on the GPU, bf16) rewrites the
# "Model families (GPU)" section of benchmarks/RESULTS.md.
#
# A device call takes at most 64 MiB of working tree, and the shipped world models alone are 63 MB (the GPU part needs
# none of them), while the device's Python lacks diffusers, jsonlines, pycocotools and open-clip's vocabulary. So:
#   here:    benchmarks/device_check.sh prepare   # (venv active) those wheels into .whl/; synthseg/assets out of the index
#   device:  run(command="bash benchmarks/device_check.sh run", carry=[".whl"], timeout_s=560)
#   here:    benchmarks/device_check.sh restore   # the index as it was: always, whether the run worked or not
#   then copy the returned RESULTS.md over benchmarks/RESULTS.md (nothing else writes it meanwhile) and commit.
# REPEATS (default 3) sets the back-to-back pairs per ratio on the device.
set -euo pipefail
cd "$(dirname "$0")/.."

HEAVY=synthseg/assets
EXCLUDE=/synthseg/assets/
WHEELS="diffusers==0.42.1 transformers==5.23.0 regex==2026.12.2 open-clip-torch==3.3.0 jsonlines==4.0.0 pycocotools==2.0.11"

prepare() {
    if ! git diff --cached --quiet; then
        echo "error: the index has staged changes; commit or unstage them first" >&2
        exit 1
    fi
    if [ ! -d .whl ]; then  # the device's Python is 3.12 on x86-64
        python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS
    fi
    git rm -r -q --cached "$HEAVY"
    grep -qxF "$EXCLUDE" .git/info/exclude 2>/dev/null || echo "$EXCLUDE" >>.git/info/exclude
    local tree wheels
    tree=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- | tail -1 | cut -f1)  # what travels
    wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
    echo "travels: $((tree / 1048576)) MiB of tree + $((wheels / 1048576)) MiB of wheels (limit 64 MiB); run restore after the device call"
}

restore() {
    git reset -q -- "$HEAVY"
    if [ -f .git/info/exclude ]; then
        grep -vxF "$EXCLUDE" .git/info/exclude >.git/info/exclude.new || true
        mv .git/info/exclude.new .git/info/exclude
    fi
    git status --short | head
}

run() {  # on the device machine
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    timeout 480 python3 benchmarks/bench_families.py --gpu --repeats "${REPEATS:-3}" 2>&1 | tee "$OUT/bench_families.log"
    cp benchmarks/RESULTS.md "$OUT/"
}

case "${1:-}" in
    prepare | restore | run) "$1" ;;
    *)
        echo "error: usage: benchmarks/device_check.sh prepare|run|restore" >&2
        exit 1
        ;;
esac
