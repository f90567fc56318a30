"""Test setup: 8 fake CPU devices so sharding runs without accelerators.

The helpers the tests share are plain functions in data_helpers.py and run_helpers.py;
only fixtures that set something up (a temporary image folder) live here.
"""

import os

import data_helpers  # Imports no jax.

# Must happen before jax is imported anywhere in the test process.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8 ' +
                           data_helpers.FAST_COMPILE_FLAGS).strip()
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
import pytest


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
        data_helpers.write_image(root / split / name / f'{i:03d}{ext}', size, mode, rng, fmt)
  (root / 'train' / 'dog' / 'notes.txt').write_text('not an image')
  return str(root)
