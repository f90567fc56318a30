"""Tests for vgg_jax.data.device_crops: the train step's resampling of the host's uint8 windows
equals the host pipeline's crops (preprocessing.preprocess_for_train)."""

import jax
import numpy as np
import pytest
import tensorflow as tf

import data_helpers
import run_helpers
from vgg_jax.data import device_crops
from vgg_jax.data import iterators
from vgg_jax.data import preprocessing
from vgg_jax import sharding
from vgg_jax.training import config_checks
import train_test  # pylint: disable=g-bad-import-order  (tests/ is on sys.path)


def take_batches(config, count):
  batches = iterators.create_train_iterator(config, image_size=32, global_batch_size=8, seed=3)
  return [next(batches) for _ in range(count)]


def window_batch(rng, count, window, size):
  """Random windows of random real sizes (zero-padded), draws, flips and colours."""
  hw = rng.integers(size // 2, window + 1, size=(count, 2))
  pixels = rng.integers(0, 256, size=(count, window, window, 3), dtype=np.uint8)
  for i, (h, w) in enumerate(hw):
    pixels[i, h:], pixels[i, :, w:] = 0, 0
  scale = rng.uniform(0.4, 1.6, size=(count, 2))
  translation = rng.uniform(-12, 2, size=(count, 2))
  return {'window': pixels, 'window_hw': hw.astype(np.int32),
          'resample': np.concatenate([scale, translation], 1).astype(np.float32),
          'flip': rng.random(count) < 0.5,
          'colour': rng.normal(0, 20, size=(count, 3)).astype(np.float32),
          'labels': np.arange(count, dtype=np.int32)}


def test_train_images_equal_the_host_resample():
  batch = window_batch(np.random.default_rng(0), 6, 48, 24)
  crops = np.asarray(jax.jit(device_crops.train_images, static_argnums=1)(batch, 24))
  assert crops.shape == (6, 24, 24, 3) and crops.dtype == np.float32
  for i in range(6):
    h, w = batch['window_hw'][i]
    host = preprocessing.resample(tf.constant(batch['window'][i, :h, :w]), 24,
                                  tf.constant(batch['resample'][i, :2]),
                                  tf.constant(batch['resample'][i, 2:]), batch['flip'][i])
    np.testing.assert_allclose(crops[i], host.numpy() + batch['colour'][i], atol=1e-3)
  # The padding beyond window_hw is never read: garbage there changes nothing.
  noisy = dict(batch, window=batch['window'].copy())
  for i, (h, w) in enumerate(batch['window_hw']):
    noisy['window'][i, h:], noisy['window'][i, :, w:] = 255, 255
  np.testing.assert_array_equal(device_crops.train_images(noisy, 24), crops)


def test_window_batches_give_the_host_pipelines_crops(folder):
  # JPEGs (RGB, gray, CMYK) and PNGs of 40-90 px; S ~ U[40, 56] with flips and colour
  # shifts. A 64 px window holds most crops' sources; larger ones are cropped on the host.
  config = data_helpers.data_config(source='folder', folder=folder, eval_split='validation',
                                    scale_min=40, scale_max=56, eval_scale=40, random_flip=True,
                                    pca_stddev=0.1)
  host = take_batches(config, 3)
  config.device_window = 64
  windows = take_batches(config, 3)
  sent_whole = cropped_on_host = 0
  for want, got in zip(host, windows):
    assert set(got) == {'window', 'window_hw', 'resample', 'flip', 'colour', 'labels'}
    assert got['window'].dtype == np.uint8 and got['window'].shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(got['labels'], want['labels'])
    crops = np.asarray(device_crops.train_images(got, 32))
    error = np.abs(crops - want['images']).max(axis=(1, 2, 3))
    on_host = np.all(got['resample'] == [1, 1, 0, 0], axis=1) & np.all(
        got['window_hw'] == 32, axis=1)
    # Resampled on the device: float round-off. On the host: rounded to uint8.
    assert np.all(error[~on_host] < 1e-2), error
    assert np.all(error[on_host] < 0.5 + 1e-3), error
    sent_whole += int((~on_host).sum())
    cropped_on_host += int(on_host.sum())
  assert sent_whole >= 8 and cropped_on_host >= 1, (sent_whole, cropped_on_host)


def test_train_step_on_windows_equals_the_step_on_their_crops():
  config = run_helpers.tiny_config()
  batch = window_batch(np.random.default_rng(1), 16, 48, 32)
  crops = {'images': np.asarray(device_crops.train_images(batch, 32)),
           'labels': batch['labels'] % 10}
  batch['labels'] = crops['labels']
  mesh = sharding.create_mesh()
  on_device = train_test.run_steps(config, mesh, [batch])
  on_host = train_test.run_steps(config, mesh, [crops])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         on_device, on_host)


@pytest.mark.parametrize('window', [16, -1])
def test_bad_device_window_names_the_field(window):
  config = run_helpers.tiny_config(**{'data.device_window': window})
  with pytest.raises(ValueError, match='data.device_window'):
    config_checks.check_train_config(config)


def test_iterator_without_windows_keeps_float_images():
  batch = take_batches(data_helpers.data_config(), 1)[0]
  assert set(batch) == {'images', 'labels'} and batch['images'].dtype == np.float32
