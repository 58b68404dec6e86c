#!/usr/bin/env bash
# Everything the GPU issue needs measured, in one call on a lent CUDA machine that has torch but neither our
# optional wheels nor ../shared: `make gpu-carry` (here) packs them into .device-data/, and on the GPU machine
#
#     bash bench/gpu_session.sh [test] [smoke] [bench] [presets]   # default: test smoke bench
#
# runs: test = the GPU tests as `make test-gpu` runs them (tests/test_gpu.py alone: the image lacks the
# optional packages other test files import); smoke = bench/gpu_smoke.py (every -cifar10 preset
# 30 steps under train.debug_sync, then probed); bench = bench/gpu.py (throughput a/b/c, then
# simclr-cifar10-fast for BUDGET and its probe); presets = bench/presets.py measuring PRESETS (default
# simclr-cifar10-fast,byol-cifar10) for PRESET_BUDGET (2m) each, the figures to write into [preset.expected]
# with device = "cuda" and that budget. Each stage's output goes to $OUT/<stage>.log ($OUT: the device
# tool's output folder, else runs/gpu-session) and its exit code to $OUT/status.txt; a stage that fails or
# runs past its time limit does not stop the next. One device command may run 10 minutes, so a session is two
# calls: `bash bench/gpu_session.sh test smoke` (about 6 minutes), then `BUDGET=3m bash bench/gpu_session.sh bench`.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=.device-data
OUT=${OUT:-runs/gpu-session}
BUDGET=${BUDGET:-5m}
mkdir -p "$OUT"
if compgen -G "$CARRY/whl/*.whl" >/dev/null; then
    python -m pip install -q --no-index --no-deps --target /tmp/site "$CARRY"/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
# The tests and benchmarks read CIFAR-10 from $SSLCLI_SHARED_DATA/cifar10: unpack the carried archive once.
if [ -f "$CARRY/cifar10.tgz" ] && [ ! -d /tmp/shared-data/cifar10 ]; then
    mkdir -p /tmp/shared-data && tar xzf "$CARRY/cifar10.tgz" -C /tmp/shared-data
fi
[ -d /tmp/shared-data/cifar10 ] && export SSLCLI_SHARED_DATA=/tmp/shared-data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/gpu.txt"

stage() {  # name, time limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" >&2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${limit}s-limit $((SECONDS - start))s" | tee -a "$OUT/status.txt" >&2
    tail -n 40 "$OUT/$name.log" >&2
}

for name in "${@:-test smoke bench}"; do
    for one in $name; do
        case $one in
            test) stage test 240 python -m pytest tests/test_gpu.py -v -m gpu -n "${GPU_WORKERS:-4}" --timeout 120 \
                      --durations 0 -p no:cacheprovider ;;
            smoke) stage smoke 330 python -m bench.gpu_smoke --steps "${SMOKE_STEPS:-30}" ;;
            bench) stage bench 540 python -m bench.gpu --budget "$BUDGET" ;;
            presets) stage presets 570 python -m bench.presets --device cuda --budget "${PRESET_BUDGET:-2m}" \
                         --presets "${PRESETS:-simclr-cifar10-fast,byol-cifar10}" ;;
            *) echo "unknown stage: $one (test, smoke, bench, presets)" >&2; exit 2 ;;
        esac
    done
done
