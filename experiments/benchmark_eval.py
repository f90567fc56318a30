"""Test-time throughput of the paper's protocols (Sec. 3.2) on this machine's devices.

  python -m experiments.benchmark_eval [--variant=D] [--scale=256] [--num_images=8]
  python -m experiments.benchmark_eval --spread=300 --dense_path=buckets|shapes [...]

Times views.posteriors_at_scale, the code `launch.py --mode=evaluate` runs per batch
of images already rescaled to Q, for the single-crop (1 view), dense (whole image and
its flip) and multi-crop (5x5 grid x 2 flips = 50 views) protocols, on random weights
and random images of Q x (4/3 Q), the shape a 500x375 photo takes. Compilation is
excluded (one untimed call per protocol first). Prints one JSON line per protocol.
Decoding and rescaling are left out: the network is the cost (docs/performance.md).

--spread=N instead times dense evaluation of N images with ImageNet's spread of aspect
ratios (width / height log-uniform in [0.5, 2], smallest side Q), compilation included,
as a whole evaluation meets it: through the shape buckets, or one program per exact
shape (--dense_path=shapes, the grouping evaluation used before the buckets). Prints
the compilations, the distinct shapes, the wall time and images/s. No TensorFlow.
"""

import json
import time

from absl import flags
import jax
import numpy as np

from vgg_jax import cli
from vgg_jax.evaluation import views
from vgg_jax import models
from vgg_jax.models import layers
from vgg_jax.training import host_memory

_VARIANT = flags.DEFINE_enum('variant', 'D', list(models.CONFIGS), 'Table 1 configuration.')
_SCALE = flags.DEFINE_integer('scale', 256, 'Test scale Q (smallest side), pixels.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Crop size the net was trained at.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 8, 'Images per timed call (multi-crop: '
                                   'a quarter of them, at least 1).')
_WIDTH = flags.DEFINE_float('width', 1.0, 'Channel width multiplier.')
_FC_WIDTH = flags.DEFINE_integer('fc_width', models.FC_WIDTH, 'fc6/fc7 width.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 25, 'Views per forward pass.')
_CONV_IMPL = flags.DEFINE_enum('conv_impl', 'auto', list(layers.CONV_IMPLS), 'JAX conv path.')
_PROTOCOLS = flags.DEFINE_list('protocols', ['single', 'dense', 'multicrop'],
                               'Protocols to time.')
_SPREAD = flags.DEFINE_integer('spread', 0, '> 0: time dense evaluation of this many images '
                               'of ImageNet-like aspect ratios instead (see the docstring).')
_DENSE_PATH = flags.DEFINE_enum('dense_path', 'buckets', ['buckets', 'shapes'],
                                'With --spread: shape buckets, or one program per shape.')
flags.adopt_module_key_flags(host_memory)  # Its --reuse_host_memory, in --help.


def time_protocol(predictor, images, protocol: str) -> dict:
  """One untimed call (compiles every batch shape), then one timed one."""
  views.posteriors_at_scale(predictor, images, protocol, _IMAGE_SIZE.value)
  start = time.perf_counter()
  views.posteriors_at_scale(predictor, images, protocol, _IMAGE_SIZE.value)
  seconds = time.perf_counter() - start
  count = len(images) * views.views_per_scale(protocol)
  return {'protocol': protocol, 'images': len(images), 'views': count,
          'images_per_s': round(len(images) / seconds, 3),
          'views_per_s': round(count / seconds, 2), 's_per_image': round(seconds / len(images), 4)}


def spread_shapes(count: int, scale: int, rng) -> list[tuple[int, int]]:
  """(height, width) of count images rescaled to Q: width / height log-uniform in [0.5, 2]."""
  ratios = np.exp(rng.uniform(np.log(0.5), np.log(2.0), count))
  return [(scale, int(round(scale * r))) if r >= 1 else (int(round(scale / r)), scale)
          for r in ratios]


def time_spread(predictor, rng) -> dict:
  """Dense evaluation (with flips) of --spread images, compilation included."""
  shapes = spread_shapes(_SPREAD.value, _SCALE.value, rng)
  images = [rng.normal(0, 60, shape + (3,)).astype(np.float32) for shape in shapes]
  compiled = views._posteriors._cache_size  # pylint: disable=protected-access
  before, start = compiled(), time.perf_counter()
  if _DENSE_PATH.value == 'buckets':
    predictor.dense(images)
  else:
    predictor.dense(images, buckets=False)
  seconds = time.perf_counter() - start
  return {'protocol': 'dense', 'path': _DENSE_PATH.value, 'images': len(images),
          'distinct_shapes': len(set(shapes)),
          'compilations': compiled() - before,
          'seconds': round(seconds, 1), 'images_per_s': round(len(images) / seconds, 3)}


def main(argv):
  del argv
  if host_memory.REUSE_HOST_MEMORY.value and jax.default_backend() == 'cpu':
    host_memory.reuse_freed_memory()  # As launch.py does on the CPU.
  model = models.VGG(variant=_VARIANT.value, num_classes=1000, image_size=_IMAGE_SIZE.value,
                     width=_WIDTH.value, fc_width=_FC_WIDTH.value, conv_impl=_CONV_IMPL.value)
  variables = models.init_variables(model, jax.random.key(0))
  predictor = views.Predictor(model, variables, _BATCH_SIZE.value)
  rng = np.random.default_rng(0)
  common = {'variant': _VARIANT.value, 'width': _WIDTH.value, 'scale': _SCALE.value,
            'conv_impl': layers.resolve_conv_impl(_CONV_IMPL.value),
            'backend': jax.default_backend(), 'devices': jax.device_count()}
  if _SPREAD.value:
    print(json.dumps({**common, **time_spread(predictor, rng)}), flush=True)
    return
  shape = (_SCALE.value, _SCALE.value * 4 // 3, 3)
  for protocol in _PROTOCOLS.value:
    count = max(1, _NUM_IMAGES.value // 4) if protocol == 'multicrop' else _NUM_IMAGES.value
    images = [rng.normal(0, 60, shape).astype(np.float32) for _ in range(count)]
    print(json.dumps({**common, **time_protocol(predictor, images, protocol)}), flush=True)


if __name__ == '__main__':
  cli.run(main)
