"""Deterministic, resumable tf.data iterators -> numpy batches for training and eval.

Each epoch's order is a function of (seed, epoch) and each example's augmentation of
(seed, its position in the stream), so a run resumed at step k sees the batches of an
uninterrupted one. Each process reads only its own examples.
"""

import functools
import os
from typing import Iterator

import numpy as np
import tensorflow as tf

from vgg_jax import data
from vgg_jax import errors
from vgg_jax.data import preprocessing
from vgg_jax.data import sources
from vgg_jax.data import statistics


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Examples each process reads of every global batch."""
  if global_batch_size % process_count:
    raise errors.InvalidInput(
        f'global batch size {global_batch_size} is not divisible by the '
        f'process count {process_count}.')
  return global_batch_size // process_count


def _with_path_on_error(iterator, source: sources.Source):
  """Re-raises a decode failure as a ValueError naming the file that broke it."""
  try:
    yield from iterator
  except tf.errors.InvalidArgumentError as error:
    bad = sources.find_undecodable(source)
    if bad is None:
      raise
    raise errors.InvalidInput(f'Could not decode image {bad[0]}: {bad[1]}') from error


def _options():
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(1, os.cpu_count() or 1)
  # Autotuning's background thread can take ~30s to stop when the iterator is
  # destroyed while the CPU is busy training; fixed parallelism costs nothing here.
  options.autotune.enabled = False
  return options


def _global_order_stream(source: sources.Source, seed: int, first: int, batch: int,
                         global_batch: int, process_index: int) -> tf.data.Dataset:
  """(position, example) for this process: its slice of every global batch.

  Position g of the global stream holds example perm_e[g mod N] with e = g div N and
  perm_e a permutation seeded by (seed, e); global batch j is positions [jB, (j+1)B),
  of which process p reads [jB + pb, jB + (p+1)b).
  """
  size = source.num_examples

  def epoch_positions(epoch):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(size, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
    positions = epoch * size + tf.range(size, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices((positions, order))

  def mine(position, _):
    offset = position % global_batch
    return (position >= first) & (offset >= process_index * batch) & (
        offset < (process_index + 1) * batch)

  ds = tf.data.Dataset.range(first // size, np.iinfo(np.int64).max)
  ds = ds.flat_map(preprocessing.as_written(epoch_positions)).filter(
      preprocessing.as_written(mine))
  lookup = preprocessing.as_written(lambda position, index: (source.lookup(index), position))
  return ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _per_process_stream(source: sources.Source, seed: int, first: int, buffer: int,
                        process_index: int) -> tf.data.Dataset:
  """(example, position) from this process's own shard, shuffled per epoch."""
  start_epoch, offset = divmod(first, source.num_examples)
  base = source.make_dataset()

  def epoch_dataset(epoch):
    epoch_seed = tf.cast(seed * 1_000_003 + process_index * 10_007 + epoch, tf.int64)
    return base.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(
      preprocessing.as_written(epoch_dataset))
  positions = tf.data.Dataset.range(first, np.iinfo(np.int64).max)
  return tf.data.Dataset.zip(ds.skip(offset), positions)


def augmentation(data_config, image_size: int, cache_dir: str | None
                 ) -> preprocessing.Augmentation:
  """Sec. 3.1's augmentation of config.data, with the split's statistics (cached)."""
  stats = statistics.rgb_statistics(data_config, cache_dir)
  return preprocessing.Augmentation(
      image_size=image_size, scale_min=data_config.scale_min, scale_max=data_config.scale_max,
      random_flip=data_config.random_flip, pca_stddev=data_config.pca_stddev,
      eigval=stats['pca_eigval'], eigvec=stats['pca_eigvec'], mean_rgb=stats['mean_rgb'])


def create_train_iterator(data_config, *, image_size: int, global_batch_size: int,
                          seed: int, start_step: int = 0, shard: data.Shard = data.Shard(),
                          cache_dir: str | None = None, source: sources.Source | None = None
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Endless, seeded training batches; the stream from `start_step` on, for resume.

  Batches hold 'images' (float32 crops) and 'labels', or with data.device_window > 0
  the uint8 windows and draws of preprocessing.train_window that the train step turns
  into the crops (vgg_jax.data.device_crops).

  Each epoch's order is a function of (seed, epoch) and each example's augmentation
  of (seed, its position in the stream), so starting at step k yields exactly the
  batches an uninterrupted run sees from step k. For digits and image folders the
  global batches are the same whatever the process count (see sources.load_train_source).
  """
  process_index = shard.index
  batch = local_batch_size(global_batch_size, shard.count)
  source = source or sources.load_train_source(data_config, shard.index, shard.count,
                                               cache_dir)
  if source.num_examples == 0:
    raise errors.InvalidInput(
        f'Training split {data_config.train_split!r} is empty for process '
        f'{process_index}.')
  augment_with = augmentation(data_config, image_size, cache_dir)
  if source.lookup is not None:
    ds = _global_order_stream(source, seed, start_step * global_batch_size, batch,
                              global_batch_size, process_index)
    stream_id = 0  # Positions are global: the same seed on every process.
  else:
    buffer = min(data_config.shuffle_buffer, source.num_examples)
    ds = _per_process_stream(source, seed, start_step * batch, buffer, process_index)
    stream_id = process_index  # Positions are per process.

  window = data_config.get('device_window', 0)
  augment_fn = (functools.partial(preprocessing.train_window, window=window) if window
                else preprocessing.preprocess_for_train)

  def augment(ex, position):
    example_seed = tf.stack([tf.constant(seed * 65_536 + stream_id, tf.int64), position])
    image = ex['image'] if source.encoded else preprocessing.decode_image(ex['image'], False)
    out = augment_fn(image, example_seed, augment_with, encoded=source.encoded,
                     orientation=ex.get('orientation', 1))
    return {**(out if window else {'images': out}), 'labels': ex['label']}

  ds = ds.map(preprocessing.as_written(augment), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(_options())
  return _with_path_on_error(ds.as_numpy_iterator(), source)


def num_eval_batches(total_examples: int, global_batch_size: int, process_count: int) -> int:
  """Batches every process yields for a full pass (equal on all processes)."""
  batch = local_batch_size(global_batch_size, process_count)
  largest_shard = -(-total_examples // process_count)
  return max(1, -(-largest_shard // batch))


def create_eval_iterator(data_config, *, image_size: int, global_batch_size: int,
                         split: str | None = None, scale: int | None = None,
                         shard: data.Shard = data.Shard(), cache_dir: str | None = None,
                         source: sources.Source | None = None
                         ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval split: centre crops at Q, padded with mask=False.

  Every process yields the same number of batches, so sharded eval steps line up.
  """
  split = split or data_config.eval_split
  scale = scale or data_config.eval_scale
  batch = local_batch_size(global_batch_size, shard.count)
  source = source or sources.load_source(data_config, split, shard.index, shard.count,
                                         cache_dir)
  stats = statistics.rgb_statistics(data_config, cache_dir)
  batches = num_eval_batches(source.total_examples, global_batch_size, shard.count)
  padding = batches * batch - source.num_examples

  def prepare(ex):
    image = preprocessing.preprocess_for_eval(
        preprocessing.decode_example(ex, source.encoded), image_size=image_size,
        scale=scale, mean_rgb=stats['mean_rgb'])
    return {'images': image, 'labels': ex['label'], 'mask': True}

  ds = source.make_dataset().map(preprocessing.as_written(prepare),
                                 num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=True)
  pad = tf.data.Dataset.from_tensors({
      'images': tf.zeros([image_size, image_size, 3]), 'labels': tf.constant(0, tf.int32),
      'mask': False}).repeat(padding)
  ds = ds.concatenate(pad).batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(_options())
  return _with_path_on_error(ds.as_numpy_iterator(), source)
