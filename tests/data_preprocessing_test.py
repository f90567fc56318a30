"""Tests for vgg_jax.data.preprocessing against NumPy and decode-then-crop references."""

import io

import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest
import tensorflow as tf

from vgg_jax.data import preprocessing
from vgg_jax.data import scan
from vgg_jax.data import statistics

MEAN = (120.0, 110.0, 100.0)


def test_rescale_smallest_side_is_isotropic():
  image = tf.zeros([50, 100, 3], tf.uint8)
  assert tuple(preprocessing.rescale_smallest_side(image, 32).shape) == (32, 64, 3)
  image = tf.zeros([375, 500, 3], tf.uint8)
  assert tuple(preprocessing.rescale_smallest_side(image, 256).shape) == (256, 341, 3)


def test_train_crop_comes_from_the_rescaled_image():
  # A horizontal ramp: after rescaling the smallest side to S and cropping, the column
  # values must follow the rescaled ramp, whatever the crop offset.
  ramp = np.tile(np.linspace(0, 255, 120).astype(np.uint8)[None, :, None], (60, 1, 3))
  out = preprocessing.preprocess_for_train(
      tf.constant(ramp), tf.constant([0, 7], tf.int64), preprocessing.Augmentation(
          image_size=32, scale_min=40, scale_max=40, random_flip=False, pca_stddev=0.0,
          eigval=None, eigvec=None, mean_rgb=(0, 0, 0))).numpy()
  assert out.shape == (32, 32, 3)
  steps = np.diff(out[0, :, 0])
  assert np.all(steps > 0) and abs(steps.mean() - 255 / 80) < 0.5  # 120 wide -> 80 wide.


def test_pca_lighting_shifts_along_eigenvectors():
  image = tf.zeros([4, 4, 3])
  out = preprocessing.pca_lighting(image, (1.0, 0.0, 0.0), np.eye(3)[:, [2, 0, 1]],
                                   0.1, tf.constant([1, 2], tf.int64)).numpy()
  # Only the first eigenvalue is non-zero; its eigenvector is the blue axis.
  assert np.all(out[..., :2] == 0) and np.all(out[..., 2] == out[0, 0, 2])
  assert out[0, 0, 2] != 0


def smooth_image(width, height, image_format='JPEG'):
  """A smooth photo-like JPEG (or PNG), the benchmark's kind of image, encoded."""
  small = np.random.default_rng(0).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(small).resize((width, height), Image.BICUBIC).save(buffer, image_format,
                                                                     quality=95)
  return buffer.getvalue()


@pytest.mark.parametrize('image_format, size, scales', [
    ('JPEG', (500, 375), (256, 512)), ('JPEG', (375, 500), (256, 256)),
    ('JPEG', (90, 300), (64, 96)),  # JPEGs: only the crop's window is decoded.
    ('PNG', (60, 50), (40, 48)),  # Other bytes: decoded whole.
])
def test_encoded_crops_equal_decoded_crops(image_format, size, scales):
  # Bytes are cut by `resample`, decoded arrays by `resize` then a slice: same S, offset,
  # flip, colour shift and filter, so equal up to float round-off.
  encoded = tf.constant(smooth_image(*size, image_format))
  decoded = preprocessing.decode_image(encoded, True)
  augmentation = preprocessing.Augmentation(
      image_size=scales[0] * 7 // 8, scale_min=scales[0], scale_max=scales[1],
      random_flip=True, pca_stddev=0.1, eigval=statistics.IMAGENET_PCA_EIGVAL,
      eigvec=statistics.IMAGENET_PCA_EIGVEC, mean_rgb=MEAN)
  for i in range(6):
    seed = tf.constant([3, i], tf.int64)
    from_bytes = preprocessing.preprocess_for_train(encoded, seed, augmentation, encoded=True)
    reference = preprocessing.preprocess_for_train(decoded, seed, augmentation)
    assert from_bytes.shape == reference.shape == (augmentation.image_size,) * 2 + (3,)
    np.testing.assert_allclose(from_bytes, reference, atol=1e-3)


def exif_jpeg(path, orientation, width=48, height=24):
  """A smooth non-square JPEG whose EXIF says `orientation`."""
  rng = np.random.default_rng(orientation)
  small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(small).resize((width, height), Image.BICUBIC).save(path, 'JPEG', exif=exif)


@pytest.mark.parametrize('orientation', range(1, 9))
def test_apply_orientation_matches_pil_exif_transpose(tmp_path, orientation):
  path = tmp_path / 'image.jpg'
  exif_jpeg(path, orientation)
  assert scan.read_orientation(str(path)) == orientation
  with Image.open(path) as image:
    pil_decoded = np.asarray(image.convert('RGB'))
    pil_upright = np.asarray(ImageOps.exif_transpose(image).convert('RGB'))
  # Same pixels in (PIL's decoder), same pixels out: the turn alone is compared, exactly.
  ours = preprocessing.apply_orientation(tf.constant(pil_decoded), tf.constant(orientation))
  np.testing.assert_array_equal(ours.numpy(), pil_upright)
  np.testing.assert_array_equal(preprocessing.apply_orientation(pil_decoded, orientation),
                                pil_upright)
  # TensorFlow's decoder, then the turn: PIL's upright image up to decoder differences.
  tf_upright = preprocessing.decode_example(
      {'image': tf.io.read_file(str(path)), 'orientation': orientation}, True).numpy()
  assert tf_upright.shape == pil_upright.shape
  assert np.abs(tf_upright.astype(int) - pil_upright).mean() < 2


@pytest.mark.parametrize('shape, scale, translation', [
    ((330, 330), (0.683, 0.683), (-3.0, -3.0)),  # S=256 from 375 rows: the common case.
    ((200, 170), (0.41, 0.45), (-1.2, -7.3)),  # Wider filters than taps of one block.
    ((120, 90), (1.37, 2.2), (-10.5, -3.0)),  # Upsampling (S=512 from 375).
    ((900, 40), (0.25, 1.0), (0.0, 0.0)),  # One tall axis, one left alone.
])
@pytest.mark.parametrize('flip', [False, True])
def test_resample_equals_scale_and_translate(shape, scale, translation, flip):
  # ScaleAndTranslate is the kernel `resize` (tf.image.resize, antialias) runs.
  image = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
  reference = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(image, tf.float32)[None], size=[150, 100], scale=scale,
      translation=translation, kernel_type='triangle', antialias=True)[0].numpy()
  reference = reference[:100, :100]
  out = preprocessing.resample(tf.constant(image), 100, tf.constant(scale),
                               tf.constant(translation), flip).numpy()
  assert out.shape == (100, 100, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, reference[:, ::-1] if flip else reference, atol=1e-3)
