"""The JSON file a run's computed RGB statistics are cached in: its name, reading, writing.

Apart from vgg_jax.data.statistics, which computes them with TensorFlow, so that loading a
run's checkpoint (vgg_jax.pretrained) reads its mean RGB without importing TensorFlow.
"""

import json
import os
from typing import Any

from absl import logging

from vgg_jax import files


def path(directory: str, split: str) -> str:
  """The cache file of the statistics of `split`, in a run's directory."""
  return os.path.join(directory, f'rgb_stats_{split}.json')


def read(cache: str, key: dict[str, Any] | None = None) -> dict[str, Any] | None:
  """The statistics cached at `cache`, else None; None too if computed for another `key`."""
  if not os.path.exists(cache):
    return None
  with open(cache) as f:
    cached = json.load(f)
  if key is not None and cached.get('key') != key:
    logging.warning('The RGB statistics in %s were computed for other data (%s, now %s): '
                    'recomputing.', cache, cached.get('key'), key)
    return None
  return cached


def write(cache: str, key: dict[str, Any], statistics: dict[str, Any]):
  """Caches `statistics`, computed for `key`, at `cache` (atomically)."""
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  files.write_file_atomically(cache, json.dumps({'key': key, **statistics}))
