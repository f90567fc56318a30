#!/usr/bin/env bash
# The prepared GPU check (issue: fast on every backend), under 8 minutes on one H100/H200.
# From the repo root on the GPU machine (python3 with jax[cuda], flax, optax, orbax, torch):
#   bash experiments/gpu_benchmark.sh | tee gpu_benchmark.jsonl
# Prints the JSON lines of experiments/benchmark.py: VGG-D (then A and E) at 224x224,
# global batch 256, bfloat16, JAX beside torch (channels_last and default, autocast bf16),
# then torch.compile for D. Needs no TensorFlow.
set -u
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # Leave GPU memory for torch in the same process.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
common="--image_size=224 --batch_size=256 --num_classes=1000 --dtype=bfloat16 --steps=20 --warmup=3"
for variant in D A E; do
  timeout 150 python3 -m experiments.benchmark --variant=$variant $common --vs_torch --repeats=2 \
    || echo "{\"variant\": \"$variant\", \"error\": \"exit $?\"}"
done
timeout 150 python3 -m experiments.benchmark --variant=D $common --vs_torch --torch_compile --repeats=1 \
  || echo '{"variant": "D", "torch_compile": true, "error": "failed or timed out"}'
# The train step's resampling of uint8 windows (data.device_window), on the GPU.
timeout 60 python3 -m experiments.benchmark_device_crops \
  || echo '{"device_crops": "failed or timed out"}'
# The input pipeline with this machine's cores (needs TensorFlow, which the lent GPU
# machine lacks: then one line says so and nothing else is skipped).
if python3 -c "import tensorflow" 2>/dev/null; then
  timeout 120 python3 -m experiments.benchmark_input --num_images=512 \
    || echo '{"input_pipeline": "failed or timed out"}'
else
  echo "{\"input_pipeline\": \"skipped: no TensorFlow here\", \"cores\": $(nproc)}"
fi
