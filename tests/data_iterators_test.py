"""Tests for vgg_jax.data.iterators: seeds, resume, sharding, padding, error messages."""

import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import data_helpers
from vgg_jax import data
from vgg_jax.data import device_crops
from vgg_jax.data import iterators
from vgg_jax.data import preprocessing
from vgg_jax.data import sources
from vgg_jax.data import statistics


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_digits_batches_shapes_dtypes_and_range():
  config = data_helpers.data_config(mean_rgb=None)
  it = iterators.create_train_iterator(config, image_size=32, global_batch_size=16,
                                       seed=0)
  batch = next(it)
  assert batch['images'].shape == (16, 32, 32, 3) and batch['images'].dtype == np.float32
  assert batch['labels'].shape == (16,) and batch['labels'].dtype == np.int32
  assert set(np.unique(batch['labels'])) <= set(range(10))
  # Gray digits: R == G == B; mean subtracted from 0..255 values.
  np.testing.assert_array_equal(batch['images'][..., 0], batch['images'][..., 1])
  assert batch['images'].min() >= -255 and batch['images'].max() <= 255
  assert batch['images'].min() < 0 < batch['images'].max()


def test_same_seed_same_batches_other_seed_differs():
  config = data_helpers.data_config(scale_max=40, random_flip=True, pca_stddev=0.1)
  make = lambda seed: take(iterators.create_train_iterator(
      config, image_size=32, global_batch_size=8, seed=seed), 3)
  a, b, c = make(1), make(1), make(2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['images'], y['images'])
    np.testing.assert_array_equal(x['labels'], y['labels'])
  assert not np.array_equal(a[0]['images'], c[0]['images'])


def test_resume_at_step_equals_uninterrupted_across_epochs():
  # 1,347 training digits / 64 per batch: step 25 lies in the second epoch.
  config = data_helpers.data_config(scale_max=40, random_flip=True, pca_stddev=0.1)
  make = lambda start: iterators.create_train_iterator(
      config, image_size=32, global_batch_size=64, seed=3, start_step=start)
  full = take(make(0), 27)
  resumed = take(make(25), 2)
  for x, y in zip(full[25:], resumed):
    np.testing.assert_array_equal(x['images'], y['images'])
    np.testing.assert_array_equal(x['labels'], y['labels'])
  # Every example appears once per epoch.
  first_epoch = np.concatenate([b['labels'] for b in full[:21]])
  assert np.bincount(first_epoch, minlength=10).sum() == 21 * 64


def test_multi_process_batches_are_half_the_global_batch():
  config = data_helpers.data_config()
  batches = [next(iterators.create_train_iterator(
      config, image_size=32, global_batch_size=16, seed=0,
      shard=data.Shard(i, 2))) for i in range(2)]
  assert all(b['images'].shape == (8, 32, 32, 3) for b in batches)
  assert not np.array_equal(batches[0]['images'], batches[1]['images'])
  with pytest.raises(ValueError, match='global batch size 15 is not divisible by the process count 2'):
    iterators.create_train_iterator(config, image_size=32, global_batch_size=15,
                                    seed=0, shard=data.Shard(0, 2))


@pytest.mark.parametrize('source', ['digits', 'folder'])
def test_global_batches_do_not_depend_on_process_count(source, folder):
  config = data_helpers.data_config(source=source, folder=folder, scale_min=32, scale_max=40,
                                    random_flip=True, pca_stddev=0.1)
  make = lambda i, n: take(iterators.create_train_iterator(
      config, image_size=32, global_batch_size=8, seed=5,
      shard=data.Shard(i, n)), 4)  # The folder has 24 images: 4 batches of 8 cross an epoch.
  whole, halves = make(0, 1), [make(0, 2), make(1, 2)]
  for j, batch in enumerate(whole):
    for key in ('images', 'labels'):
      joined = np.concatenate([halves[0][j][key], halves[1][j][key]])
      np.testing.assert_array_equal(batch[key], joined)


def test_eval_iterator_pads_with_mask_and_lines_up_processes():
  config = data_helpers.data_config()
  total = sources.load_digits_source('test').num_examples  # 450
  per_process = []
  for i in range(2):
    batches = list(iterators.create_eval_iterator(
        config, image_size=32, global_batch_size=64, shard=data.Shard(i, 2)))
    per_process.append(batches)
    assert all(b['images'].shape == (32, 32, 32, 3) for b in batches)
  assert len(per_process[0]) == len(per_process[1])
  real = sum(int(b['mask'].sum()) for p in per_process for b in p)
  assert real == total
  padded = per_process[1][-1]
  assert not padded['mask'][-1] and np.all(padded['images'][~padded['mask']] == 0)


def test_image_folder_classes_modes_and_sizes(folder):
  config = data_helpers.data_config(source='folder', folder=folder, scale_min=36, scale_max=48,
                                    eval_split='validation',
                                    random_flip=True, pca_stddev=0.1)
  source = sources.load_source(config, 'train')
  assert source.class_names == ['cat', 'dog']  # Sorted.
  assert source.num_examples == 24  # notes.txt is not an image.
  batch = next(iterators.create_train_iterator(
      config, image_size=32, global_batch_size=24, seed=0))
  assert batch['images'].shape == (24, 32, 32, 3)
  assert sorted(np.bincount(batch['labels'])) == [12, 12]
  eval_batches = list(iterators.create_eval_iterator(
      config, image_size=32, global_batch_size=4, scale=40))
  assert sum(int(b['mask'].sum()) for b in eval_batches) == 10


def test_tfds_imagenet_mock_rescales_random_sizes(tmp_path):
  config = data_helpers.data_config(source='tfds', name='imagenet2012', data_dir=str(tmp_path),
                                    train_split='train', eval_split='validation', scale_min=40,
                                    scale_max=56, eval_scale=40, random_flip=True, pca_stddev=0.1,
                                    mean_rgb=statistics.IMAGENET_MEAN_RGB)
  with data_helpers.mock_tfds('imagenet2012', tmp_path, {'train': 12, 'validation': 6}, 12):
    source = sources.load_source(config, 'train')
    assert len(source.class_names) == 1000 and source.encoded
    sizes = {tuple(preprocessing.decode_image(ex['image'], True).shape)
             for ex in source.make_dataset()}
    assert len(sizes) > 1  # The mock's images differ in size, so rescaling is exercised.
    batch = next(iterators.create_train_iterator(config, image_size=32,
                                                 global_batch_size=8, seed=0))
    eval_batch = next(iterators.create_eval_iterator(config, image_size=32,
                                                     global_batch_size=8))
  assert batch['images'].shape == (8, 32, 32, 3) and eval_batch['images'].shape == (8, 32, 32, 3)
  assert batch['labels'].max() < 1000
  assert np.abs(batch['images'].mean()) < 128


def test_tfds_cifar10_mock(tmp_path):
  config = data_helpers.data_config(source='tfds', name='cifar10', data_dir=str(tmp_path),
                                    eval_split='test', scale_min=32, scale_max=32, eval_scale=32)
  with data_helpers.mock_tfds('cifar10', tmp_path, {'train': 10, 'test': 10}, 10):
    batch = next(iterators.create_train_iterator(config, image_size=32,
                                                 global_batch_size=4, seed=0))
    source = sources.load_source(config, 'test')
  assert batch['images'].shape == (4, 32, 32, 3)
  assert len(source.class_names) == 10


def test_corrupt_image_fails_with_its_path(tmp_path, folder):
  root = tmp_path / 'data'
  rng = np.random.default_rng(1)
  for name in ('a', 'b'):
    os.makedirs(root / 'train' / name)
    for i in range(3):
      data_helpers.write_image(root / 'train' / name / f'{i}.jpg', (40, 40), 'RGB', rng, 'JPEG')
  good = (root / 'train' / 'b' / '1.jpg').read_bytes()
  bad = root / 'train' / 'b' / '1.jpg'
  bad.write_bytes(good[:len(good) // 3])  # Truncated.
  config = data_helpers.data_config(source='folder', folder=str(root), eval_split='train')
  with pytest.raises(ValueError, match=f'cannot be decoded:\n  {bad}: '):
    take(iterators.create_train_iterator(config, image_size=32, global_batch_size=6,
                                         seed=0), 2)
  # A file broken after the check still names its path.
  bad.write_bytes(good)
  source = sources.load_source(config, 'train')
  bad.write_bytes(b'this is not a jpeg')
  with pytest.raises(ValueError, match=f'Could not decode image {bad}'):
    list(iterators.create_eval_iterator(config, image_size=32, global_batch_size=2,
                                        source=source))


def test_folder_images_are_turned_upright_by_their_exif(tmp_path):
  root = tmp_path / 'data'
  os.makedirs(root / 'train' / 'a')
  small = np.random.default_rng(0).integers(0, 256, size=(4, 12, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # Stored 96 wide x 32 high; seen 32 wide x 96 high.
  path = root / 'train' / 'a' / 'wide.jpg'
  Image.fromarray(small).resize((96, 32), Image.BICUBIC).save(path, 'JPEG', exif=exif)
  config = data_helpers.data_config(source='folder', folder=str(root), eval_split='train',
                                    scale_min=32, scale_max=40, eval_scale=40)
  stored = preprocessing.decode_image(tf.io.read_file(str(path)), True)
  upright = preprocessing.apply_orientation(stored, 6)
  assert upright.shape == (96, 32, 3)
  train = next(iterators.create_train_iterator(config, image_size=32, global_batch_size=1,
                                               seed=0))['images'][0]
  augmentation = preprocessing.Augmentation(
      image_size=32, scale_min=32, scale_max=40, random_flip=False, pca_stddev=0.0,
      eigval=None, eigvec=None, mean_rgb=config.mean_rgb)
  seed = tf.constant([0, 0], tf.int64)  # The first example of seed 0's stream.
  np.testing.assert_allclose(
      train, preprocessing.preprocess_for_train(upright, seed, augmentation), atol=1e-3)
  assert np.abs(train - preprocessing.preprocess_for_train(stored, seed, augmentation)).max() > 1
  # Resampled in the train step: the upright image sent whole (it fits a 128-pixel
  # window), or cropped on the host and rounded to uint8 (it does not fit 64 pixels).
  for window, tolerance in ((128, 1e-2), (64, 0.5 + 1e-3)):
    config.device_window = window
    windows = next(iterators.create_train_iterator(config, image_size=32, global_batch_size=1,
                                                   seed=0))
    assert tuple(windows['window_hw'][0]) == ((96, 32) if window == 128 else (32, 32))
    np.testing.assert_allclose(device_crops.train_images(windows, 32)[0], train, atol=tolerance)
  config.device_window = 0
  evaluated = next(iterators.create_eval_iterator(config, image_size=32,
                                                  global_batch_size=1))['images'][0]
  eval_kwargs = dict(image_size=32, scale=40, mean_rgb=config.mean_rgb)
  np.testing.assert_allclose(
      evaluated, preprocessing.preprocess_for_eval(upright, **eval_kwargs), atol=1e-3)
  assert np.abs(evaluated - preprocessing.preprocess_for_eval(stored, **eval_kwargs)).max() > 1
