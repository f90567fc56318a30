"""Time of the image-folder check that runs before training: cold, then cached.

  python -m experiments.benchmark_scan [--num_images=5000]

Writes num_images 500x375 JPEGs (as benchmark_input does), then times
scan.check_folder (every file decoded by TensorFlow on os.cpu_count() threads, EXIF
orientation read) with an empty cache, and again with the cache it wrote.
"""

import os
import tempfile
import time

from absl import flags

from experiments import benchmark_input
from vgg_jax import cli
from vgg_jax.data import scan
from vgg_jax.data import sources

# --num_images is benchmark_input's flag; 5,000 images here.
flags.FLAGS.set_default('num_images', 5000)


def main(argv):
  del argv
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as root:
    benchmark_input.write_jpegs(root, flags.FLAGS.num_images)
    paths, _, _ = sources.list_image_folder(root, 'train')
    cache_dir = os.path.join(root, 'work')
    start = time.perf_counter()
    scan.check_folder(root, 'train', paths, cache_dir)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    scan.check_folder(root, 'train', paths, cache_dir)
    cached = time.perf_counter() - start
  print(f'cold check: {len(paths)} images in {cold:.2f}s, {len(paths) / cold:.1f} images/s '
        f'({len(paths) / cold / cores:.1f} per core, {cores} cores, 500x375 JPEG)')
  print(f'cached rerun: {cached:.3f}s')


if __name__ == '__main__':
  cli.run(main)
