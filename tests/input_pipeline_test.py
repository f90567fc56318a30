"""Tests for vgg_jax.input_pipeline on data the tests make or packages ship."""

import io
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vgg_jax import input_pipeline

MEAN = (120.0, 110.0, 100.0)


def data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      source='digits', name='', folder='', data_dir=None, manual_dir=None, download=False,
      train_split='train', eval_split='test', scale_min=32, scale_max=32, eval_scale=32,
      random_flip=False, pca_stddev=0.0, pca_eigval=None, pca_eigvec=None, mean_rgb=MEAN,
      shuffle_buffer=1000))
  config.update(overrides)
  return config


def mock_tfds(name, data_dir, splits, num_examples):
  """tfds.testing.mock_data over metadata (split sizes) written to data_dir."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
      for split, n in splits.items()]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  return tfds.testing.mock_data(num_examples=num_examples, data_dir=str(data_dir))


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def write_image(path, size, mode, rng, fmt):
  array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(array).convert(mode).save(path, fmt)


@pytest.fixture(scope='module')
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
        write_image(root / split / name / f'{i:03d}{ext}', size, mode, rng, fmt)
  (root / 'train' / 'dog' / 'notes.txt').write_text('not an image')
  return str(root)


def test_digits_batches_shapes_dtypes_and_range():
  config = data_config(mean_rgb=None)
  it = input_pipeline.create_train_iterator(config, image_size=32, global_batch_size=16,
                                            seed=0)
  batch = next(it)
  assert batch['images'].shape == (16, 32, 32, 3) and batch['images'].dtype == np.float32
  assert batch['labels'].shape == (16,) and batch['labels'].dtype == np.int32
  assert set(np.unique(batch['labels'])) <= set(range(10))
  # Gray digits: R == G == B; mean subtracted from 0..255 values.
  np.testing.assert_array_equal(batch['images'][..., 0], batch['images'][..., 1])
  assert batch['images'].min() >= -255 and batch['images'].max() <= 255
  assert batch['images'].min() < 0 < batch['images'].max()


def test_digits_split_is_fixed_stratified_and_disjoint():
  train = input_pipeline.load_digits_source('train')
  test = input_pipeline.load_digits_source('test')
  assert train.num_examples + test.num_examples == 1797
  train_labels = [int(ex['label']) for ex in train.make_dataset()]
  test_labels = [int(ex['label']) for ex in test.make_dataset()]
  # Stratified: every class's share of the test set within a point of 25%.
  for digit in range(10):
    share = test_labels.count(digit) / (test_labels.count(digit) + train_labels.count(digit))
    assert abs(share - 0.25) < 0.02
  again = input_pipeline.load_digits_source('test')
  assert [int(ex['label']) for ex in again.make_dataset()] == test_labels
  with pytest.raises(ValueError, match="not 'validation'"):
    input_pipeline.load_digits_source('validation')


def test_mean_rgb_is_computed_and_cached(tmp_path):
  config = data_config(mean_rgb=None)
  stats = input_pipeline.rgb_statistics(config, str(tmp_path))
  train = input_pipeline.load_digits_source('train')
  pixels = np.concatenate([ex['image'].numpy().reshape(-1, 3) for ex in train.make_dataset()])
  np.testing.assert_allclose(stats['mean_rgb'], pixels.mean(0), rtol=1e-6)
  cached = list(tmp_path.glob('rgb_stats_*.json'))
  assert len(cached) == 1
  assert input_pipeline.rgb_statistics(config, str(tmp_path))['mean_rgb'] == stats['mean_rgb']


def test_pca_basis_computed_from_training_set(folder):
  config = data_config(source='folder', folder=folder, mean_rgb=None, pca_eigval='compute')
  stats = input_pipeline.rgb_statistics(config, None)
  vectors, values = np.asarray(stats['pca_eigvec']), np.asarray(stats['pca_eigval'])
  np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-8)
  assert np.all(np.diff(values) <= 0) and values[-1] >= 0


def test_same_seed_same_batches_other_seed_differs():
  config = data_config(scale_max=40, random_flip=True, pca_stddev=0.1)
  make = lambda seed: take(input_pipeline.create_train_iterator(
      config, image_size=32, global_batch_size=8, seed=seed), 3)
  a, b, c = make(1), make(1), make(2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['images'], y['images'])
    np.testing.assert_array_equal(x['labels'], y['labels'])
  assert not np.array_equal(a[0]['images'], c[0]['images'])


def test_resume_at_step_equals_uninterrupted_across_epochs():
  # 1,347 training digits / 64 per batch: step 25 lies in the second epoch.
  config = data_config(scale_max=40, random_flip=True, pca_stddev=0.1)
  make = lambda start: input_pipeline.create_train_iterator(
      config, image_size=32, global_batch_size=64, seed=3, start_step=start)
  full = take(make(0), 27)
  resumed = take(make(25), 2)
  for x, y in zip(full[25:], resumed):
    np.testing.assert_array_equal(x['images'], y['images'])
    np.testing.assert_array_equal(x['labels'], y['labels'])
  # Every example appears once per epoch.
  first_epoch = np.concatenate([b['labels'] for b in full[:21]])
  assert np.bincount(first_epoch, minlength=10).sum() == 21 * 64


def test_two_processes_see_disjoint_shards_covering_the_split(folder):
  for source in ('digits', 'folder'):
    config = data_config(source=source, folder=folder)
    split = 'train' if source == 'digits' else 'validation'
    shards = [input_pipeline.load_source(config, split, i, 2) for i in range(2)]
    whole = input_pipeline.load_source(config, split)
    describe = lambda s: [s.describe(i) for i in range(s.num_examples)]
    a, b = describe(shards[0]), describe(shards[1])
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(describe(whole))
    assert abs(len(a) - len(b)) <= 1


def test_multi_process_batches_are_half_the_global_batch():
  config = data_config()
  batches = [next(input_pipeline.create_train_iterator(
      config, image_size=32, global_batch_size=16, seed=0, process_index=i,
      process_count=2)) for i in range(2)]
  assert all(b['images'].shape == (8, 32, 32, 3) for b in batches)
  assert not np.array_equal(batches[0]['images'], batches[1]['images'])
  with pytest.raises(ValueError, match='global batch size 15 is not divisible by the process count 2'):
    input_pipeline.create_train_iterator(config, image_size=32, global_batch_size=15,
                                         seed=0, process_count=2)


@pytest.mark.parametrize('source', ['digits', 'folder'])
def test_global_batches_do_not_depend_on_process_count(source, folder):
  config = data_config(source=source, folder=folder, scale_min=32, scale_max=40,
                       random_flip=True, pca_stddev=0.1)
  make = lambda i, n: take(input_pipeline.create_train_iterator(
      config, image_size=32, global_batch_size=8, seed=5, process_index=i,
      process_count=n), 4)  # The folder has 24 images: 4 batches of 8 cross an epoch.
  whole, halves = make(0, 1), [make(0, 2), make(1, 2)]
  for j, batch in enumerate(whole):
    for key in ('images', 'labels'):
      joined = np.concatenate([halves[0][j][key], halves[1][j][key]])
      np.testing.assert_array_equal(batch[key], joined)


def test_eval_iterator_pads_with_mask_and_lines_up_processes():
  config = data_config()
  total = input_pipeline.load_digits_source('test').num_examples  # 450
  per_process = []
  for i in range(2):
    batches = list(input_pipeline.create_eval_iterator(
        config, image_size=32, global_batch_size=64, process_index=i, process_count=2))
    per_process.append(batches)
    assert all(b['images'].shape == (32, 32, 32, 3) for b in batches)
  assert len(per_process[0]) == len(per_process[1])
  real = sum(int(b['mask'].sum()) for p in per_process for b in p)
  assert real == total
  padded = per_process[1][-1]
  assert not padded['mask'][-1] and np.all(padded['images'][~padded['mask']] == 0)


def test_image_folder_classes_modes_and_sizes(folder):
  config = data_config(source='folder', folder=folder, scale_min=36, scale_max=48,
                       eval_split='validation',
                       random_flip=True, pca_stddev=0.1)
  source = input_pipeline.load_source(config, 'train')
  assert source.class_names == ['cat', 'dog']  # Sorted.
  assert source.num_examples == 24  # notes.txt is not an image.
  batch = next(input_pipeline.create_train_iterator(
      config, image_size=32, global_batch_size=24, seed=0))
  assert batch['images'].shape == (24, 32, 32, 3)
  assert sorted(np.bincount(batch['labels'])) == [12, 12]
  eval_batches = list(input_pipeline.create_eval_iterator(
      config, image_size=32, global_batch_size=4, scale=40))
  assert sum(int(b['mask'].sum()) for b in eval_batches) == 10


def test_rescale_smallest_side_is_isotropic():
  image = tf.zeros([50, 100, 3], tf.uint8)
  assert tuple(input_pipeline.rescale_smallest_side(image, 32).shape) == (32, 64, 3)
  image = tf.zeros([375, 500, 3], tf.uint8)
  assert tuple(input_pipeline.rescale_smallest_side(image, 256).shape) == (256, 341, 3)


def test_train_crop_comes_from_the_rescaled_image():
  # A horizontal ramp: after rescaling the smallest side to S and cropping, the column
  # values must follow the rescaled ramp, whatever the crop offset.
  ramp = np.tile(np.linspace(0, 255, 120).astype(np.uint8)[None, :, None], (60, 1, 3))
  out = input_pipeline.preprocess_for_train(
      tf.constant(ramp), tf.constant([0, 7], tf.int64), image_size=32, scale_min=40,
      scale_max=40, random_flip=False, pca_stddev=0.0, eigval=None, eigvec=None,
      mean_rgb=(0, 0, 0)).numpy()
  assert out.shape == (32, 32, 3)
  steps = np.diff(out[0, :, 0])
  assert np.all(steps > 0) and abs(steps.mean() - 255 / 80) < 0.5  # 120 wide -> 80 wide.


def test_pca_lighting_shifts_along_eigenvectors():
  image = tf.zeros([4, 4, 3])
  out = input_pipeline.pca_lighting(image, (1.0, 0.0, 0.0), np.eye(3)[:, [2, 0, 1]],
                                    0.1, tf.constant([1, 2], tf.int64)).numpy()
  # Only the first eigenvalue is non-zero; its eigenvector is the blue axis.
  assert np.all(out[..., :2] == 0) and np.all(out[..., 2] == out[0, 0, 2])
  assert out[0, 0, 2] != 0


def test_multi_crop_views_count_and_offsets():
  image = np.arange(40 * 50 * 3, dtype=np.float32).reshape(40, 50, 3)
  views = input_pipeline.multi_crop_views(image, image_size=32)
  assert views.shape == (50, 32, 32, 3)
  offsets = input_pipeline.multi_crop_offsets(40, 50, 32)
  assert offsets[0] == (0, 0) and offsets[-1] == (8, 18) and offsets[12] == (4, 9)
  np.testing.assert_array_equal(views[24], image[8:40, 18:50])
  np.testing.assert_array_equal(views[25], image[0:32, 0:32][:, ::-1])
  np.testing.assert_array_equal(
      input_pipeline.multi_crop_views(image, image_size=32, flip=False), views[:25])


def test_tfds_imagenet_mock_rescales_random_sizes(tmp_path):
  config = data_config(source='tfds', name='imagenet2012', data_dir=str(tmp_path),
                       train_split='train', eval_split='validation', scale_min=40,
                       scale_max=56, eval_scale=40, random_flip=True, pca_stddev=0.1,
                       mean_rgb=input_pipeline.IMAGENET_MEAN_RGB)
  with mock_tfds('imagenet2012', tmp_path, {'train': 12, 'validation': 6}, 12):
    source = input_pipeline.load_source(config, 'train')
    assert len(source.class_names) == 1000 and source.encoded
    sizes = {tuple(input_pipeline.decode_image(ex['image'], True).shape)
             for ex in source.make_dataset()}
    assert len(sizes) > 1  # The mock's images differ in size, so rescaling is exercised.
    batch = next(input_pipeline.create_train_iterator(config, image_size=32,
                                                      global_batch_size=8, seed=0))
    eval_batch = next(input_pipeline.create_eval_iterator(config, image_size=32,
                                                          global_batch_size=8))
  assert batch['images'].shape == (8, 32, 32, 3) and eval_batch['images'].shape == (8, 32, 32, 3)
  assert batch['labels'].max() < 1000
  assert np.abs(batch['images'].mean()) < 128


def test_tfds_cifar10_mock(tmp_path):
  config = data_config(source='tfds', name='cifar10', data_dir=str(tmp_path),
                       eval_split='test', scale_min=32, scale_max=32, eval_scale=32)
  with mock_tfds('cifar10', tmp_path, {'train': 10, 'test': 10}, 10):
    batch = next(input_pipeline.create_train_iterator(config, image_size=32,
                                                      global_batch_size=4, seed=0))
    source = input_pipeline.load_source(config, 'test')
  assert batch['images'].shape == (4, 32, 32, 3)
  assert len(source.class_names) == 10


def test_tfds_not_prepared_says_what_to_do(tmp_path):
  config = data_config(source='tfds', name='imagenet2012', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.load_source(config, 'train')
  message = str(error.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert 'tfds build imagenet2012' in message and str(tmp_path) in message
  config = data_config(source='tfds', name='cifar10', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match='download=True'):
    input_pipeline.load_source(config, 'train')


def test_tfds_unknown_split(tmp_path):
  config = data_config(source='tfds', name='cifar10', data_dir=str(tmp_path))
  with mock_tfds('cifar10', tmp_path, {'train': 4, 'test': 4}, 4):
    with pytest.raises(ValueError, match="no split 'validation'; it has"):
      input_pipeline.load_source(config, 'validation')


def test_corrupt_image_fails_with_its_path(tmp_path, folder):
  root = tmp_path / 'data'
  rng = np.random.default_rng(1)
  for name in ('a', 'b'):
    os.makedirs(root / 'train' / name)
    for i in range(3):
      write_image(root / 'train' / name / f'{i}.jpg', (40, 40), 'RGB', rng, 'JPEG')
  good = (root / 'train' / 'b' / '1.jpg').read_bytes()
  bad = root / 'train' / 'b' / '1.jpg'
  bad.write_bytes(good[:len(good) // 3])  # Truncated.
  config = data_config(source='folder', folder=str(root), eval_split='train')
  with pytest.raises(ValueError, match=f'Could not decode image {bad}'):
    take(input_pipeline.create_train_iterator(config, image_size=32, global_batch_size=6,
                                              seed=0), 2)
  bad.write_bytes(b'this is not a jpeg')
  with pytest.raises(ValueError, match=f'Could not decode image {bad}'):
    list(input_pipeline.create_eval_iterator(config, image_size=32, global_batch_size=2))


def test_bad_folder_layouts_name_the_problem(tmp_path):
  (tmp_path / 'train' / 'cat').mkdir(parents=True)
  config = data_config(source='folder', folder=str(tmp_path))
  with pytest.raises(ValueError, match=f'Class folder {tmp_path}/train/cat holds no images'):
    input_pipeline.load_source(config, 'train')
  with pytest.raises(ValueError, match=r"Split 'validation' not found: .*found in .*\['train'\]"):
    input_pipeline.load_source(config, 'validation')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='has no class folders'):
    input_pipeline.load_source(data_config(source='folder', folder=str(tmp_path)), 'empty')


@pytest.mark.parametrize('overrides, message', [
    (dict(scale_min=64, scale_max=48), 'scale_min=64 > scale_max=48'),
    (dict(scale_min=28, scale_max=40), 'image_size=32 is larger than the training scale S_min=28'),
    (dict(eval_scale=30), 'larger than the test scale Q=30'),
])
def test_bad_scales_name_the_value(overrides, message):
  with pytest.raises(ValueError, match=message):
    input_pipeline.create_train_iterator(data_config(**overrides), image_size=32,
                                         global_batch_size=8, seed=0)


def test_unknown_source_names_the_choices():
  with pytest.raises(ValueError, match="source='csv' is not one of"):
    input_pipeline.load_source(data_config(source='csv'), 'train')


def smooth_jpeg(width=500, height=375, seed=0):
  """A smooth photo-like JPEG, the benchmark's kind of image."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(small).resize((width, height), Image.BICUBIC).save(buffer, 'JPEG', quality=95)
  return buffer.getvalue()


@pytest.mark.parametrize('size, scales', [((500, 375), (256, 512)), ((375, 500), (256, 256)),
                                          ((90, 300), (64, 96))])
def test_crop_before_decode_matches_decode_then_crop(size, scales):
  jpeg = smooth_jpeg(*size)
  kwargs = dict(image_size=scales[0] * 7 // 8, scale_min=scales[0], scale_max=scales[1],
                random_flip=True, pca_stddev=0.1, eigval=input_pipeline.IMAGENET_PCA_EIGVAL,
                eigvec=input_pipeline.IMAGENET_PCA_EIGVEC, mean_rgb=MEAN)
  diffs = []
  for i in range(6):
    seed = tf.constant([3, i], tf.int64)
    cropped_first = input_pipeline.preprocess_for_train(tf.constant(jpeg), seed, encoded=True,
                                                        **kwargs).numpy()
    decoded = input_pipeline.decode_image(tf.constant(jpeg), True)
    reference = input_pipeline.preprocess_for_train(decoded, seed, **kwargs).numpy()
    assert cropped_first.shape == reference.shape == (kwargs['image_size'],) * 2 + (3,)
    diffs.append(np.abs(cropped_first - reference).max())
  # Same S, offset, flip, colour shift and resampling: equal up to float round-off.
  assert max(diffs) < 1e-2, diffs


def test_non_jpeg_bytes_are_decoded_whole():
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), np.uint8)).save(
      buffer, 'PNG')
  kwargs = dict(image_size=32, scale_min=40, scale_max=48, random_flip=True, pca_stddev=0.0,
                eigval=None, eigvec=None, mean_rgb=MEAN)
  seed = tf.constant([1, 2], tf.int64)
  from_bytes = input_pipeline.preprocess_for_train(tf.constant(buffer.getvalue()), seed,
                                                   encoded=True, **kwargs)
  decoded = input_pipeline.decode_image(tf.constant(buffer.getvalue()), True)
  np.testing.assert_array_equal(from_bytes, input_pipeline.preprocess_for_train(decoded, seed,
                                                                                **kwargs))
