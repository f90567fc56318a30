"""What the tests feed in: data configs, image files and folders, mock TFDS splits, torch
batch norms."""

import os

import numpy as np
from PIL import Image

from experiments.configs import base

# The XLA flags of every test process (compiling is most of the suite's time): LLVM's
# optimisation passes off, so the tests' tiny programs compile about twice as fast. XLA's
# own (HLO) optimisations still run; only the machine code is less optimised. (Turning
# the CPU fusion emitters off too compiled a sharded step 40% faster, but the batch-norm
# net's sharded step then left the single-device one by 0.5 in three steps.)
FAST_COMPILE_FLAGS = '--xla_backend_optimization_level=0'


def data_config(**overrides):
  """base.data_config() for 32x32 digits, no augmentation, a fixed mean; then overrides."""
  config = base.data_config()
  config.update(dict(
      source='digits', name='', eval_split='test', scale_min=32, scale_max=32,
      eval_scale=32, random_flip=False, pca_stddev=0.0, mean_rgb=(120.0, 110.0, 100.0),
      shuffle_buffer=1000))
  config.update(overrides)
  return config


def write_image(path, size, mode, rng, fmt):
  """Random pixels of size (width, height), saved in PIL mode `mode` as `fmt`."""
  array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(array).convert(mode).save(path, fmt)


def image_pair_folders(tmp_path) -> list[str]:
  """dir0 and dir1 for the metrics' folder commands: three pairs of two sizes (a and c
  32x40, b 24x24; dir1's a noisier copy of dir0's), a file in dir0 only, a text file."""
  rng = np.random.default_rng(7)
  dirs = [tmp_path / 'dir0', tmp_path / 'dir1']
  for d in dirs:
    d.mkdir()
  for name, (h, w) in (('a.png', (32, 40)), ('b.png', (24, 24)), ('c.png', (32, 40))):
    first = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(first).save(dirs[0] / name)
    second = np.clip(first + rng.integers(-40, 40, first.shape), 0, 255).astype(np.uint8)
    Image.fromarray(second).save(dirs[1] / name)
  Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
      dirs[0] / 'only_here.png')
  (dirs[1] / 'notes.txt').write_text('not an image')
  return [str(d) for d in dirs]


def mock_tfds(name, data_dir, splits, num_examples):
  """tfds.testing.mock_data over metadata (split sizes) written to data_dir."""
  # Here, not at the top: only the TFDS tests should pay for importing TensorFlow.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
      for split, n in splits.items()]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  return tfds.testing.mock_data(num_examples=num_examples, data_dir=str(data_dir))


def randomize_batch_norm(net, torch):
  """A torch net's BN affine parameters and running statistics far from the identity."""
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
