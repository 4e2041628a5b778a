#!/usr/bin/env bash
# One lease of a GPU machine that has no network: assemble Warp and the peers from carried
# files, check the CUDA path, and run the benchmarks there. Stages run in the order given:
#
#   bash benchmarks/gpu_session.sh setup test overhead bench123   # then, in a later call:
#   bash benchmarks/gpu_session.sh setup eager123 w4 profile
#   bash benchmarks/gpu_session.sh all      # one ~10-minute lease: setup, CUDA tests, W1-W5 (quick)
#
# Inputs (git-ignored, made on a machine with pip; see benchmarks/README.md "On a GPU"):
#   /root/gpu_parts/warpso.xz.part.aa   first part of warp.so (xz), carried by an earlier call
#   .gpu/b/warpso.xz.part.ab            its second part
#   .gpu/b/warp_rest.tar.xz             the rest of the warp-lang 1.19.0 wheel (no CPU compiler)
#   .gpuwheels/*.whl                    ase, TorchSim, nvalchemi and what they import (cp312)
# Results go to /root/gpu_report (kept between calls while the machine is warm) and are copied
# to $OUT at the end of every call.
set -u
export PYTHONUNBUFFERED=1
ROOT=$(pwd)
SITE=/tmp/site
REPORT=/root/gpu_report
mkdir -p "$REPORT"
export PYTHONPATH="$SITE:$ROOT/src:$ROOT"
PY=python3

stage_setup() {
    if [ ! -f "$SITE/warp/bin/warp.so" ]; then
        mkdir -p "$SITE"
        if [ -d .gpuwheels ]; then
            $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpuwheels/*.whl \
                || echo "[setup] peer wheels failed to install"
        fi
        tar -xJf .gpu/b/warp_rest.tar.xz -C "$SITE"
        cat /root/gpu_parts/warpso.xz.part.aa .gpu/b/warpso.xz.part.ab | xz -d > "$SITE/warp/bin/warp.so"
    fi
    md5sum "$SITE/warp/bin/warp.so"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
    $PY -c "import torch, warp as wp; wp.init(); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name()); print('warp', wp.__version__, wp.get_cuda_devices())"
}

stage_test() {
    timeout 200 $PY -m pytest tests/test_cuda.py tests/test_cuda_budget.py tests/test_device_truth.py -v -p no:cacheprovider -o addopts="" 2>&1 \
        | tee "$REPORT/test_cuda.log" | tail -40
}

stage_w5() {
    # W5 on the GPU: the demo network (always there; fixed cells, it has no stress), then the random-weight
    # MACE on its Lennard-Jones baseline with variable cells (FrechetCellFilter), as the CPU report.
    timeout "${W5_TIMEOUT:-100}" $PY -m benchmarks.w5 --device cuda --model demo --cell fixed --n "${W5_N:-300}" \
        --batch-sizes 32,64,128,300 --chunks 0 --rounds 2 --auto-budget --threads 0 --out "$REPORT/w5_demo.md" 2>&1 \
        | tee "$REPORT/w5_demo.log" | tail -8
    timeout "${W5_MACE_TIMEOUT:-180}" $PY -m benchmarks.w5 --device cuda --model mace-random+lj --cell "${W5_CELL:-frechet}" \
        --n "${W5_N:-300}" --batch-sizes 64,128,300 --chunks 0 --refill 1 --rounds 1 --threads 0 \
        --out "$REPORT/w5_mace.md" 2>&1 | tee "$REPORT/w5_mace.log" | tail -8
}

stage_refill() {
    # ms per refill point (64 slots), by phase, wall and CPU time; the goal: < 0.5 ms on a GPU.
    timeout "${REFILL_TIMEOUT:-90}" $PY -m benchmarks.refill_cost cuda 300 5 2>&1 | tee "$REPORT/refill_cost.md" | tail -14
}

stage_quick123() {
    # W1-W3 (quick sizes), batchmd and whichever peers import, 2 rounds.
    timeout 150 $PY -m benchmarks.run_report --device cuda --workloads W1,W2,W3 --quick --peers "${PEERS123:-batchmd,torchsim,nvalchemi}" \
        --rounds 2 --no-sweep --out-dir "$REPORT/quick" 2>&1 | tee "$REPORT/quick123.log" | grep -v "^\[round" | tail -25
}

stage_all() {
    # One call of at most ~13 minutes (timeouts 60+150+150+180+90+230 s; typically less): everything the
    # issue asks of a GPU lease. Results are copied to $OUT after every stage (see the loop below).
    stage_setup; stage_test; stage_quick123; W4_ROUNDS=2 W4_TIMEOUT=180 stage_w4; stage_refill; stage_w5
}

stage_overhead() {
    BENCH_DEVICE=cuda timeout 100 $PY -m benchmarks.step_overhead "$REPORT/step_overhead_cuda.md"
}

stage_profile() {
    timeout 200 $PY -m benchmarks.profile_inflight cuda 2>&1 | tee "$REPORT/profile_inflight.log" | tail -45
}

stage_bench123() {
    timeout 470 $PY -m benchmarks.run_report --device cuda --workloads W1,W2,W3 --peers "${PEERS123:-batchmd,torchsim,nvalchemi}" \
        --rounds 3 --out-dir "$REPORT" 2>&1 | tee "$REPORT/bench123.log" | grep -v "^\[round" | tail -40
}

stage_eager123() {
    # A/B: the same W1-W3 with every step launched eagerly (no CUDA graphs).
    BENCH_BATCHMD_CUDA_GRAPH=0 timeout 200 $PY -m benchmarks.run_report --device cuda --workloads W1,W2,W3 \
        --peers batchmd --rounds 3 --no-sweep --out-dir "$REPORT/eager" 2>&1 | tee "$REPORT/eager123.log" | tail -8
}

stage_final() {
    # batchmd alone, W1-W3, after a change (quick: no sweeps, no peers).
    timeout 150 $PY -m benchmarks.run_report --device cuda --workloads W1,W2,W3 --peers batchmd --rounds 3 \
        --no-sweep --out-dir "$REPORT/final" 2>&1 | tee "$REPORT/final.log" | grep -v "^\[round" | tail -8
}

stage_w4() {
    timeout "${W4_TIMEOUT:-200}" $PY -m benchmarks.run_report --device cuda --workloads W4,W4W --peers batchmd --rounds "${W4_ROUNDS:-3}" --no-sweep \
        --merge --out-dir "$REPORT" 2>&1 | tee "$REPORT/w4.log" | tail -25
}

stage_w4big() {
    # The GPU-sized version: 8,000 cells, 512 slots (about 36k atoms live).
    BENCH_W4_N=8000 BENCH_W4_BATCH=512 timeout 500 $PY -m benchmarks.run_report --device cuda --workloads W4,W4W \
        --peers batchmd --rounds 2 --no-sweep --out-dir "$REPORT/big" 2>&1 | tee "$REPORT/w4big.log" | tail -25
}

for stage in "$@"; do
    echo "=== $stage ($(date +%T))"
    "stage_$stage"
    if [ -n "${OUT:-}" ]; then  # one file back (the tool returns at most 8), kept current after every stage
        tar -czf "$OUT/gpu_report.tar.gz.tmp" -C "$REPORT" . && mv "$OUT/gpu_report.tar.gz.tmp" "$OUT/gpu_report.tar.gz"
    fi
done
echo "=== done ($(date +%T))"
