"""Times DISTS in image pairs/s: vgg_jax.dists beside the DISTS_pytorch package, in one run.

  python -m experiments.benchmark_dists [--size=256] [--batch=8] [--repeats=5]
      [--dtype=float32] [--reference]

The flags, the timing and the JSON lines are benchmark_lpips's. Both sides share one
seeded random VGG-16 (torchvision's vgg16(weights=None), handed to the reference's
constructor in place of its ImageNet download, and exported in torchvision's layout for
ours) and the DISTS_pytorch wheel's alpha and beta, and compare the same [0, 1] batches.
Without --reference (or without torch and DISTS_pytorch installed) ours runs alone, on a
trunk from models.init_variables and random alpha and beta: no file, no TensorFlow.
Modes: 'distance' (forward) and 'gradient' (forward and backward with respect to both
images, as a loss); each runs once to warm up (jit compilation, reported apart).
"""

import os
import tempfile

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import benchmark_lpips as bench
from vgg_jax import cli
from vgg_jax import dists
from vgg_jax import models
from vgg_jax import perceptual

FLAGS = flags.FLAGS  # benchmark_lpips's: size, batch, repeats, dtype, reference.


def standalone_metric(dtype: str) -> dists.DISTS:
  """Ours on a fresh trunk and random positive alpha and beta: no files needed."""
  trunk = models.VGG(variant='D', dtype=perceptual.DTYPES[dtype])
  params = models.init_variables(trunk, jax.random.key(0))['params']
  rng = np.random.default_rng(0)
  alpha, beta = (jnp.asarray(rng.uniform(0, 1, dists.TOTAL_CHANNELS), jnp.float32)
                 for _ in range(2))
  convs = {name: p for name, p in params.items() if name.startswith('conv')}
  return dists.DISTS(variables={'params': convs}, alpha=alpha, beta=beta, trunk=trunk)


def time_reference(x0, x1, directory: str) -> dists.DISTS:
  """Times the DISTS_pytorch package; returns ours on the same trunk and weights."""
  # pylint: disable=g-import-not-at-top
  import torch
  import torchvision
  import DISTS_pytorch
  from DISTS_pytorch import DISTS_pt
  # pylint: enable=g-import-not-at-top
  torch.manual_seed(0)
  vgg = torchvision.models.vgg16(weights=None)
  real = torchvision.models.vgg16
  torchvision.models.vgg16 = lambda **unused: vgg  # Instead of the ImageNet download.
  try:
    reference = DISTS_pt.DISTS(load_weights=False).eval()
  finally:
    torchvision.models.vgg16 = real
  wheel = os.path.join(os.path.dirname(DISTS_pytorch.__file__), 'weights.pt')
  state = torch.load(wheel)
  reference.alpha.data, reference.beta.data = state['alpha'], state['beta']
  trunk = os.path.join(directory, 'vgg16_random.pth')
  torch.save({f'features.{k}': v for k, v in vgg.features.state_dict().items()}, trunk)
  a, b = (torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for x in (x0, x1))

  def distance():
    reference(a, b)  # Under torch.no_grad, as the reference runs without require_grad.

  def gradient():
    p, q = a.clone().requires_grad_(), b.clone().requires_grad_()
    reference(p, q, require_grad=True).sum().backward()

  for mode, fn in (('distance', distance), ('gradient', gradient)):
    first, seconds = bench.timed(fn, FLAGS.repeats)
    bench.report('DISTS_pytorch (torch)', mode, first, seconds,
                 threads=torch.get_num_threads())
  return dists.load(backbone=trunk, weights=wheel, dtype=FLAGS.dtype)


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  shape = (FLAGS.batch, FLAGS.size, FLAGS.size, 3)
  x0 = rng.uniform(0, 1, shape).astype(np.float32)
  x1 = np.clip(0.6 * x0 + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
  if not FLAGS.reference:
    bench.time_ours(standalone_metric(FLAGS.dtype), x0, x1, 'vgg_jax')
    return
  with tempfile.TemporaryDirectory() as directory:
    metric = time_reference(x0, x1, directory)
  bench.time_ours(metric, x0, x1, 'vgg_jax')


if __name__ == '__main__':
  cli.run(main)
