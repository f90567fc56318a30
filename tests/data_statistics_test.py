"""Tests for vgg_jax.data.statistics: the mean RGB and PCA basis, and their cache."""

import os

import numpy as np
from PIL import Image

import data_helpers
from vgg_jax.data import sources
from vgg_jax.data import statistics


def test_mean_rgb_is_computed_and_cached(tmp_path):
  config = data_helpers.data_config(mean_rgb=None)
  stats = statistics.rgb_statistics(config, str(tmp_path))
  train = sources.load_digits_source('train')
  pixels = np.concatenate([ex['image'].numpy().reshape(-1, 3) for ex in train.make_dataset()])
  np.testing.assert_allclose(stats['mean_rgb'], pixels.mean(0), rtol=1e-6)
  cached = list(tmp_path.glob('rgb_stats_*.json'))
  assert len(cached) == 1
  assert statistics.rgb_statistics(config, str(tmp_path))['mean_rgb'] == stats['mean_rgb']


def test_pca_basis_computed_from_training_set(folder):
  config = data_helpers.data_config(source='folder', folder=folder, mean_rgb=None,
                                    pca_eigval='compute')
  stats = statistics.rgb_statistics(config, None)
  vectors, values = np.asarray(stats['pca_eigvec']), np.asarray(stats['pca_eigval'])
  np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-8)
  assert np.all(np.diff(values) <= 0) and values[-1] >= 0


def test_cache_of_other_data_is_recomputed_not_reused(tmp_path, folder, caplog):
  other = tmp_path / 'other'  # A second folder: one dark, one bright image per class.
  for name, value in (('cat', 20), ('dog', 230)):
    os.makedirs(other / 'train' / name)
    Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(other / 'train' / name / 'a.png')
  workdir = str(tmp_path / 'workdir')
  first = statistics.rgb_statistics(
      data_helpers.data_config(source='folder', folder=folder, mean_rgb=None), workdir)
  again = statistics.rgb_statistics(
      data_helpers.data_config(source='folder', folder=folder, mean_rgb=None), workdir)
  assert again['mean_rgb'] == first['mean_rgb'] and 'recomputing' not in caplog.text
  moved = statistics.rgb_statistics(data_helpers.data_config(source='folder', folder=str(other),
                                                             mean_rgb=None), workdir)
  np.testing.assert_allclose(moved['mean_rgb'], [125.0] * 3)
  assert 'were computed for other data' in caplog.text and 'recomputing' in caplog.text
