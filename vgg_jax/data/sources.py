"""Datasets as Sources: digits, fake, image folders and TFDS, sharded per process.

A Source is one split of a dataset in a fixed order: examples {'image', 'label'}, the
image encoded bytes or uint8 [h, w, 3]; image folders add 'orientation' (EXIF 1..8, see
preprocessing.apply_orientation; absent means 1). Sources with random access (digits,
folders, fake) also give a lookup by example index, which the iterators use for a global
order. Image folders are checked once (scan.check_folder) before they are used.
"""

import dataclasses
import os
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from vgg_jax import data
from vgg_jax import errors
from vgg_jax.data import preprocessing
from vgg_jax.data import scan

IMAGE_EXTENSIONS = data.IMAGE_EXTENSIONS
DIGITS_SIZE = 32
IMAGENET_MANUAL_HELP = """\
ImageNet (imagenet2012) cannot be downloaded automatically. To prepare it:
  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org.
  2. Put both files in {manual_dir}
  3. Run: tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir}
     (or set config.data.download=True and rerun to prepare it from there).
"""


@dataclasses.dataclass
class Source:
  """A split of a dataset: examples {'image': bytes or uint8 [h,w,3], 'label'[, 'orientation']}."""
  make_dataset: Callable[[], tf.data.Dataset]  # This process's shard, fixed order.
  num_examples: int  # In this process's shard.
  total_examples: int  # In the whole split, over all processes.
  class_names: list[str]
  encoded: bool  # True: 'image' holds encoded bytes; False: decoded uint8.
  describe: Callable[[int], str] = lambda index: f'example {index}'
  # Random access by example index (tf int64 -> example), for sources that allow it.
  lookup: Callable[[Any], dict[str, Any]] | None = None


def shard_bounds(total: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of this process's contiguous share of `total` examples."""
  return total * process_index // process_count, total * (process_index + 1) // process_count


def load_digits_source(split: str, process_index: int = 0, process_count: int = 1,
                       test_fraction: float = 0.25, split_seed: int = 0) -> Source:
  """scikit-learn's digits (1,797 real 8x8 scans), stratified seeded split, 32x32 RGB."""
  # Imported here: only the digits source needs scikit-learn, which is slow to import.
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  if split not in ('train', 'test'):
    raise errors.InvalidInput(f"digits has splits 'train' and 'test', not {split!r}.")
  digits = sk_datasets.load_digits()
  indices = np.arange(len(digits.target))
  train_idx, test_idx = model_selection.train_test_split(
      indices, test_size=test_fraction, stratify=digits.target, random_state=split_seed)
  chosen = np.sort(train_idx if split == 'train' else test_idx)
  start, end = shard_bounds(len(chosen), process_index, process_count)
  chosen = chosen[start:end]
  # 0..16 gray levels -> 0..255, 8x8 -> 32x32 by pixel repetition, gray -> RGB.
  images = np.round(digits.images[chosen] * (255.0 / 16.0)).astype(np.uint8)
  scale = DIGITS_SIZE // images.shape[1]
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  images = np.repeat(images[..., None], 3, axis=-1)
  labels = digits.target[chosen].astype(np.int32)

  def lookup(index):
    return {'image': tf.gather(images, index), 'label': tf.gather(labels, index)}

  return Source(
      make_dataset=lambda: tf.data.Dataset.from_tensor_slices(
          {'image': images, 'label': labels}),
      num_examples=len(chosen),
      total_examples=len(train_idx if split == 'train' else test_idx),
      class_names=[str(d) for d in range(10)], encoded=False,
      describe=lambda i: f'digits {split} example {int(chosen[i])}', lookup=lookup)


def load_fake_source(split: str, num_examples: int, image_shape: Sequence[int],
                     num_classes: int = 1000, process_index: int = 0,
                     process_count: int = 1) -> Source:
  """Random uint8 images made inside tf.data (no files): for throughput benchmarks."""
  height, width = image_shape
  salt = {'train': 0, 'validation': 1, 'test': 2}.get(split)
  if salt is None:
    raise errors.InvalidInput(f"fake data has splits 'train', 'validation', 'test', not {split!r}.")
  total = num_examples if split == 'train' else max(1, num_examples // 50)
  start, end = shard_bounds(total, process_index, process_count)

  def lookup(index):
    index = tf.cast(index, tf.int64) + start
    pixels = tf.random.stateless_uniform([height, width, 3], tf.stack([index, salt]),
                                         maxval=256, dtype=tf.int32)
    return {'image': tf.cast(pixels, tf.uint8), 'label': tf.cast(index % num_classes, tf.int32)}

  def make_dataset():
    return tf.data.Dataset.range(end - start).map(preprocessing.as_written(lookup))

  return Source(make_dataset, end - start, total, [str(i) for i in range(num_classes)],
                encoded=False,
                describe=lambda i: f'fake {split} example {start + i}', lookup=lookup)


def list_image_folder(root: str, split: str) -> tuple[list[str], np.ndarray, list[str]]:
  """Files and labels of root/<split>/<class>/*, classes sorted by name."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    existing = sorted(d for d in os.listdir(root)) if os.path.isdir(root) else []
    raise errors.InvalidInput(
        f'Split {split!r} not found: {split_dir} is not a directory '
        f'(found in {root}: {existing or "nothing"}).')
  class_names = sorted(d for d in os.listdir(split_dir)
                       if os.path.isdir(os.path.join(split_dir, d)))
  if not class_names:
    raise errors.InvalidInput(
        f'{split_dir} has no class folders: expected {split_dir}/<class>/*.jpg.')
  paths, labels, ignored = [], [], 0
  for label, name in enumerate(class_names):
    class_dir = os.path.join(split_dir, name)
    names = os.listdir(class_dir)
    files = sorted(f for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
    ignored += len(names) - len(files)
    if not files:
      raise errors.InvalidInput(
          f'Class folder {class_dir} holds no images '
          f'({", ".join(IMAGE_EXTENSIONS)}).')
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [label] * len(files)
  if ignored:
    logging.info('Ignored %d file(s) in %s without an image extension (%s).', ignored,
                 split_dir, ', '.join(IMAGE_EXTENSIONS))
  return paths, np.asarray(labels, np.int32), class_names


def load_folder_source(root: str, split: str, process_index: int = 0,
                       process_count: int = 1, cache_dir: str | None = None,
                       skip_corrupt: bool = False, announce: bool = True) -> Source:
  """An image folder: root/<split>/<class>/*.jpg|png; class names sorted.

  Every file is decoded once first (scan.check_folder, cached in cache_dir): undecodable
  ones raise, or with skip_corrupt are left out. Every process sees the same list.
  announce: log its classes and counts (False when a run reads a split a second time).
  """
  paths, labels, class_names = list_image_folder(root, split)
  checks = scan.check_folder(root, split, paths, cache_dir, skip_corrupt)
  keep = [i for i, check in enumerate(checks) if not check['error']]
  orientations = np.asarray([checks[i]['orientation'] for i in keep], np.int32)
  paths, labels = [paths[i] for i in keep], labels[keep]
  counts = ', '.join(f'{name} {n}' for name, n in
                     zip(class_names, np.bincount(labels, minlength=len(class_names))))
  dropped = len(checks) - len(keep)
  note = f' ({dropped} unreadable file{"s" * (dropped > 1)} left out)' if dropped else ''
  if announce:
    logging.info('Folder %s: %d classes, %s%s', os.path.join(root, split), len(class_names),
                 counts, note)
  # Interleave so every process gets examples of every class.
  order = np.random.default_rng(0).permutation(len(paths))
  start, end = shard_bounds(len(paths), process_index, process_count)
  mine = np.sort(order[start:end])
  my_paths = [paths[i] for i in mine]
  my_labels, my_orientations = labels[mine], orientations[mine]

  def lookup(index):
    return {'image': tf.io.read_file(tf.gather(my_paths, index)),
            'label': tf.gather(my_labels, index),
            'orientation': tf.gather(my_orientations, index)}

  def make_dataset():
    return tf.data.Dataset.range(len(my_paths)).map(
        preprocessing.as_written(lookup), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)

  return Source(make_dataset, len(my_paths), len(paths), class_names, encoded=True,
                describe=lambda i: my_paths[i], lookup=lookup)


def load_tfds_source(name: str, split: str, data_dir: str | None = None,
                     manual_dir: str | None = None, download: bool = False,
                     process_index: int = 0, process_count: int = 1) -> Source:
  """A TFDS image-classification dataset, images left encoded (decoded by us)."""
  # Imported here: only TFDS sources pay for importing tensorflow_datasets (seconds).
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if not download:
      default_manual = os.path.join(builder._data_dir_root, 'downloads', 'manual')  # pylint: disable=protected-access
      manual = manual_dir or default_manual
      hint = (IMAGENET_MANUAL_HELP.format(manual_dir=manual,
                                          data_dir=builder._data_dir_root)  # pylint: disable=protected-access
              if name.startswith('imagenet2012') else
              f'Prepare it with: tfds build {name} --data_dir={builder._data_dir_root}\n'  # pylint: disable=protected-access
              'or set config.data.download=True to let this run download it.\n')
      raise errors.NotFound(
          f'TFDS dataset {name!r} is not prepared in '
          f'{builder.data_dir}.\n{hint}')
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
  splits = builder.info.splits
  if split not in splits:
    raise errors.InvalidInput(
        f'TFDS dataset {name!r} has no split {split!r}; '
        f'it has {sorted(splits.keys())}.')
  features = builder.info.features
  for key in ('image', 'label'):
    if key not in features:
      raise errors.InvalidInput(
          f'TFDS dataset {name!r} has no {key!r} feature '
          f'(features: {list(features)}); an image classification set is needed.')
  total = splits[split].num_examples
  subsplit = tfds.even_splits(split, n=process_count)[process_index]
  num_examples = builder.info.splits[subsplit].num_examples

  def make_dataset():
    ds = builder.as_dataset(split=subsplit, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return ds.map(preprocessing.as_written(
        lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)}))

  return Source(make_dataset, num_examples, total, list(features['label'].names),
                encoded=True, describe=lambda i: f'{name} {subsplit} example {i}')


def load_train_source(data_config, process_index: int = 0, process_count: int = 1,
                      cache_dir: str | None = None) -> Source:
  """The training split as create_train_iterator reads it.

  Indexable sources (digits, folders) are loaded whole: every process walks the same
  global order and reads only its part of each global batch, so the batches do not
  depend on the process count. TFDS splits are sharded per process and shuffled there.
  """
  if data_config.source == 'tfds':
    return load_source(data_config, data_config.train_split, process_index, process_count,
                       cache_dir)
  return load_source(data_config, data_config.train_split, cache_dir=cache_dir)


def load_source(data_config, split: str, process_index: int = 0,
                process_count: int = 1, cache_dir: str | None = None,
                announce: bool = True) -> Source:
  """The Source named by config.data.source for `split`; cache_dir keeps folder checks;
  announce=False: a folder's classes and counts are not logged again."""
  kind = data_config.source
  if kind == 'digits':
    return load_digits_source(split, process_index, process_count)
  if kind == 'folder':
    return load_folder_source(data_config.folder, split, process_index, process_count,
                              cache_dir, data_config.skip_corrupt, announce)
  if kind == 'fake':
    return load_fake_source(split, data_config.fake_num_examples,
                            data_config.fake_image_shape,
                            data_config.fake_num_classes, process_index,
                            process_count)
  if kind == 'tfds':
    return load_tfds_source(data_config.name, split, data_config.data_dir,
                            data_config.manual_dir, data_config.download,
                            process_index, process_count)
  raise errors.InvalidInput(f'config.data.source={kind!r} is not one of {data.SOURCES}.')


def find_undecodable(source: Source):
  """(description, error) of the first example of `source` that does not decode."""
  if not source.encoded:
    return None
  for i, ex in enumerate(source.make_dataset()):
    try:
      preprocessing.decode_image(ex['image'], True)
    except tf.errors.InvalidArgumentError as error:
      return source.describe(i), error.message.splitlines()[0]
  return None
