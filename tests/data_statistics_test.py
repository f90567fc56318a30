"""Tests for vgg_jax.data.statistics: the mean RGB and PCA basis, and their cache."""

import numpy as np

from vgg_jax.data import sources
from vgg_jax.data import statistics


def test_mean_rgb_is_computed_and_cached(tmp_path, data_config):
  config = data_config(mean_rgb=None)
  stats = statistics.rgb_statistics(config, str(tmp_path))
  train = sources.load_digits_source('train')
  pixels = np.concatenate([ex['image'].numpy().reshape(-1, 3) for ex in train.make_dataset()])
  np.testing.assert_allclose(stats['mean_rgb'], pixels.mean(0), rtol=1e-6)
  cached = list(tmp_path.glob('rgb_stats_*.json'))
  assert len(cached) == 1
  assert statistics.rgb_statistics(config, str(tmp_path))['mean_rgb'] == stats['mean_rgb']


def test_pca_basis_computed_from_training_set(folder, data_config):
  config = data_config(source='folder', folder=folder, mean_rgb=None, pca_eigval='compute')
  stats = statistics.rgb_statistics(config, None)
  vectors, values = np.asarray(stats['pca_eigvec']), np.asarray(stats['pca_eigval'])
  np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-8)
  assert np.all(np.diff(values) <= 0) and values[-1] >= 0
