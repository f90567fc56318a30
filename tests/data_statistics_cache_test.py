"""data.statistics_cache: one file name, read back only for the data it was computed for."""

import os

from vgg_jax.data import statistics_cache


def test_written_statistics_read_back_for_their_key_only(tmp_path, caplog):
  cache = statistics_cache.path(str(tmp_path / 'run'), 'train')
  assert os.path.basename(cache) == 'rgb_stats_train.json'
  assert statistics_cache.read(cache) is None
  statistics_cache.write(cache, {'split': 'train'}, {'mean_rgb': [1.0, 2.0, 3.0]})
  assert statistics_cache.read(cache, {'split': 'train'})['mean_rgb'] == [1.0, 2.0, 3.0]
  assert statistics_cache.read(cache)['mean_rgb'] == [1.0, 2.0, 3.0]
  assert statistics_cache.read(cache, {'split': 'other'}) is None
  assert 'computed for other data' in caplog.text
