"""Per-image transforms of the paper (Sec. 3.1 training, Sec. 3.2 testing), in TensorFlow.

Decoding (EXIF orientation applied), isotropic rescaling of the smallest side, the random
crop (decoding only the JPEG window it needs, resampled by `resample`), flip and PCA
colour shift for training, all here (`preprocess_for_train`) or, with the resampling left
to the train step on the device, up to the uint8 window (`train_window`); centre crop and
whole image (dense) for testing (the multi-crop grid is cut by vgg_jax.evaluation.views).
Knows nothing of sources or the model.

One filter, TensorFlow's antialiased bilinear resize, has three implementations, each for
a reason given in docs/performance.md: `resize` (tf.image.resize) for evaluation and for
decoded arrays' training crops, `resample` (banded matrix products) for the training
crops of encoded images, and vgg_jax.data.device_crops when the train step resamples.
"""

import dataclasses
from typing import Any

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Sec. 3.1's training augmentation, built once from config.data and the statistics."""
  image_size: int  # The crop's side.
  scale_min: int  # S ~ U[scale_min, scale_max]; equal: a fixed S.
  scale_max: int
  random_flip: bool
  pca_stddev: float  # AlexNet's colour shift, alpha ~ N(0, pca_stddev); 0: none.
  eigval: Any  # [3] and [3, 3]: the RGB covariance's eigenvalues and eigenvectors.
  eigvec: Any
  mean_rgb: Any  # [3], subtracted.


def as_written(fn):
  """fn for tf.data's map, filter and flat_map, traced as written.

  tf.data otherwise runs AutoGraph's source rewrite on every function it is given (about
  0.15 s each on a 2-core CPU, about 1 s of every training run's start). This package's
  pipeline functions branch in Python on Python values only; their tensor branches are
  tf.cond, so the rewrite changes nothing in their graphs.
  """
  return tf.autograph.experimental.do_not_convert(fn)


def decode_image(image, encoded: bool):
  """Encoded bytes or uint8 array -> uint8 [h, w, 3]; gray, RGBA, CMYK become RGB."""
  if not encoded:
    image = tf.convert_to_tensor(image)
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image
  image = tf.io.decode_image(image, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def apply_orientation(image, orientation):
  """image [h, w, c] turned upright by its EXIF orientation 1..8, as PIL's exif_transpose."""
  if isinstance(orientation, int):  # Known when the graph is built: no switch.
    orientation = orientation if 1 <= orientation <= 8 else 1
    if orientation == 1:
      return image
  transpose = lambda x: tf.transpose(x, [1, 0, 2])
  branches = [
      lambda: image,  # 1: as stored.
      lambda: image[:, ::-1],  # 2: mirrored left-right.
      lambda: image[::-1, ::-1],  # 3: rotated 180.
      lambda: image[::-1],  # 4: mirrored top-bottom.
      lambda: transpose(image),  # 5: transposed.
      lambda: tf.image.rot90(image, 3),  # 6: rotated 90 clockwise.
      lambda: transpose(image[::-1, ::-1]),  # 7: transversed.
      lambda: tf.image.rot90(image, 1),  # 8: rotated 90 counter-clockwise.
  ]
  orientation = tf.cast(orientation, tf.int32)
  index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
  return tf.switch_case(index, branches)


def decode_example(example, encoded: bool):
  """example['image'] decoded to uint8 [h, w, 3], turned by example['orientation'] if any."""
  image = decode_image(example['image'], encoded)
  if 'orientation' in example:
    image = apply_orientation(image, example['orientation'])
  return image


def rescaled_shape(shape_hw, size):
  """[H', W'] of an image of shape_hw after rescaling its smallest side to `size`."""
  shape = tf.cast(shape_hw, tf.float32)
  factor = tf.cast(size, tf.float32) / tf.reduce_min(shape)
  return tf.maximum(tf.cast(tf.round(shape * factor), tf.int32), tf.cast(size, tf.int32))


def resize(image, new_hw):
  """image [h, w, C] (any dtype) -> float32 [H', W', C]: the antialiased bilinear resize."""
  return tf.image.resize(tf.cast(image, tf.float32), new_hw, method='bilinear', antialias=True)


def rescale_smallest_side(image, size):
  """Isotropic rescale so the smallest side is `size`; returns float32 in 0..255."""
  return resize(image, rescaled_shape(tf.shape(image)[:2], size))


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


# Output pixels per matmul block of the resampler: small enough that neighbouring blocks'
# input rows overlap little, large enough that the matmuls are not all overhead.
_RESAMPLE_BLOCK = 16


def _banded_weights(in_hw, size: int, scale, translation, flip):
  """Both axes' resampling weights as blocks of a banded matrix.

  The antialiased triangle filter of TensorFlow's ScaleAndTranslate (what
  tf.image.resize(..., 'bilinear', antialias=True) runs): output pixel x samples the
  input at s = (x + 0.5 - translation) / scale, with taps max(0, 1 - |j + 0.5 - s| / r),
  r = max(1 / scale, 1), inside the image, normalised to sum 1 (0 if s is outside it).
  Built for both axes at once, in as few TensorFlow ops as possible: in a tf.data map the
  cost per op, not the arithmetic, dominates at this size (docs/performance.md).

  Returns (first [2, blocks] int32: each block's first input index, weights [2, blocks,
  block, span] float32: output pixel i of block b takes weights[., b, i, l] of input
  first[., b] + l).
  """
  blocks = -(-size // _RESAMPLE_BLOCK)
  x = tf.minimum(tf.range(blocks * _RESAMPLE_BLOCK, dtype=tf.float32), size - 1.0)
  x = tf.stack([x, tf.where(flip, size - 1.0 - x, x)])  # A mirror reverses the columns.
  in_size = tf.cast(in_hw, tf.float32)[:, None]
  scale, translation = scale[:, None], translation[:, None]
  inv_scale = 1.0 / scale  # TensorFlow's float32 arithmetic, step by step.
  radius = tf.maximum(inv_scale, 1.0)
  sample = (x + 0.5) * inv_scale - inv_scale * translation
  first = tf.clip_by_value(tf.math.ceil(sample - radius - 0.5), 0.0, in_size - 1.0)
  last = tf.clip_by_value(tf.math.floor(sample + radius - 0.5), 0.0, in_size - 1.0)
  first = tf.reduce_min(tf.reshape(first, [2, blocks, _RESAMPLE_BLOCK]), axis=2)
  span = tf.cast(tf.reduce_max(tf.reshape(last, [2, blocks, -1]) - first[..., None]), tf.int32)
  taps = first[..., None, None] + tf.range(tf.cast(span + 1, tf.float32))  # [2, b, 1, span]
  sample = tf.reshape(sample, [2, blocks, _RESAMPLE_BLOCK, 1])
  one_over_radius = 1.0 / radius[..., None, None]
  weights = tf.maximum(0.0, 1.0 - tf.abs((taps + 0.5 - sample) * one_over_radius))
  inside = (taps < in_size[..., None, None]) & (sample >= 0) & (
      sample <= in_size[..., None, None])
  weights = tf.where(inside, weights, 0.0)
  total = tf.reduce_sum(weights, axis=3, keepdims=True)
  return tf.cast(first, tf.int32), weights / tf.maximum(total, 1e-30)


def _resample_rows(image, first, weights, size: int):
  """image [H, W, C] resampled along H -> float32 [size, W, C]: per block, gather the
  input rows its taps reach and multiply them by the block's dense weights."""
  shape = tf.shape(image)
  rows = tf.minimum(first[:, None] + tf.range(tf.shape(weights)[-1]), shape[0] - 1)
  flat = tf.reshape(tf.cast(image, tf.float32), [shape[0], shape[1] * shape[2]])
  out = tf.matmul(weights, tf.gather(flat, rows))  # [blocks, block, W * C]
  return tf.reshape(out, [-1, shape[1], shape[2]])[:size]


def resample(image, size: int, scale, translation, flip=False):
  """ScaleAndTranslate(image, [size, size], scale, translation, 'triangle', antialias) of
  image [h, w, C] (any dtype) -> float32 [size, size, C], mirrored left-right if `flip`.

  Equals tf.raw_ops.ScaleAndTranslate up to float round-off (< 1e-3 on 0..255, tested)
  in less time: two banded matrix products (rows, then columns) in blocks, and the
  mirror folded into the column weights.
  """
  first, weights = _banded_weights(tf.shape(image)[:2], size, scale, translation,
                                   tf.cast(flip, tf.bool))
  rows = _resample_rows(image, first[0], weights[0], size)
  columns = _resample_rows(tf.transpose(rows, [1, 0, 2]), first[1], weights[1], size)
  return tf.transpose(columns, [1, 0, 2])


def flip_drawn(seed):
  """The coin of tf.image.stateless_random_flip_left_right(image, seed): mirror or not."""
  return tf.random.stateless_uniform([], seed, 0, 1.0) < 0.5


def _jpeg_window(jpeg, shape_hw, new_hw, offset, image_size: int):
  """Decodes only the JPEG window the crop needs (plus the filter's margin).

  Returns (window uint8, scale [2], translation [2]): resampling the window with the
  whole image's scale and a translation that accounts for the window's start and the
  crop offset is the resize tf.image.resize does (triangle kernel, antialias),
  evaluated only where the crop is.
  """
  scale = tf.cast(new_hw, tf.float32) / tf.cast(shape_hw, tf.float32)
  margin = tf.cast(tf.math.ceil(1.0 / tf.reduce_min(scale)), tf.int32) + 2
  start = tf.cast(tf.floor(tf.cast(offset, tf.float32) / scale), tf.int32) - margin
  stop = tf.cast(tf.math.ceil(tf.cast(offset + image_size, tf.float32) / scale),
                 tf.int32) + margin
  start, stop = tf.maximum(start, 0), tf.minimum(stop, shape_hw)
  window = tf.image.decode_and_crop_jpeg(jpeg, tf.concat([start, stop - start], 0), channels=3)
  return window, scale, tf.cast(start, tf.float32) * scale - tf.cast(offset, tf.float32)


def _crop_source(image, seeds, augmentation: Augmentation, encoded: bool, orientation):
  """(pixels uint8, scale [2], translation [2]) whose resample is the training crop.

  Upright JPEGs: only the window the crop needs is decoded. Other images are decoded
  whole and turned by `orientation`; the whole image is then the window.
  """
  image_size, scale_min, scale_max = (augmentation.image_size, augmentation.scale_min,
                                      augmentation.scale_max)

  def whole(pixels):
    shape_hw = tf.shape(pixels)[:2]
    new_hw, offset = sample_crop(shape_hw, seeds, image_size, scale_min, scale_max)
    scale = tf.cast(new_hw, tf.float32) / tf.cast(shape_hw, tf.float32)
    return pixels, scale, -tf.cast(offset, tf.float32)

  if not encoded:
    return whole(apply_orientation(image, orientation))

  def jpeg_window():
    shape_hw = tf.image.extract_jpeg_shape(image)[:2]
    new_hw, offset = sample_crop(shape_hw, seeds, image_size, scale_min, scale_max)
    return _jpeg_window(image, shape_hw, new_hw, offset, image_size)

  upright = tf.io.is_jpeg(image) & tf.equal(tf.cast(orientation, tf.int32), 1)
  return tf.cond(upright, jpeg_window, lambda: whole(
      apply_orientation(decode_image(image, encoded=True), orientation)))


def _colour_offset(seeds, augmentation: Augmentation):
  """What training adds to every pixel of a crop: the PCA colour shift minus the mean."""
  a = augmentation
  offset = -tf.constant(a.mean_rgb, tf.float32)
  return (pca_lighting(offset, a.eigval, a.eigvec, a.pca_stddev, seeds[3]) if a.pca_stddev > 0
          else offset)


def preprocess_for_train(image, seed, augmentation: Augmentation, encoded: bool = False,
                         orientation=1):
  """Sec. 3.1: rescale to S (fixed or ~U[S_min, S_max]), random crop, flip, colour shift.

  image: uint8 [h, w, 3], or encoded bytes if `encoded`: JPEGs stored upright
  (orientation 1) then decode only the window the crop needs (same S and offset,
  resampled from the window); others are decoded whole and turned by `orientation`
  (EXIF 1..8) first. seed: [2] int64 stateless seed. Returns [S, S, 3] float32.
  """
  image_size, random_flip = augmentation.image_size, augmentation.random_flip
  seeds = tf.random.experimental.stateless_split(seed, 4)
  flip = flip_drawn(seeds[2]) if random_flip else False
  if encoded:
    pixels, scale, translation = _crop_source(image, seeds, augmentation, True, orientation)
    image = resample(pixels, image_size, scale, translation, flip)
  else:
    # Decoded arrays: `resize` whole, then cut. `resample` would change their crops by float
    # round-off, and with them the default (digits) job's numbers (docs/performance.md).
    pixels = apply_orientation(image, orientation)
    new_hw, offset = sample_crop(tf.shape(pixels)[:2], seeds, image_size,
                                 augmentation.scale_min, augmentation.scale_max)
    image = resize(pixels, new_hw)
    image = image[offset[0]:offset[0] + image_size, offset[1]:offset[1] + image_size]
    if random_flip:
      image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
  image.set_shape([image_size, image_size, 3])
  return image + _colour_offset(seeds, augmentation)


def train_window(image, seed, augmentation: Augmentation, window: int, encoded: bool = False,
                 orientation=1) -> dict:
  """preprocess_for_train's host half when the train step resamples on the device.

  Same draws (S, offset, flip, colour shift) from the same seed. Returns 'window':
  the decoded pixels the crop needs, uint8 [window, window, 3] (padded with zeros;
  'window_hw' is the real size), 'resample' (scale y, x, translation y, x), 'flip' and
  'colour' (shift minus mean, [3]); vgg_jax.data.device_crops turns them into the crop.
  A source larger than `window` is resampled here and sent as the crop itself
  (rounded to uint8, scale 1): within 0.5 of the host pipeline.
  """
  image_size = augmentation.image_size
  seeds = tf.random.experimental.stateless_split(seed, 4)
  flip = flip_drawn(seeds[2]) if augmentation.random_flip else tf.constant(False)
  pixels, scale, translation = _crop_source(image, seeds, augmentation, encoded, orientation)
  fits = tf.reduce_all(tf.shape(pixels)[:2] <= window)

  def crop_here():
    crop = tf.round(resample(pixels, image_size, scale, translation, flip))
    return tf.saturate_cast(crop, tf.uint8), tf.ones([2]), tf.zeros([2]), tf.constant(False)

  pixels, scale, translation, flip = tf.cond(
      fits, lambda: (pixels, scale, translation, flip), crop_here)
  hw = tf.shape(pixels)[:2]
  return {'window': tf.pad(pixels, [[0, window - hw[0]], [0, window - hw[1]], [0, 0]]),
          'window_hw': hw, 'resample': tf.concat([scale, translation], 0), 'flip': flip,
          'colour': _colour_offset(seeds, augmentation)}


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
