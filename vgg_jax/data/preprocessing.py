"""Per-image transforms of the paper (Sec. 3.1 training, Sec. 3.2 testing), in TensorFlow.

Decoding (EXIF orientation applied), isotropic rescaling of the smallest side, the random
crop (decoding only the JPEG window it needs), flip and PCA colour shift for training;
centre crop, whole image (dense) and the 5x5 multi-crop grid for testing. Knows nothing of sources or the model.
"""

import numpy as np
import tensorflow as tf


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
                         encoded: bool = False, orientation=1):
  """Sec. 3.1: rescale to S (fixed or ~U[S_min, S_max]), random crop, flip, colour shift.

  image: uint8 [h, w, 3], or encoded bytes if `encoded`: JPEGs stored upright
  (orientation 1) then decode only the window the crop needs (same S and offset,
  resampled from the window); others are decoded whole and turned by `orientation`
  (EXIF 1..8) first. seed: [2] int64 stateless seed. Returns [S, S, 3] float32.
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)

  def decoded_path(pixels):
    new_hw, offset = sample_crop(tf.shape(pixels)[:2], seeds, image_size, scale_min, scale_max)
    return _crop_after_decode(pixels, new_hw, offset, image_size)

  if not encoded:
    image = decoded_path(apply_orientation(image, orientation))
  else:
    def jpeg_path():
      shape_hw = tf.image.extract_jpeg_shape(image)[:2]
      new_hw, offset = sample_crop(shape_hw, seeds, image_size, scale_min, scale_max)
      return _crop_before_decode(image, shape_hw, new_hw, offset, image_size)
    upright = tf.io.is_jpeg(image) & tf.equal(tf.cast(orientation, tf.int32), 1)
    image = tf.cond(upright, jpeg_path, lambda: decoded_path(
        apply_orientation(decode_image(image, encoded=True), orientation)))
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
