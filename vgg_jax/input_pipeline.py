"""Datasets -> tf.data -> numpy batches, with the paper's augmentation (Sec. 3.1, 3.2).

Sources: any TFDS image-classification dataset, an image folder
(root/<split>/<class>/*.jpg|png), and 'digits' (scikit-learn's bundled 8x8 digits,
upsampled to 32x32 RGB: the offline default). Knows nothing of the model.

Batches are dicts of host-local numpy arrays: images [b, H, W, 3] float32 (mean RGB
subtracted), labels [b] int32, and for evaluation mask [b] bool (False marks padding).
b = global_batch_size / process_count; each process reads only its own examples.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

# AlexNet's PCA lighting noise on ImageNet (0..255 RGB): eigenvalues and eigenvectors
# (columns) of the training pixels' RGB covariance.
IMAGENET_PCA_EIGVAL = (55.46, 4.794, 1.148)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)  # The mean the released VGG nets use.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
DIGITS_SIZE = 32
IMAGENET_MANUAL_HELP = """\
ImageNet (imagenet2012) cannot be downloaded automatically. To prepare it:
  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org.
  2. Put both files in {manual_dir}
  3. Run: tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir}
     (or set config.data.download=True and rerun to prepare it from there).
"""


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Source:
  """A split of a dataset: examples {'image': encoded bytes or uint8 [h,w,3], 'label'}."""
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
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  if split not in ('train', 'test'):
    raise ValueError(f"digits has splits 'train' and 'test', not {split!r}.")
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
    raise ValueError(f"fake data has splits 'train', 'validation', 'test', not {split!r}.")
  total = num_examples if split == 'train' else max(1, num_examples // 50)
  start, end = shard_bounds(total, process_index, process_count)

  def lookup(index):
    index = tf.cast(index, tf.int64) + start
    pixels = tf.random.stateless_uniform([height, width, 3], tf.stack([index, salt]),
                                         maxval=256, dtype=tf.int32)
    return {'image': tf.cast(pixels, tf.uint8), 'label': tf.cast(index % num_classes, tf.int32)}

  return Source(lambda: tf.data.Dataset.range(end - start).map(lookup), end - start, total,
                [str(i) for i in range(num_classes)], encoded=False,
                describe=lambda i: f'fake {split} example {start + i}', lookup=lookup)


def list_image_folder(root: str, split: str) -> tuple[list[str], np.ndarray, list[str]]:
  """Files and labels of root/<split>/<class>/*, classes sorted by name."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    existing = sorted(d for d in os.listdir(root)) if os.path.isdir(root) else []
    raise ValueError(f'Split {split!r} not found: {split_dir} is not a directory '
                     f'(found in {root}: {existing or "nothing"}).')
  class_names = sorted(d for d in os.listdir(split_dir)
                       if os.path.isdir(os.path.join(split_dir, d)))
  if not class_names:
    raise ValueError(f'{split_dir} has no class folders: expected {split_dir}/<class>/*.jpg.')
  paths, labels = [], []
  for label, name in enumerate(class_names):
    class_dir = os.path.join(split_dir, name)
    files = sorted(f for f in os.listdir(class_dir)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(f'Class folder {class_dir} holds no images '
                       f'({", ".join(IMAGE_EXTENSIONS)}).')
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32), class_names


def load_folder_source(root: str, split: str, process_index: int = 0,
                       process_count: int = 1) -> Source:
  """An image folder: root/<split>/<class>/*.jpg|png; class names sorted."""
  paths, labels, class_names = list_image_folder(root, split)
  # Interleave so every process gets examples of every class.
  order = np.random.default_rng(0).permutation(len(paths))
  start, end = shard_bounds(len(paths), process_index, process_count)
  mine = np.sort(order[start:end])
  my_paths = [paths[i] for i in mine]
  my_labels = labels[mine]

  def lookup(index):
    return {'image': tf.io.read_file(tf.gather(my_paths, index)),
            'label': tf.gather(my_labels, index)}

  def make_dataset():
    return tf.data.Dataset.range(len(my_paths)).map(
        lookup, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  return Source(make_dataset, len(my_paths), len(paths), class_names, encoded=True,
                describe=lambda i: my_paths[i], lookup=lookup)


def load_tfds_source(name: str, split: str, data_dir: str | None = None,
                     manual_dir: str | None = None, download: bool = False,
                     process_index: int = 0, process_count: int = 1) -> Source:
  """A TFDS image-classification dataset, images left encoded (decoded by us)."""
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
      raise FileNotFoundError(f'TFDS dataset {name!r} is not prepared in '
                              f'{builder.data_dir}.\n{hint}')
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
  splits = builder.info.splits
  if split not in splits:
    raise ValueError(f'TFDS dataset {name!r} has no split {split!r}; '
                     f'it has {sorted(splits.keys())}.')
  features = builder.info.features
  for key in ('image', 'label'):
    if key not in features:
      raise ValueError(f'TFDS dataset {name!r} has no {key!r} feature '
                       f'(features: {list(features)}); an image classification set is needed.')
  total = splits[split].num_examples
  subsplit = tfds.even_splits(split, n=process_count)[process_index]
  num_examples = builder.info.splits[subsplit].num_examples

  def make_dataset():
    ds = builder.as_dataset(split=subsplit, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return ds.map(lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)})

  return Source(make_dataset, num_examples, total, list(features['label'].names),
                encoded=True, describe=lambda i: f'{name} {subsplit} example {i}')


def load_train_source(data_config, process_index: int = 0, process_count: int = 1) -> Source:
  """The training split as create_train_iterator reads it.

  Indexable sources (digits, folders) are loaded whole: every process walks the same
  global order and reads only its part of each global batch, so the batches do not
  depend on the process count. TFDS splits are sharded per process and shuffled there.
  """
  if data_config.source == 'tfds':
    return load_source(data_config, data_config.train_split, process_index, process_count)
  return load_source(data_config, data_config.train_split)


def load_source(data_config, split: str, process_index: int = 0,
                process_count: int = 1) -> Source:
  """The Source named by config.data.source for `split`."""
  kind = data_config.source
  if kind == 'digits':
    return load_digits_source(split, process_index, process_count)
  if kind == 'folder':
    if not data_config.get('folder'):
      raise ValueError("config.data.folder must name the image folder root for source='folder'.")
    return load_folder_source(data_config.folder, split, process_index, process_count)
  if kind == 'fake':
    return load_fake_source(split, data_config.fake_num_examples,
                            data_config.fake_image_shape,
                            data_config.get('fake_num_classes', 1000), process_index,
                            process_count)
  if kind == 'tfds':
    return load_tfds_source(data_config.name, split, data_config.get('data_dir'),
                            data_config.get('manual_dir'), data_config.get('download', False),
                            process_index, process_count)
  raise ValueError(f"config.data.source={kind!r} is not one of 'digits', 'folder', 'tfds', "
                   "'fake'.")


# --------------------------------------------------------------------------- preprocessing


def decode_image(image, encoded: bool):
  """Encoded bytes or uint8 array -> uint8 [h, w, 3]; gray, RGBA, CMYK become RGB."""
  if not encoded:
    image = tf.convert_to_tensor(image)
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image
  image = tf.io.decode_image(image, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def rescaled_shape(shape_hw, size):
  """[H', W'] of an image of shape_hw after rescaling its smallest side to `size`."""
  shape = tf.cast(shape_hw, tf.float32)
  factor = tf.cast(size, tf.float32) / tf.reduce_min(shape)
  return tf.maximum(tf.cast(tf.round(shape * factor), tf.int32), tf.cast(size, tf.int32))


def rescale_smallest_side(image, size):
  """Isotropic rescale so the smallest side is `size`; returns float32 in 0..255."""
  new_shape = rescaled_shape(tf.shape(image)[:2], size)
  return tf.image.resize(tf.cast(image, tf.float32), new_shape, method='bilinear',
                         antialias=True)


def pca_lighting(image, eigval, eigvec, stddev, seed):
  """AlexNet colour shift: add eigvec @ (alpha * eigval), alpha ~ N(0, stddev)."""
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=stddev)
  shift = tf.linalg.matvec(tf.constant(eigvec, tf.float32),
                           alpha * tf.constant(eigval, tf.float32))
  return image + shift


def sample_crop(shape_hw, seeds, image_size: int, scale_min: int, scale_max: int):
  """Sec. 3.1 sampling: S ~ U[S_min, S_max], then a crop offset in the rescaled image.

  Returns (rescaled [H', W'], offset [top, left] in rescaled pixels).
  """
  scale = tf.random.stateless_uniform([], seeds[0], scale_min, scale_max + 1, tf.int32)
  new_hw = rescaled_shape(shape_hw, scale)
  draw = tf.random.stateless_uniform([2], seeds[1], 0, tf.int32.max, tf.int32)
  return new_hw, draw % (new_hw - image_size + 1)


def _crop_after_decode(image, new_hw, offset, image_size: int):
  """Decode-then-crop: rescale the whole image, cut the crop out."""
  image = tf.image.resize(tf.cast(image, tf.float32), new_hw, method='bilinear', antialias=True)
  return image[offset[0]:offset[0] + image_size, offset[1]:offset[1] + image_size]


def _crop_before_decode(jpeg, shape_hw, new_hw, offset, image_size: int):
  """The same crop, decoding only the JPEG window it needs (plus the filter's margin).

  ScaleAndTranslate with the whole image's scale and a translation that accounts for
  the window's start and the crop offset is the resize tf.image.resize does (triangle
  kernel, antialias), evaluated only where the crop is.
  """
  scale = tf.cast(new_hw, tf.float32) / tf.cast(shape_hw, tf.float32)
  margin = tf.cast(tf.math.ceil(1.0 / tf.reduce_min(scale)), tf.int32) + 2
  start = tf.cast(tf.floor(tf.cast(offset, tf.float32) / scale), tf.int32) - margin
  stop = tf.cast(tf.math.ceil(tf.cast(offset + image_size, tf.float32) / scale),
                 tf.int32) + margin
  start, stop = tf.maximum(start, 0), tf.minimum(stop, shape_hw)
  window = tf.image.decode_and_crop_jpeg(jpeg, tf.concat([start, stop - start], 0), channels=3)
  translation = tf.cast(start, tf.float32) * scale - tf.cast(offset, tf.float32)
  crop = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(window, tf.float32)[None], size=[image_size, image_size], scale=scale,
      translation=translation, kernel_type='triangle', antialias=True)
  return crop[0]


def preprocess_for_train(image, seed, *, image_size: int, scale_min: int, scale_max: int,
                         random_flip: bool, pca_stddev: float, eigval, eigvec, mean_rgb,
                         encoded: bool = False):
  """Sec. 3.1: rescale to S (fixed or ~U[S_min, S_max]), random crop, flip, colour shift.

  image: uint8 [h, w, 3], or encoded bytes if `encoded`: JPEGs then decode only the
  window the crop needs (same S and offset, resampled from the window), other formats
  are decoded whole. seed: [2] int64 stateless seed. Returns [S, S, 3] float32.
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)

  def decoded_path(pixels):
    new_hw, offset = sample_crop(tf.shape(pixels)[:2], seeds, image_size, scale_min, scale_max)
    return _crop_after_decode(pixels, new_hw, offset, image_size)

  if not encoded:
    image = decoded_path(image)
  else:
    def jpeg_path():
      shape_hw = tf.image.extract_jpeg_shape(image)[:2]
      new_hw, offset = sample_crop(shape_hw, seeds, image_size, scale_min, scale_max)
      return _crop_before_decode(image, shape_hw, new_hw, offset, image_size)
    image = tf.cond(tf.io.is_jpeg(image), jpeg_path,
                    lambda: decoded_path(decode_image(image, encoded=True)))
  image.set_shape([image_size, image_size, 3])
  if random_flip:
    image = tf.image.stateless_random_flip_left_right(image, seeds[2])
  if pca_stddev > 0:
    image = pca_lighting(image, eigval, eigvec, pca_stddev, seeds[3])
  return image - tf.constant(mean_rgb, tf.float32)


def preprocess_for_eval(image, *, image_size: int, scale: int, mean_rgb):
  """Sec. 3.2 single crop: rescale the smallest side to Q, take the centre crop."""
  image = rescale_smallest_side(image, scale)
  shape = tf.shape(image)
  top, left = (shape[0] - image_size) // 2, (shape[1] - image_size) // 2
  image = image[top:top + image_size, left:left + image_size]
  image.set_shape([image_size, image_size, 3])
  return image - tf.constant(mean_rgb, tf.float32)


def preprocess_for_dense(image, *, scale: int, mean_rgb):
  """Sec. 3.2 dense evaluation: the whole image, smallest side rescaled to Q."""
  return rescale_smallest_side(image, scale) - tf.constant(mean_rgb, tf.float32)


def multi_crop_offsets(height: int, width: int, crop: int, grid: int = 5):
  """Top-left corners of a grid x grid regular grid of crops over an image."""
  rows = np.linspace(0, height - crop, grid).round().astype(int)
  cols = np.linspace(0, width - crop, grid).round().astype(int)
  return [(int(r), int(c)) for r in rows for c in cols]


def multi_crop_views(image, *, image_size: int, grid: int = 5, flip: bool = True):
  """Sec. 3.2 multi-crop: grid x grid crops, then their flips -> [2*grid^2, S, S, 3].

  image: an already rescaled (and mean-subtracted) float image [h, w, 3] (numpy).
  flip=False: the grid^2 crops only.
  """
  image = np.asarray(image)
  height, width = image.shape[:2]
  crops = [image[r:r + image_size, c:c + image_size]
           for r, c in multi_crop_offsets(height, width, image_size, grid)]
  crops = np.stack(crops)
  return np.concatenate([crops, crops[:, :, ::-1]]) if flip else crops


# --------------------------------------------------------------------------- statistics


def compute_rgb_statistics(source: Source, max_examples: int = 10_000) -> dict[str, Any]:
  """Mean RGB and the eigen-decomposition of the RGB covariance, over training pixels."""
  ds = source.make_dataset().take(max_examples).map(
      lambda ex: tf.reshape(tf.cast(decode_image(ex['image'], source.encoded), tf.float64),
                            [-1, 3]), num_parallel_calls=tf.data.AUTOTUNE)
  count, total, outer = 0, np.zeros(3), np.zeros((3, 3))
  for pixels in ds.as_numpy_iterator():
    count += len(pixels)
    total += pixels.sum(0)
    outer += pixels.T @ pixels
  if count == 0:
    raise ValueError('Cannot compute RGB statistics: the training split is empty.')
  mean = total / count
  cov = outer / count - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(cov)
  order = np.argsort(eigval)[::-1]
  return {'mean_rgb': mean.tolist(), 'pca_eigval': eigval[order].tolist(),
          'pca_eigvec': eigvec[:, order].tolist(), 'num_pixels': int(count)}


def rgb_statistics(data_config, cache_dir: str | None) -> dict[str, Any]:
  """Mean RGB and PCA basis from the config, or computed once and cached as JSON."""
  stats = {'mean_rgb': data_config.get('mean_rgb'),
           'pca_eigval': data_config.get('pca_eigval'),
           'pca_eigvec': data_config.get('pca_eigvec')}
  if stats['pca_eigval'] is None:  # Default: ImageNet's published basis.
    stats['pca_eigval'], stats['pca_eigvec'] = IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC
  need_compute = stats['mean_rgb'] is None or stats['pca_eigval'] == 'compute'
  if not need_compute:
    return stats
  cache = None
  if cache_dir:
    name = data_config.get('name') or os.path.basename(
        os.path.normpath(data_config.get('folder') or '')) or data_config.source
    cache = os.path.join(cache_dir, f'rgb_stats_{data_config.source}_{name}_'
                         f'{data_config.train_split}.json')
  if cache and os.path.exists(cache):
    with open(cache) as f:
      computed = json.load(f)
  else:
    logging.info('Computing the mean RGB and RGB covariance of the training set...')
    computed = compute_rgb_statistics(load_source(data_config, data_config.train_split),
                                      data_config.get('stats_max_examples', 10_000))
    if cache:
      os.makedirs(cache_dir, exist_ok=True)
      tmp = cache + '.tmp'
      with open(tmp, 'w') as f:
        json.dump(computed, f)
      os.replace(tmp, cache)
  if stats['mean_rgb'] is None:
    stats['mean_rgb'] = computed['mean_rgb']
  if stats['pca_eigval'] == 'compute':
    stats['pca_eigval'], stats['pca_eigvec'] = computed['pca_eigval'], computed['pca_eigvec']
  return stats


# --------------------------------------------------------------------------- iterators


def check_scales(image_size: int, scale_min: int, scale_max: int, eval_scale: int):
  """Raises on scales no crop can be taken from."""
  if scale_min > scale_max:
    raise ValueError(f'scale_min={scale_min} > scale_max={scale_max}: S_min must not '
                     'exceed S_max.')
  if scale_min < image_size:
    raise ValueError(f'The crop image_size={image_size} is larger than the training scale '
                     f'S_min={scale_min}: S must be at least the crop size.')
  if eval_scale < image_size:
    raise ValueError(f'The crop image_size={image_size} is larger than the test scale '
                     f'Q={eval_scale}.')


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} is not divisible by the '
                     f'process count {process_count}.')
  return global_batch_size // process_count


def _with_path_on_error(iterator, source: Source):
  """Re-raises a decode failure as a ValueError naming the file that broke it."""
  try:
    yield from iterator
  except tf.errors.InvalidArgumentError as error:
    bad = find_undecodable(source)
    if bad is None:
      raise
    raise ValueError(f'Could not decode image {bad[0]}: {bad[1]}') from error


def find_undecodable(source: Source):
  """(description, error) of the first example of `source` that does not decode."""
  if not source.encoded:
    return None
  for i, ex in enumerate(source.make_dataset()):
    try:
      decode_image(ex['image'], True)
    except tf.errors.InvalidArgumentError as error:
      return source.describe(i), error.message.splitlines()[0]
  return None


def _options():
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(1, os.cpu_count() or 1)
  # Autotuning's background thread can take ~30s to stop when the iterator is
  # destroyed while the CPU is busy training; fixed parallelism costs nothing here.
  options.autotune.enabled = False
  return options


def _global_order_stream(source: Source, seed: int, first: int, batch: int,
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
  ds = ds.flat_map(epoch_positions).filter(mine)
  return ds.map(lambda position, index: (source.lookup(index), position),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _per_process_stream(source: Source, seed: int, first: int, buffer: int,
                        process_index: int) -> tf.data.Dataset:
  """(example, position) from this process's own shard, shuffled per epoch."""
  start_epoch, offset = divmod(first, source.num_examples)
  base = source.make_dataset()

  def epoch_dataset(epoch):
    epoch_seed = tf.cast(seed * 1_000_003 + process_index * 10_007 + epoch, tf.int64)
    return base.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_dataset)
  positions = tf.data.Dataset.range(first, np.iinfo(np.int64).max)
  return tf.data.Dataset.zip(ds.skip(offset), positions)


def create_train_iterator(data_config, *, image_size: int, global_batch_size: int,
                          seed: int, start_step: int = 0, process_index: int = 0,
                          process_count: int = 1, cache_dir: str | None = None,
                          source: Source | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Endless, seeded training batches; the stream from `start_step` on, for resume.

  Each epoch's order is a function of (seed, epoch) and each example's augmentation
  of (seed, its position in the stream), so starting at step k yields exactly the
  batches an uninterrupted run sees from step k. For digits and image folders the
  global batches are the same whatever the process count (see load_train_source).
  """
  check_scales(image_size, data_config.scale_min, data_config.scale_max,
               data_config.eval_scale)
  batch = local_batch_size(global_batch_size, process_count)
  source = source or load_train_source(data_config, process_index, process_count)
  if source.num_examples == 0:
    raise ValueError(f'Training split {data_config.train_split!r} is empty for process '
                     f'{process_index}.')
  stats = rgb_statistics(data_config, cache_dir)
  if source.lookup is not None:
    ds = _global_order_stream(source, seed, start_step * global_batch_size, batch,
                              global_batch_size, process_index)
    stream_id = 0  # Positions are global: the same seed on every process.
  else:
    buffer = min(data_config.get('shuffle_buffer', 10_000), source.num_examples)
    ds = _per_process_stream(source, seed, start_step * batch, buffer, process_index)
    stream_id = process_index  # Positions are per process.

  def augment(ex, position):
    example_seed = tf.stack([tf.constant(seed * 65_536 + stream_id, tf.int64), position])
    image = ex['image'] if source.encoded else decode_image(ex['image'], False)
    image = preprocess_for_train(
        image, example_seed, image_size=image_size, scale_min=data_config.scale_min,
        scale_max=data_config.scale_max, random_flip=data_config.random_flip,
        pca_stddev=data_config.pca_stddev, eigval=stats['pca_eigval'],
        eigvec=stats['pca_eigvec'], mean_rgb=stats['mean_rgb'], encoded=source.encoded)
    return {'images': image, 'labels': ex['label']}

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
                         process_index: int = 0, process_count: int = 1,
                         cache_dir: str | None = None,
                         source: Source | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval split: centre crops at Q, padded with mask=False.

  Every process yields the same number of batches, so sharded eval steps line up.
  """
  split = split or data_config.eval_split
  scale = scale or data_config.eval_scale
  if scale < image_size:
    raise ValueError(f'The crop image_size={image_size} is larger than the test scale Q={scale}.')
  batch = local_batch_size(global_batch_size, process_count)
  source = source or load_source(data_config, split, process_index, process_count)
  stats = rgb_statistics(data_config, cache_dir)
  batches = num_eval_batches(source.total_examples, global_batch_size, process_count)
  padding = batches * batch - source.num_examples

  def prepare(ex):
    image = preprocess_for_eval(decode_image(ex['image'], source.encoded),
                                image_size=image_size, scale=scale,
                                mean_rgb=stats['mean_rgb'])
    return {'images': image, 'labels': ex['label'], 'mask': True}

  ds = source.make_dataset().map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=True)
  pad = tf.data.Dataset.from_tensors({
      'images': tf.zeros([image_size, image_size, 3]), 'labels': tf.constant(0, tf.int32),
      'mask': False}).repeat(padding)
  ds = ds.concatenate(pad).batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(_options())
  return _with_path_on_error(ds.as_numpy_iterator(), source)
