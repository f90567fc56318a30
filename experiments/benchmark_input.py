"""Throughput of the ImageNet-style training input pipeline on generated JPEGs.

  python -m experiments.benchmark_input [--num_images=256] [--batches=20]

Writes num_images 500x375 JPEGs (a typical ImageNet photo) to a temporary image folder,
then times create_train_iterator with the paper's augmentation (S jittered in
[256, 512] or fixed, 224 crops, flip, PCA colour shift) and prints images/s and
images/s per core, twice: all on the host (float32 crops), and with
data.device_window=--device_window (the host decodes uint8 windows; the train step
resamples them). For the latter it also times that device half, jitted, on this
machine's default JAX backend.
"""

import os
import tempfile
import time

from absl import flags
import jax
import numpy as np
from PIL import Image

from experiments import benchmark_device_crops
from experiments.configs import base
from vgg_jax import cli
from vgg_jax.data import iterators
from vgg_jax.data import statistics

_NUM_IMAGES = flags.DEFINE_integer('num_images', 256, 'JPEGs to generate.')
_BATCHES = flags.DEFINE_integer('batches', 20, 'Batches to time (after 3 warm-up ones).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
_DEVICE_WINDOW = flags.DEFINE_integer('device_window', 352,
                                      'data.device_window of the second measurement.')


def write_jpegs(root: str, count: int):
  """Smooth random 500x375 JPEGs (quality 90) in two class folders."""
  rng = np.random.default_rng(0)
  for i in range(count):
    class_dir = os.path.join(root, 'train', f'class{i % 2}')
    os.makedirs(class_dir, exist_ok=True)
    small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
    noise = rng.integers(-12, 13, size=(375, 500, 3))
    pixels = np.clip(np.asarray(image, np.int32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(class_dir, f'{i:05d}.jpg'), quality=90)


def time_pipeline(root: str, scale_min: int, scale_max: int, device_window: int):
  """(images/s, the last batch) of the training pipeline on the folder at root."""
  config = base.data_config()
  config.source = 'folder'
  config.folder = root
  config.scale_min = scale_min
  config.scale_max = scale_max
  config.eval_scale = scale_min
  config.mean_rgb = statistics.IMAGENET_MEAN_RGB
  config.shuffle_buffer = 1024
  config.device_window = device_window
  batches = iterators.create_train_iterator(
      config, image_size=224, global_batch_size=_BATCH_SIZE.value, seed=0)
  for _ in range(3):
    next(batches)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(batches)
  return _BATCHES.value * _BATCH_SIZE.value / (time.perf_counter() - start), batch


def main(argv):
  del argv
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, _NUM_IMAGES.value)
    for name, (s_min, s_max) in [('S=256 fixed', (256, 256)),
                                 ('S~U[256,512] jittered', (256, 512))]:
      for window in (0, _DEVICE_WINDOW.value):
        rate, batch = time_pipeline(root, s_min, s_max, window)
        where = f'windows <= {window} px, resampled by the step' if window else 'all on the host'
        print(f'{name:<22} {rate:7.1f} images/s {rate / cores:7.1f} images/s/core  '
              f'({where}; {cores} cores, 500x375 JPEG -> 224x224, batch {_BATCH_SIZE.value})')
      rate = benchmark_device_crops.time_train_images(batch, 224)
      print(f'{name:<22} device half: {rate:7.1f} images/s on {jax.devices()[0].platform} '
            f'({jax.device_count()} device(s))')


if __name__ == '__main__':
  cli.run(main)
