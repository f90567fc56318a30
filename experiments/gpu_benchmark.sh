#!/usr/bin/env bash
# The prepared GPU check (docs/performance.md, "GPU"): its parts' time limits add up to
# 595 s, within a 10-minute slot on one H100/H200 (715 s where TensorFlow is installed,
# which the lent GPU machine is not).
# From the repo root on the GPU machine (python3 with jax[cuda], flax, optax, orbax, torch):
#   bash experiments/gpu_benchmark.sh [LOG]     (LOG: where the JSON lines also go)
# Prints the JSON lines of experiments/benchmark.py: VGG-D at 224x224, global batch 256,
# bfloat16, JAX beside torch (channels_last and default, autocast bf16, cudnn.benchmark),
# then D with the reshape pool (JAX only), A and E beside torch, the train step's window
# resampling, dense evaluation of photo-shaped images, and torch.compile for D last.
# Needs no TensorFlow. Each part has its own time limit, so one that fails or hangs costs
# only itself.
# GPU_BENCHMARK_ARGS replaces the shared flags (e.g. tiny sizes to try the script on a CPU).
set -u
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # Leave GPU memory for torch in the same process.
log=${1:-/dev/null}
common=${GPU_BENCHMARK_ARGS:-"--image_size=224 --batch_size=256 --num_classes=1000 \
--dtype=bfloat16 --steps=30 --warmup=3"}
part() {  # part SECONDS NAME COMMAND...: runs COMMAND, its JSON lines to stdout and LOG.
  local seconds=$1 name=$2
  shift 2
  echo "# $name ($(date +%T))" >&2
  timeout "$seconds" "$@" | tee -a "$log"
  local status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || echo "{\"part\": \"$name\", \"error\": \"exit $status\"}" | tee -a "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
  --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 - <<'EOF' | tee -a "$log"
import importlib.metadata as m, json, os
names = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'torch', 'numpy')
def version(name):
  try:
    return m.version(name)
  except m.PackageNotFoundError:
    return None
print(json.dumps({'versions': {n: version(n) for n in names}, 'cores': os.cpu_count()}))
EOF
part 140 "D vs torch" python3 -m experiments.benchmark --variant=D $common --vs_torch --repeats=2
part 80 "D, reshape pool" python3 -m experiments.benchmark --variant=D $common --pool_impl=reshape
part 100 "A vs torch" python3 -m experiments.benchmark --variant=A $common --vs_torch --repeats=2
part 130 "E vs torch" python3 -m experiments.benchmark --variant=E $common --vs_torch --repeats=2
part 45 "device crops" python3 -m experiments.benchmark_device_crops
# The input pipeline with this machine's cores needs TensorFlow, which the lent GPU
# machine lacks: then one line says so.
if python3 -c "import tensorflow" 2>/dev/null; then
  part 120 "input pipeline" python3 -m experiments.benchmark_input --num_images=512
else
  echo "{\"input_pipeline\": \"skipped: no TensorFlow here\", \"cores\": $(nproc)}" | tee -a "$log"
fi
# Dense evaluation (Sec. 3.2) of 128 images of ImageNet's aspect ratios at Q=256, through
# the shape buckets, compilation included.
part 60 "dense, ImageNet shapes" python3 -m experiments.benchmark_eval --variant=D --scale=256 \
  --spread=128 --batch_size=64
part 40 "D vs torch.compile" python3 -m experiments.benchmark --variant=D $common --vs_torch \
  --torch_compile --repeats=1
