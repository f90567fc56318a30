"""Times LPIPS in image pairs/s: vgg_jax.lpips beside the lpips package, in one run.

  python -m experiments.benchmark_lpips [--size=256] [--batch=8] [--repeats=5]
      [--dtype=float32] [--reference]

Both sides share one random VGG-16 trunk (lpips's pnet_rand=True, exported in torchvision's
layout) and the lpips wheel's v0.1 lin weights, and compare the same [-1, 1] batches.
Without --reference (or without torch and lpips installed, as on the GPU machine) ours
runs alone, on a trunk from models.init_variables and random lin weights: no file, no
TensorFlow. Each mode runs once to warm up (jit compilation, reported apart), then
`repeats` times: 'distance' (forward) and 'gradient' (forward and backward with respect
to both images, as a loss). Prints one JSON line per (implementation, mode).
"""

import json
import os
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import cli
from vgg_jax import lpips
from vgg_jax import models

_SIZE = flags.DEFINE_integer('size', 256, 'Image side (square images).')
_BATCH = flags.DEFINE_integer('batch', 8, 'Image pairs per call.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per mode, after one warm-up.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], "Our trunk's dtype.")
_REFERENCE = flags.DEFINE_bool('reference', True, 'Time the lpips package too (needs torch '
                               'and lpips).')


def timed(fn, repeats: int) -> tuple[float, float]:
  """(seconds of the first call, mean seconds of the next `repeats`)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return first, (time.perf_counter() - start) / repeats


def report(implementation: str, mode: str, first: float, seconds: float, **extra):
  print(json.dumps({'implementation': implementation, 'mode': mode, 'size': _SIZE.value,
                    'batch': _BATCH.value, 'pairs_per_s': round(_BATCH.value / seconds, 2),
                    'seconds_per_call': round(seconds, 4), 'first_call_s': round(first, 2),
                    'backend': jax.default_backend(), **extra}), flush=True)


def standalone_metric(dtype: str) -> lpips.LPIPS:
  """Ours on a fresh trunk and random non-negative lin weights: no files needed."""
  trunk = models.VGG(variant='D', dtype=lpips.DTYPES[dtype])
  params = models.init_variables(trunk, jax.random.key(0))['params']
  rng = np.random.default_rng(0)
  lin = tuple(jnp.asarray(rng.uniform(0, 1, c), jnp.float32) for c in lpips.CHANNELS)
  convs = {name: p for name, p in params.items() if name.startswith('conv')}
  return lpips.LPIPS(variables={'params': convs}, lin=lin, trunk=trunk, version='0.1')


def time_ours(metric: lpips.LPIPS, x0, x1, label: str):
  distance = jax.jit(lambda m, a, b: m(a, b))
  gradient = jax.jit(jax.grad(lambda m, a, b: m(a, b).sum(), argnums=(1, 2)))
  x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
  for mode, fn in (('distance', distance), ('gradient', gradient)):
    first, seconds = timed(lambda f=fn: jax.block_until_ready(f(metric, x0, x1)),
                           _REPEATS.value)
    report(label, mode, first, seconds, dtype=_DTYPE.value)


def time_reference(x0, x1, directory: str) -> lpips.LPIPS:
  """Times the lpips package; returns ours on the same trunk and lin weights."""
  import lpips as reference_lpips  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  reference = reference_lpips.LPIPS(net='vgg', pnet_rand=True, verbose=False)
  state = {f'features.{k.split(".", 2)[1]}.{k.split(".", 2)[2]}': v.contiguous()
           for k, v in reference.net.state_dict().items()}
  trunk = os.path.join(directory, 'vgg16_random.pth')
  torch.save(state, trunk)
  wheel = os.path.join(os.path.dirname(reference_lpips.__file__), 'weights', 'v0.1', 'vgg.pth')
  a, b = (torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for x in (x0, x1))

  def distance():
    with torch.no_grad():
      reference(a, b)

  def gradient():
    p, q = a.clone().requires_grad_(), b.clone().requires_grad_()
    reference(p, q).sum().backward()

  for mode, fn in (('distance', distance), ('gradient', gradient)):
    first, seconds = timed(fn, _REPEATS.value)
    report('lpips (torch)', mode, first, seconds, threads=torch.get_num_threads())
  return lpips.load('0.1', backbone=trunk, lin_weights=wheel, dtype=_DTYPE.value)


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  shape = (_BATCH.value, _SIZE.value, _SIZE.value, 3)
  x0 = rng.uniform(-1, 1, shape).astype(np.float32)
  x1 = np.clip(x0 + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
  if not _REFERENCE.value:
    time_ours(standalone_metric(_DTYPE.value), x0, x1, 'vgg_jax')
    return
  with tempfile.TemporaryDirectory() as directory:
    metric = time_reference(x0, x1, directory)
  time_ours(metric, x0, x1, 'vgg_jax')


if __name__ == '__main__':
  cli.run(main)
