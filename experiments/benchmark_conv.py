"""The CPU convolution formulations (vgg_jax/models/cpu_ops.py), per layer and in the whole step.

  python -m experiments.benchmark_conv --layers=64:32:64:64,4:112:64:128 [--torch]
  python -m experiments.benchmark_conv --step --variant=D --image_size=32 --batch_size=64 \\
      --num_classes=10 --steps=16

--layers: forward + backward of one 3x3 conv (no bias, float32) per BATCH:SIZE:CIN:COUT,
through cpu_ops.conv_as_matmul (nine shifted copies) and cpu_ops.conv_kernel_rows (three),
with --torch also nn.Conv2d in both layouts; the runs alternate, medians in ms.
--step: the project's train step compiled twice in this process, once with the patches
everywhere (PATCH_BYTES_LIMIT infinite) and once as cpu_ops.conv chooses, then timed
step by step in turn; prints both medians and new / old. Flags of experiments.benchmark
(--variant, --batch_size, ...) set the model.
"""

import json
import statistics
import time

from absl import flags
import jax
import numpy as np

from experiments import benchmark
from vgg_jax import cli
from vgg_jax.models import cpu_ops
from vgg_jax.training import host_memory

_LAYERS = flags.DEFINE_list('layers', [], 'BATCH:SIZE:CIN:COUT of each 3x3 layer to time.')
_TORCH = flags.DEFINE_bool('torch', False, 'Also time torch nn.Conv2d (channels_last, default).')
_STEP = flags.DEFINE_bool('step', False, 'A/B the whole train step (see the docstring).')
_RUNS = flags.DEFINE_integer('runs', 7, 'Timed runs of each layer formulation.')


def median_ms(calls: dict, runs: int) -> dict:
  """{name: median ms} of calls run in turn, `runs` times each, after two untimed rounds."""
  times = {name: [] for name in calls}
  for round_ in range(runs + 2):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      if round_ >= 2:
        times[name].append(time.perf_counter() - start)
  return {name: round(1e3 * statistics.median(t), 3) for name, t in times.items()}  # To 1 us.


def layer_calls(batch: int, size: int, channels: int, features: int) -> dict:
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, size, size, channels))
  kernel = jax.random.normal(keys[1], (3, 3, channels, features)) / np.sqrt(9 * channels)
  grad = jax.random.normal(keys[2], (batch, size, size, features))
  calls = {}
  for name in ('conv_as_matmul', 'conv_kernel_rows'):
    def forward_backward(x, kernel, grad, conv=getattr(cpu_ops, name)):
      y, vjp = jax.vjp(conv, x, kernel)
      return (y,) + vjp(grad)
    step = jax.jit(forward_backward)
    calls[name] = lambda step=step: jax.block_until_ready(step(x, kernel, grad))
  if _TORCH.value:
    import torch  # pylint: disable=g-import-not-at-top  (optional: only --torch needs it)
    for layout in (torch.channels_last, torch.contiguous_format):
      conv = torch.nn.Conv2d(channels, features, 3, padding=1, bias=False)
      conv = conv.to(memory_format=layout)
      tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous(memory_format=layout)
      tx.requires_grad_()
      tgrad = torch.tensor(np.asarray(grad)).permute(0, 3, 1, 2).contiguous(memory_format=layout)
      def run(conv=conv, tx=tx, tgrad=tgrad):
        tx.grad, conv.weight.grad = None, None
        conv(tx).backward(tgrad)
      calls['torch_' + ('channels_last' if layout == torch.channels_last else 'default')] = run
  return calls


def ab_step(steps: int) -> dict:
  default = cpu_ops.PATCH_BYTES_LIMIT
  cpu_ops.PATCH_BYTES_LIMIT = float('inf')  # Read while tracing: this compile is the old one.
  try:
    old = benchmark.JaxRun()
  finally:
    cpu_ops.PATCH_BYTES_LIMIT = default
  new = benchmark.JaxRun()
  times = {'old': [], 'new': []}
  for i in range(steps):
    order = (('old', old), ('new', new)) if i % 2 == 0 else (('new', new), ('old', old))
    for name, run in order:
      times[name] += run.run(1)
  medians = {name: statistics.median(t) for name, t in times.items()}
  return {'variant': benchmark._VARIANT.value, 'image_size': benchmark._IMAGE_SIZE.value,
          'batch_size': benchmark._BATCH_SIZE.value, 'steps_each': steps,
          # Microseconds kept, so tiny test-sized steps still give their ratio back.
          'old_patches_s': round(medians['old'], 6), 'new_s': round(medians['new'], 6),
          'new_over_old': round(medians['new'] / medians['old'], 3)}


def main(argv):
  del argv
  benchmark._HOST_MEMORY_REUSED.append(host_memory.REUSE_HOST_MEMORY.value and
                                       host_memory.reuse_freed_memory())
  for spec in _LAYERS.value:
    batch, size, channels, features = (int(v) for v in spec.split(':'))
    print(json.dumps({'layer': spec, **median_ms(layer_calls(batch, size, channels, features),
                                                 _RUNS.value)}), flush=True)
  if _STEP.value:
    print(json.dumps(ab_step(benchmark._STEPS.value)), flush=True)


if __name__ == '__main__':
  cli.run(main)
