"""Test setup: 8 fake CPU devices so sharding runs without accelerators."""

import os

# Must happen before jax is imported anywhere in the test process. LLVM's optimisation
# passes off: the tests' tiny programs compile about twice as fast, and XLA's own (HLO)
# optimisations still run; only the machine code is less optimised.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One XLA compilation cache for the whole suite (and the launch.py runs it starts): the
# tests compile the same tiny programs many times, and compiling is most of their time.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(ROOT, '.pytest_cache', 'xla'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

# Imported after the environment is set above (none of these imports jax).
# pylint: disable=wrong-import-position
import sys

# TensorFlow >= 2.20 puts its LLVM in the global symbol table, and libtriton, which
# torchvision and timm load through torch._dynamo, then segfaults on load (TensorFlow
# issue 124205). torch runs on the CPU here and needs no triton: it is taken as absent.
sys.modules.setdefault('triton', None)

import numpy as np
from PIL import Image
import pytest

from experiments.configs import base
from experiments.configs import digits

# A tiny net A on digits: the default config shrunk so a run takes seconds.
TINY_OVERRIDES = {
    'model.variant': 'A', 'model.width': 0.0625, 'model.fc_width': 32,
    'data.mean_rgb': (40.0, 40.0, 40.0), 'data.scale_max': 32, 'global_batch_size': 16,
    'eval_batch_size': 64, 'num_train_steps': 8, 'log_every_steps': 4,
    'eval_every_steps': 4, 'checkpoint_every_steps': 4, 'schedule': 'step',
    'step_decay_epochs': (0.5,),
}


def make_data_config(**overrides):
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


@pytest.fixture(name='data_config', scope='session')
def data_config_fixture():
  """make_data_config, for the data tests."""
  return make_data_config


@pytest.fixture(name='write_image', scope='session')
def write_image_fixture():
  """write_image, for tests that build their own image folders."""
  return write_image


@pytest.fixture(name='randomize_batch_norm', scope='session')
def randomize_batch_norm_fixture():
  """randomize_batch_norm, for the torchvision / timm batch-norm comparisons."""
  return randomize_batch_norm


@pytest.fixture(name='mock_tfds', scope='session')
def mock_tfds_fixture():
  """mock_tfds, for tests of TFDS sources."""
  return mock_tfds


@pytest.fixture(scope='session')
def folder(tmp_path_factory):
  """root/{train,validation}/{cat,dog}/ with JPEGs and PNGs of odd modes and sizes."""
  root = tmp_path_factory.mktemp('folder')
  rng = np.random.default_rng(0)
  kinds = [('RGB', 'JPEG', '.jpg'), ('L', 'JPEG', '.jpg'), ('CMYK', 'JPEG', '.jpeg'),
           ('RGBA', 'PNG', '.png'), ('P', 'PNG', '.png'), ('L', 'PNG', '.PNG')]
  for split, count in (('train', 12), ('validation', 5)):
    for name in ('dog', 'cat'):
      os.makedirs(root / split / name)
      for i in range(count):
        mode, fmt, ext = kinds[i % len(kinds)]
        size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        write_image(root / split / name / f'{i:03d}{ext}', size, mode, rng, fmt)
  (root / 'train' / 'dog' / 'notes.txt').write_text('not an image')
  return str(root)


def make_tiny_config(**overrides):
  """digits.get_config() with TINY_OVERRIDES, then overrides ('model.width': ...)."""
  config = digits.get_config()
  config.unlock()
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def make_launch_args(workdir, **overrides):
  """The launch.py command line of make_tiny_config(**overrides) in workdir."""
  args = [sys.executable, os.path.join(ROOT, 'launch.py'), f'--workdir={workdir}']
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    if isinstance(value, tuple):
      value = '(' + ','.join(map(str, value)) + ',)'
    args.append(f'--config.{key}={value}')
  return args


@pytest.fixture(name='tiny_config', scope='session')
def tiny_config_fixture():
  """make_tiny_config: a tiny net-A digits config with overrides."""
  return make_tiny_config


@pytest.fixture(name='launch_args', scope='session')
def launch_args_fixture():
  """make_launch_args: launch.py's argv for the tiny config."""
  return make_launch_args


@pytest.fixture(name='final_params', scope='session')
def final_params_fixture():
  """The parameters (numpy) of a workdir's latest checkpoint."""
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  return lambda workdir: checkpointing.load_params(str(workdir))[0]


@pytest.fixture(name='assert_trees_equal', scope='session')
def assert_trees_equal_fixture():
  """Asserts two pytrees of arrays are bitwise equal."""
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  return lambda a, b: jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
