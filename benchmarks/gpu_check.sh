#!/usr/bin/env bash
# GPU check, on a machine with one CUDA GPU, in well under 8 minutes:
#   1. generate a Pets-sized data set (37 breeds x 200 photos at Pets' sizes and names) and its
#      archive, so nothing is downloaded;
#   2. run the whole DAG with the lesson's defaults (weights: none; tracking off) through
#      Snakemake from a cold start: each stage's seconds split into start-up, work and
#      recording (pets.timings), the sum of the fixed costs, the total, the error rates;
#   3. benchmarks/input_pipeline.py --compile: every training stage's img/s against its
#      ceiling, and what torch.compile's CUDA graphs would buy;
#   4. benchmarks/predict.py and benchmarks/host_memory.py on the GPU;
#   5. train_frozen with `compile: true`, against the eager stage of step 2.
# Each step runs even if an earlier one failed; the log says which did.
# Usage: bash benchmarks/gpu_check.sh [results-folder]   (default: $OUT or benchmarks/results)
# Offline machines: put wheels of missing packages (snakemake, pydantic, ...) in .whl/.
# A CPU rehearsal of the script itself: PETS_CHECK_PER_CLASS=6 PETS_CHECK_QUICK=1 bash ...
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
results=${1:-${OUT:-$repo/benchmarks/results}}
work=${PETS_WORK:-/tmp/pets-gpu-check}
quick=${PETS_CHECK_QUICK:-}
mkdir -p "$results"
rm -rf "$work" && mkdir -p "$work/bin"
cd "$repo" || exit 1

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
project="$work/project"
seconds() { python -c "import time; print(round(time.time() - $1, 1))"; }

machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
    echo "cores: $cores"
}

data_set() {
    local start; start=$(date +%s.%N)
    python -m pets.synthetic "$work/data/oxford-iiit-pet" --per-class "${PETS_CHECK_PER_CLASS:-200}" \
        --threads "$cores" --tgz "$work/data/oxford-iiit-pet.tgz" || return 1
    echo "generated in $(seconds "$start") s"
}

whole_dag() {
    mkdir -p "$project"
    cp -r Snakefile dvc.yaml params.yaml profiles envs workflow src "$project"/
    python - "$project/params.yaml" "$work/data/oxford-iiit-pet.tgz" <<'PY' || return 1
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
    params["export"].update(check_images=8)
open(path, "w").write(yaml.safe_dump(params, sort_keys=False))
PY
    cd "$project" || return 1
    local start end status
    start=$(date +%s.%N)
    PETS_TIMINGS="$work/timings" snakemake --cores "$cores" --quiet rules > "$work/snakemake.log" 2>&1
    status=$?
    end=$(date +%s.%N)
    [ $status -eq 0 ] || tail -60 "$work/snakemake.log"
    echo "stage seconds (each stage's own timer, process start excluded):"
    grep -h "done in" logs/*.log logs/*/*.log | sort -t' ' -k4 -n -r
    python - "$start" "$end" "$work/timings" <<'PY'
import glob, json, sys
start, end = map(float, sys.argv[1:3])
jobs = [json.load(open(path)) for path in sorted(glob.glob(sys.argv[3] + "/*.json"))]
print(f"{'stage':24s} {'total':>7s} {'start-up':>9s} {'work':>7s} {'recording':>10s}  (s, from process start)")
for job in sorted(jobs, key=lambda job: -job["total_s"]):
    print(f"{job['stage']:24s} {job['total_s']:7.1f} {job['startup_s']:9.1f} {job['work_s']:7.1f} "
          f"{job['recording_s']:10.1f}")
fixed = sum(job["startup_s"] + job["recording_s"] for job in jobs)
print(f"{len(jobs)} jobs; sum of fixed costs (start-up + recording): {fixed:.1f} s; "
      f"sum of work: {sum(job['work_s'] for job in jobs):.1f} s")
download = 0.0
for line in open("logs/download.log"):
    if "download: done in" in line:
        download = float(line.split()[3])
print(f"whole DAG wall time: {end - start:.1f} s; without the download stage "
      f"(extracting the archive, {download:.1f} s): {end - start - download:.1f} s")
for path in sorted(glob.glob("metrics/*.json")) + sorted(glob.glob("metrics/interpret/*.json")):
    numbers = json.load(open(path))
    if path.endswith("lr_find.json"):  # the suggestions: {name: {lr, loss}}
        print(path, {k: f"{v['lr']:.2e}" for k, v in numbers.items()})
        continue
    keys = ("error_rate", "valid_loss", "error_rate_low", "error_rate_high")
    print(path, {k: round(v, 4) for k, v in numbers.items() if k in keys})
for path in ("reports/export.json",):
    print(path, open(path).read() if glob.glob(path) else "missing")
PY
    cp reports/index.html "$results/gpu_check_report.html" 2>/dev/null
    cd "$repo" || return 1
    return $status
}

benchmark() {
    python "benchmarks/$1.py" ${quick:+--quick} "${@:2}" && cp "benchmarks/results/$1.json" "$results/"
}

compiled_stage() {
    [ -z "$quick" ] || { echo "(skipped on a CPU rehearsal: compiling takes minutes there)"; return 0; }
    cd "$project" || return 1
    python -c "
import yaml
params = yaml.safe_load(open('params.yaml'))
params['train_frozen']['compile'] = True
open('params-compiled.yaml', 'w').write(yaml.safe_dump(params, sort_keys=False))"
    local start; start=$(date +%s.%N)
    python workflow/scripts/train_frozen.py --params params-compiled.yaml --model "$work/compiled.pth" \
        --metrics "$work/compiled.json" --history "$work/compiled.csv" \
        --model-info "$work/compiled-info.json" --threads 4
    local status=$?
    echo "compiled train_frozen wall time: $(seconds "$start") s"
    grep -h "train_frozen: done in" logs/train_frozen.log | sed 's/^/eager /'
    cd "$repo" || return 1
    return $status
}

{
    failed=""
    echo "== machine"; machine
    echo "== 1. data set"; data_set || failed="$failed 1"
    echo "== 2. the whole DAG (snakemake --cores $cores)"; whole_dag || failed="$failed 2"
    echo "== 3. input pipeline against each stage's ceiling"
    benchmark input_pipeline --compile || failed="$failed 3"
    echo "== 4. pets predict on the GPU; host memory with a Pets-sized cache"
    benchmark predict || failed="$failed 4a"
    benchmark host_memory || failed="$failed 4b"
    echo "== 5. train_frozen with compile: true (torch.compile, CUDA graphs)"
    compiled_stage || failed="$failed 5"
    echo "== done; failed steps:${failed:- none}"
} 2>&1 | tee "$results/gpu_check.log"
