"""images/s of the train step's resampling (vgg_jax/data/device_crops.py) on this machine's
default JAX backend, on random windows made on the device (no TensorFlow needed).

  python -m experiments.benchmark_device_crops [--batch_size=256] [--window=352]

The windows are 500x375 photos' at S = 256 (336x336 of real pixels, zero-padded to
--window), crops of --image_size, flips on half of them. Prints one JSON line.
"""

import json
import time

from absl import flags
import jax
import jax.numpy as jnp

from vgg_jax import cli
from vgg_jax.data import device_crops


def define_flags():
  """Defined only when this module runs as a script: experiments.benchmark_input imports
  time_train_images and has flags of the same names."""
  flags.DEFINE_integer('batch_size', 256, 'Windows per call.')
  flags.DEFINE_integer('window', 352, 'data.device_window: padded side, pixels.')
  flags.DEFINE_integer('image_size', 224, 'Crop side, pixels.')
  flags.DEFINE_integer('calls', 10, 'Timed calls (after one that compiles).')


def time_train_images(batch, image_size: int, calls: int = 5) -> float:
  """images/s of jitted device_crops.train_images on a batch of windows."""
  crops = jax.jit(device_crops.train_images, static_argnums=1)
  batch = jax.device_put(batch)
  crops(batch, image_size).block_until_ready()
  start = time.perf_counter()
  for _ in range(calls):
    crops(batch, image_size).block_until_ready()
  return calls * len(batch['flip']) / (time.perf_counter() - start)


def random_windows(batch_size: int, window: int) -> dict:
  keys = jax.random.split(jax.random.key(0), 2)
  real = 336  # 224 / (256 / 375) plus the filter's margin.
  pixels = jax.random.randint(keys[0], (batch_size, real, real, 3), 0, 256).astype(jnp.uint8)
  return {'window': jnp.pad(pixels, ((0, 0), (0, window - real), (0, window - real), (0, 0))),
          'window_hw': jnp.full((batch_size, 2), real, jnp.int32),
          'resample': jnp.tile(jnp.array([[256 / 375, 256 / 375, -4.0, -4.0]]), (batch_size, 1)),
          'flip': jnp.arange(batch_size) % 2 == 0,
          'colour': jax.random.normal(keys[1], (batch_size, 3)) * 10}


def main(argv):
  del argv
  args = flags.FLAGS
  rate = time_train_images(random_windows(args.batch_size, args.window), args.image_size,
                           args.calls)
  print(json.dumps({'device_crops_images_per_s': round(rate, 1),
                    'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
                    'batch_size': args.batch_size, 'window': args.window,
                    'image_size': args.image_size}), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
