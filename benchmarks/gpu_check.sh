#!/usr/bin/env bash
# GPU check, on a machine with one CUDA GPU, in well under 8 minutes:
#   1. generate a Pets-sized data set (37 breeds x 200 photos at Pets' sizes and names) and its
#      archive, so nothing is downloaded;
#   2. run the whole DAG with the lesson's defaults (weights: none; tracking off) through
#      Snakemake from a cold start, and print each stage's seconds and the total;
#   3. run benchmarks/input_pipeline.py: every training stage's img/s against its ceiling, and
#      what torch.compile's CUDA graphs would buy.
# Usage: bash benchmarks/gpu_check.sh [results-folder]   (default: $OUT or benchmarks/results)
# Offline machines: put wheels of missing packages (snakemake, pydantic, ...) in .whl/.
# A CPU rehearsal of the script itself: PETS_CHECK_PER_CLASS=3 PETS_CHECK_QUICK=1 bash ...
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
results=${1:-${OUT:-$repo/benchmarks/results}}
work=${PETS_WORK:-/tmp/pets-gpu-check}
mkdir -p "$results"
rm -rf "$work" && mkdir -p "$work/bin"
cd "$repo"

if [ -d .whl ] && ! python3 -c "import snakemake, pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site" .whl/*.whl
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$work/site/bin:$PATH"
fi
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"  # the package, not installed
# Stage commands call `python`; some images have only python3 (a wrapper keeps its venv).
printf '#!/bin/sh\nexec "%s" "$@"\n' "$(command -v python3)" > "$work/bin/python"
chmod +x "$work/bin/python"
export PATH="$work/bin:$PATH" PETS_TRACKING=0 PYTHONUNBUFFERED=1
cores=$(nproc)
{
echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
echo "cores: $cores"

echo "== 1. data set"
start=$(date +%s.%N)
python -m pets.synthetic "$work/data/oxford-iiit-pet" --per-class "${PETS_CHECK_PER_CLASS:-200}" --threads "$cores" \
    --tgz "$work/data/oxford-iiit-pet.tgz"
echo "generated in $(python -c "print(round($(date +%s.%N) - $start, 1))") s"

echo "== 2. the whole DAG (snakemake --cores $cores)"
project="$work/project"
mkdir -p "$project"
cp -r Snakefile dvc.yaml params.yaml profiles envs workflow src "$project"/
python - "$project/params.yaml" "$work/data/oxford-iiit-pet.tgz" <<'PY'
import os, sys, yaml
path, archive = sys.argv[1:]
params = yaml.safe_load(open(path))
params["data"] = {"url": archive, "md5": None}
params["tracking"]["enabled"] = False
for stage in ("train_frozen", "train_resnet50"):
    params[stage]["weights"] = "none"  # offline: no ImageNet download
if os.environ.get("PETS_CHECK_QUICK"):  # rehearsing on a CPU: tiny sizes
    params["cache"]["size"] = 64
    params["preview"]["size"] = 48
    for stage in ("train_frozen", "train_resnet50"):
        params[stage].update(size=48, bs=8, epochs=1)
    params["lr_find"].update(bs=8, num_it=10)
    params["finetune"].update(bs=8, epochs=1)
open(path, "w").write(yaml.safe_dump(params, sort_keys=False))
PY
cd "$project"
dag_start=$(date +%s.%N)
snakemake --cores "$cores" --quiet rules > "$work/snakemake.log" 2>&1 || { tail -50 "$work/snakemake.log"; exit 1; }
dag_end=$(date +%s.%N)
echo "stage seconds (each stage's own timer, process start excluded):"
grep -h "done in" logs/*.log logs/*/*.log | sort -t' ' -k4 -n -r
python - "$dag_start" "$dag_end" <<'PY'
import json, sys, glob
start, end = map(float, sys.argv[1:])
download = 0.0
for line in open("logs/download.log"):
    if "download: done in" in line:
        download = float(line.split()[3])
print(f"whole DAG wall time: {end - start:.1f} s; without the download stage "
      f"(extracting the archive, {download:.1f} s): {end - start - download:.1f} s")
for path in sorted(glob.glob("metrics/*.json")) + sorted(glob.glob("metrics/interpret/*.json")):
    numbers = json.load(open(path))
    shown = {k: round(v, 4) for k, v in numbers.items() if k in ("error_rate", "valid_loss", "error_rate_low", "error_rate_high")}
    print(path, shown)
PY
cp reports/index.html "$results/gpu_check_report.html" 2>/dev/null || true
cd "$repo"

echo "== 3. input pipeline against each stage's ceiling"
python benchmarks/input_pipeline.py ${PETS_CHECK_QUICK:+--quick} --compile
cp benchmarks/results/input_pipeline.json "$results/" 2>/dev/null || true

echo "== 4. host memory of a training stage with a Pets-sized cache"
python benchmarks/host_memory.py ${PETS_CHECK_QUICK:+--quick}
cp benchmarks/results/host_memory.json "$results/" 2>/dev/null || true

if [ -z "${PETS_CHECK_QUICK:-}" ]; then  # compiling on a CPU rehearsal would take minutes
echo "== 5. train_frozen with compile: true (torch.compile, CUDA graphs) on the same data"
cd "$project"
python - <<'PY'
import yaml
params = yaml.safe_load(open("params.yaml"))
params["train_frozen"]["compile"] = True
open("params-compiled.yaml", "w").write(yaml.safe_dump(params, sort_keys=False))
PY
start=$(date +%s.%N)
python workflow/scripts/train_frozen.py --params params-compiled.yaml --model "$work/compiled.pth" \
    --metrics "$work/compiled.json" --history "$work/compiled.csv" \
    --model-info "$work/compiled-info.json" --threads 4
echo "compiled train_frozen wall time: $(python -c "print(round($(date +%s.%N) - $start, 1))") s"
grep -h "train_frozen: done in" logs/train_frozen.log | sed 's/^/eager /'
cd "$repo"
fi
} 2>&1 | tee "$results/gpu_check.log"
