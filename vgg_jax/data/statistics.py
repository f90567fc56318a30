"""The mean RGB and the RGB covariance's eigenbasis (PCA colour shift), cached as JSON."""

import os
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf

from vgg_jax import errors
from vgg_jax.data import preprocessing
from vgg_jax.data import sources
from vgg_jax.data import statistics_cache

# AlexNet's PCA lighting noise on ImageNet (0..255 RGB): eigenvalues and eigenvectors
# (columns) of the training pixels' RGB covariance.
IMAGENET_PCA_EIGVAL = (55.46, 4.794, 1.148)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)  # The mean the released VGG nets use.


def compute_rgb_statistics(source: sources.Source,
                           max_examples: int = 10_000) -> dict[str, Any]:
  """Mean RGB and the eigen-decomposition of the RGB covariance, over training pixels."""

  def pixels_of(ex):
    image = preprocessing.decode_example(ex, source.encoded)
    return tf.reshape(tf.cast(image, tf.float64), [-1, 3])

  ds = source.make_dataset().take(max_examples).map(
      preprocessing.as_written(pixels_of), num_parallel_calls=tf.data.AUTOTUNE)
  count, total, outer = 0, np.zeros(3), np.zeros((3, 3))
  for pixels in ds.as_numpy_iterator():
    count += len(pixels)
    total += pixels.sum(0)
    outer += pixels.T @ pixels
  if count == 0:
    raise errors.InvalidInput('Cannot compute RGB statistics: the training split is empty.')
  mean = total / count
  cov = outer / count - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(cov)
  order = np.argsort(eigval)[::-1]
  return {'mean_rgb': mean.tolist(), 'pca_eigval': eigval[order].tolist(),
          'pca_eigvec': eigvec[:, order].tolist(), 'num_pixels': int(count)}


def statistics_key(data_config) -> dict[str, Any]:
  """What the training set's RGB statistics depend on: the source, its location, the split."""
  location = {'folder': os.path.abspath(data_config.folder) if data_config.folder else '',
              'tfds': f'{data_config.name} in {data_config.data_dir or "the default data_dir"}',
              'digits': 'scikit-learn digits', 'fake': str(tuple(data_config.fake_image_shape))}
  return {'source': data_config.source, 'data': location.get(data_config.source, ''),
          'split': data_config.train_split, 'max_examples': data_config.stats_max_examples}


def rgb_statistics(data_config, cache_dir: str | None) -> dict[str, Any]:
  """Mean RGB and PCA basis from the config, or computed once and cached as JSON."""
  stats = {'mean_rgb': data_config.mean_rgb,
           'pca_eigval': data_config.pca_eigval,
           'pca_eigvec': data_config.pca_eigvec}
  if stats['pca_eigval'] is None:  # Default: ImageNet's published basis.
    stats['pca_eigval'], stats['pca_eigvec'] = IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC
  need_compute = stats['mean_rgb'] is None or stats['pca_eigval'] == 'compute'
  if not need_compute:
    return stats
  key = statistics_key(data_config)
  cache = statistics_cache.path(cache_dir, data_config.train_split) if cache_dir else None
  computed = statistics_cache.read(cache, key) if cache else None
  if computed is None:
    logging.info('Computing the mean RGB and RGB covariance of the training set...')
    source = sources.load_source(data_config, data_config.train_split, cache_dir=cache_dir,
                                 announce=False)  # The run has logged its classes.
    computed = compute_rgb_statistics(source, data_config.stats_max_examples)
    if cache:
      statistics_cache.write(cache, key, computed)
  if stats['mean_rgb'] is None:
    stats['mean_rgb'] = computed['mean_rgb']
  if stats['pca_eigval'] == 'compute':
    stats['pca_eigval'], stats['pca_eigvec'] = computed['pca_eigval'], computed['pca_eigvec']
  return stats
