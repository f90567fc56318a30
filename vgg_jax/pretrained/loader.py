"""The one loader, load(), and the cache of converted named weights.

load(name_or_path) gives (model, variables, mean_rgb) from a name of named_weights
(torchvision's and Keras's published files), a weights file (.h5, .pth, .safetensors:
layout and variant read from the file) or an import's or a training run's directory. A
name is downloaded once (download), converted once (convert) into an Orbax checkpoint
under $VGG_JAX_CACHE/<name> (default ~/.cache/vgg_jax), and read from there afterwards.
An import writes DIR/checkpoints/0, which --config.init_from=DIR, --mode=evaluate,
--mode=predict and load(DIR) use; --config.init_from=NAME fetches too.
load_checkpoint(DIR) is load's directory case with the checkpoint's meta and step.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np

from vgg_jax import checkpointing
from vgg_jax import errors
from vgg_jax.data import imagenet_classes
from vgg_jax.data import statistics_cache
from vgg_jax import files
from vgg_jax import models
from vgg_jax.pretrained import convert
from vgg_jax.pretrained import download
from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import weight_readers

# What a cached conversion's source.json records; another value converts again.
CONVERSION_FORMAT = 1
decode = imagenet_classes.decode  # (wnid, name, p) rows of ImageNet probabilities.


def load(name_or_path: str, checkpoint='best'):
  """(model, variables, mean_rgb) of named weights, a weights file or a directory.

  name_or_path: a name of vgg_jax.pretrained.named_weights ('vgg16', 'vgg19_bn', 'vgg16_keras', ...:
  fetched once, then read from the cache), a weights file (.h5, .pth, .safetensors: its
  layout, variant and head read from the file) or an import's or a training run's
  directory. A registered name always means the name; a file or directory is taken only
  when the argument looks like a path (untrusted.looks_like_path: './vgg16', not 'vgg16').
  model.apply(variables, images - mean_rgb) gives the logits of RGB 0..255
  images [B, H, W, 3]; features.extract(model, variables, images - mean_rgb, layers) their
  named activations. variables holds 'params' (and 'batch_stats' for batch-norm nets).
  checkpoint (directories): 'best' (lowest eval top-1 error, else the latest), 'latest' or
  a step. mean_rgb is float32 [3]: the weights' own mean, a run's configured one, or the
  one a run computed and cached.
  """
  path = named_weights.as_path(name_or_path)
  if path is not None and os.path.isfile(path):
    source, variant, include_top, contents = weight_readers.detect(path)
    model, variables = convert.build(source, path, variant, include_top, contents=contents)
    return model, variables, np.asarray(convert.mean_rgb_of(convert.CONVENTIONS[source]),
                                        np.float32)
  directory = resolve(name_or_path)
  model, variables, meta, _ = load_checkpoint(directory, checkpoint)
  return model, variables, np.asarray(run_mean_rgb(directory, meta), np.float32)


def load_checkpoint(directory: str, which='best'):
  """(model, variables, meta, step) of a run's or import's checkpoint: 'best', 'latest' or N."""
  step = checkpointing.resolve_step(directory, which)
  variables, meta = checkpointing.load_variables(directory, step)
  return models.create_model(checkpointing.model_fields(meta)), variables, meta, step


def resolve(name_or_directory: str) -> str:
  """A run or import directory as it is; a name of named_weights: its cached checkpoint."""
  path = named_weights.as_path(name_or_directory)
  if path is None:
    return fetch(name_or_directory)
  if not os.path.isdir(path):
    raise errors.NotFound(
        f'{path} does not exist: give a run or import directory, a weights file, or a '
        'name that python -m vgg_jax.pretrained --list shows.' if not os.path.exists(path) else
        f'{path} is a file; a run or import directory is needed here.')
  return path


def fetch(name: str) -> str:
  """The directory of named weights' checkpoint in the cache; downloads and converts once.

  Processes of one host share the work: one holds a file lock while it downloads and
  converts, the others wait for it and then read its checkpoint. The conversion records
  the download's whole sha256 and CONVERSION_FORMAT (source.json): a conversion of
  another format is made again, from a download that must have the recorded sha256.
  """
  entry = named_weights.find(name)
  cache, target = named_weights.cache_dir(), named_weights.cached_directory(name)
  if is_cached(name):
    return target
  # JAX's backends start now, while every process of a multi-process run is still in step
  # (starting them is collective); the lock's waiters must not be the ones to start them.
  jax.process_index()
  with download.file_lock(os.path.join(cache, f'.{entry.name}.lock')):
    if is_cached(name):  # Another process finished it while this one waited.
      return target
    convert.remove_staging(cache, name)  # Left by a conversion that was killed.
    pinned = (named_weights.read_record(name) or {}).get('sha256')
    path, sha256 = download.fetch(entry, os.path.join(cache, 'downloads'), pinned=pinned)
    try:
      shutil.rmtree(target, ignore_errors=True)  # Another format's, or half-written.
      sys.stderr.write(f'Converting {entry.file_name} into {target}...\n')
      if jax.process_count() > 1:
        convert_in_a_child(entry, path, target)
      else:
        convert.import_weights(entry.layout, path, entry.variant, target,
                               entry.include_top, entry.convention, origin=entry.url)
      files.write_file_atomically(named_weights.record_path(name), json.dumps(
          {'format': CONVERSION_FORMAT, 'file': entry.file_name, 'url': entry.url,
           'sha256': sha256}, indent=1))
    finally:  # The checkpoint is what later loads read: the download is not kept.
      os.remove(path)
  return target


def convert_in_a_child(entry: named_weights.Weights, path: str, target: str):
  """import_weights in a single-process Python of its own, on the CPU.

  In a multi-process run Orbax's save is collective (barriers, a primary host writing the
  arrays), while the other processes wait on fetch's lock: the conversion runs apart.
  """
  command = [sys.executable, '-m', 'vgg_jax.pretrained', f'--source={entry.layout}',
             f'--weights={path}', f'--variant={entry.variant}', f'--out={target}',
             f'--convention={json.dumps(dataclasses.asdict(entry.convention))}',
             f'--origin={entry.url}'] + ([] if entry.include_top else ['--notop'])
  result = subprocess.run(command, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f'Converting {path} failed: {result.stderr.strip()[-2000:]}')


def is_cached(name: str) -> bool:
  """Whether name's converted checkpoint, of this CONVERSION_FORMAT, is in the cache."""
  record = named_weights.read_record(name) or {}
  return (record.get('format') == CONVERSION_FORMAT and os.path.isdir(
      os.path.join(named_weights.cached_directory(name), checkpointing.CHECKPOINT_SUBDIR)))


def cached_names() -> set[str]:
  return {name for name in named_weights.WEIGHTS if is_cached(name)}


def run_mean_rgb(directory: str, meta) -> list[float]:
  """The mean RGB a checkpoint's model expects subtracted from its inputs."""
  data = meta['config']['data']
  if data['mean_rgb'] is not None:
    return list(data['mean_rgb'])
  # Computed from the training set at train time and cached beside the checkpoints.
  cache = statistics_cache.path(directory, data['train_split'])
  cached = statistics_cache.read(cache)
  if cached is None:
    raise errors.NotFound(
        f'{directory} was trained with a computed mean RGB, but its '
        f'cache {cache} is missing: pass the mean yourself.')
  return list(cached['mean_rgb'])
