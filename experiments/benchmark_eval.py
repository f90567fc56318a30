"""Test-time throughput of the paper's protocols (Sec. 3.2) on this machine's devices.

  python -m experiments.benchmark_eval [--variant=D] [--scale=256] [--num_images=8]

Times evaluate.posteriors_at_scale, the code `launch.py --mode=evaluate` runs per batch
of images already rescaled to Q, for the single-crop (1 view), dense (whole image and
its flip) and multi-crop (5x5 grid x 2 flips = 50 views) protocols, on random weights
and random images of Q x (4/3 Q), the shape a 500x375 photo takes. Compilation is
excluded (one untimed call per protocol first). Prints one JSON line per protocol.
Decoding and rescaling are left out: the network is the cost (docs/performance.md).
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from vgg_jax import evaluate
from vgg_jax import host_memory
from vgg_jax import layers
from vgg_jax import models

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
flags.adopt_module_key_flags(host_memory)  # Its --reuse_host_memory, in --help.


def time_protocol(predictor, images, protocol: str) -> dict:
  """One untimed call (compiles every batch shape), then one timed one."""
  evaluate.posteriors_at_scale(predictor, images, protocol, _IMAGE_SIZE.value)
  start = time.perf_counter()
  evaluate.posteriors_at_scale(predictor, images, protocol, _IMAGE_SIZE.value)
  seconds = time.perf_counter() - start
  views = len(images) * evaluate.views_per_scale(protocol)
  return {'protocol': protocol, 'images': len(images), 'views': views,
          'images_per_s': round(len(images) / seconds, 3),
          'views_per_s': round(views / seconds, 2), 's_per_image': round(seconds / len(images), 4)}


def main(argv):
  del argv
  if host_memory.REUSE_HOST_MEMORY.value and jax.default_backend() == 'cpu':
    host_memory.reuse_freed_memory()  # As launch.py does on the CPU.
  model = models.VGG(variant=_VARIANT.value, num_classes=1000, image_size=_IMAGE_SIZE.value,
                     width=_WIDTH.value, fc_width=_FC_WIDTH.value, conv_impl=_CONV_IMPL.value)
  variables = models.init_variables(model, jax.random.key(0))
  predictor = evaluate.Predictor(model, variables, _BATCH_SIZE.value)
  rng = np.random.default_rng(0)
  shape = (_SCALE.value, _SCALE.value * 4 // 3, 3)
  for protocol in _PROTOCOLS.value:
    count = max(1, _NUM_IMAGES.value // 4) if protocol == 'multicrop' else _NUM_IMAGES.value
    images = [rng.normal(0, 60, shape).astype(np.float32) for _ in range(count)]
    result = time_protocol(predictor, images, protocol)
    print(json.dumps({'variant': _VARIANT.value, 'scale': _SCALE.value,
                      'conv_impl': layers.resolve_conv_impl(_CONV_IMPL.value),
                      'backend': jax.default_backend(), 'devices': jax.device_count(),
                      **result}), flush=True)


if __name__ == '__main__':
  app.run(main)
