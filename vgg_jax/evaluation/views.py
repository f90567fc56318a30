"""Softmax posteriors of a model over the test views of Sec. 3.2, on the local devices.

Views of one shape (centre and multi-crop crops) run in batches padded to one of a few
sizes. Dense evaluation takes images of many shapes (a photo's aspect ratio survives
the rescaling to Q): each is padded at the bottom and right up to its shape bucket
(each side rounded up to a multiple of the net's stride, 32), images of one bucket
share a batch, and the model's valid_sizes keep the padding out of every output. The
number of compiled programs is then at most buckets x batch sizes per test scale,
whatever the data. No TensorFlow here: the GPU benchmark runs this module as it is.
"""

import functools
import math

import jax
import numpy as np

from vgg_jax import models
from vgg_jax import sharding

BUCKET_MULTIPLE = models.MIN_IMAGE_SIZE  # The net's stride: five 2x2 pools.
PROTOCOLS = ('single', 'dense', 'multicrop', 'dense+multicrop')
VIEWS_PER_SCALE = {'single': 1, 'dense': 2, 'multicrop': 50, 'dense+multicrop': 52}


def views_per_scale(protocol: str, flip: bool = True) -> int:
  views = VIEWS_PER_SCALE[protocol]
  return views if flip or protocol == 'single' else views // 2


# One jit for every Predictor: equal models (Flax modules compare by their fields) share
# its traces, so the runs of a study and their fusions compile each shape once.
@functools.partial(jax.jit, static_argnames=('model', 'dense'))
def _posteriors(model: models.VGG, variables, images, dense: bool, valid_sizes=None):
  if dense:
    logits = model.apply(variables, images, valid_sizes, method=models.VGG.dense)
  else:
    logits = model.apply(variables, images)
  return jax.nn.softmax(logits)


def bucket_shape(height: int, width: int, multiple: int = BUCKET_MULTIPLE) -> tuple[int, int]:
  """(height, width) rounded up to multiples of `multiple`."""
  return (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)


def batch_sizes(batch_size: int, devices: int) -> tuple[int, ...]:
  """The padded batch sizes: devices, doubling up to batch_size (a multiple of devices)."""
  sizes = [devices]
  while sizes[-1] * 2 < batch_size:
    sizes.append(sizes[-1] * 2)
  return tuple(sorted({*sizes, batch_size}))


class Predictor:
  """Posteriors of one model; `programs` holds the (batch shape, dense, masked) it has run."""

  def __init__(self, model: models.VGG, variables, batch_size: int):
    """variables: {'params': ...} (and 'batch_stats' for the batch-norm variants)."""
    self.mesh = sharding.create_mesh(local=True)  # Each process predicts its own images.
    self.model = model
    self.variables = jax.device_put(variables, sharding.replicated(self.mesh))
    per_device = max(1, batch_size // self.mesh.size)
    self.batch_size = per_device * self.mesh.size
    self.batch_sizes = batch_sizes(self.batch_size, self.mesh.size)
    self.views = sharding.batch_sharding(self.mesh)
    self.programs: set[tuple] = set()

  def _run(self, images: np.ndarray, dense: bool, valid_sizes=None) -> np.ndarray:
    """Posteriors of at most batch_size images, padded to the next of batch_sizes."""
    count = len(images)
    size = next(s for s in self.batch_sizes if s >= count)
    pad = [(0, size - count)] + [(0, 0)] * (images.ndim - 1)
    images = np.pad(images, pad)
    args = {}
    if valid_sizes is not None:  # Padding rows: whole, so their average divides by > 0.
      valid_sizes = np.concatenate([valid_sizes, np.tile(images.shape[1:3], (size - count, 1))])
      args['valid_sizes'] = jax.device_put(valid_sizes.astype(np.int32), self.views)
    self.programs.add((images.shape, dense, valid_sizes is not None))
    probs = _posteriors(self.model, self.variables, jax.device_put(images, self.views),
                        dense, **args)
    return np.asarray(probs)[:count]

  def __call__(self, images: np.ndarray, dense: bool = False) -> np.ndarray:
    """images [n, H, W, 3] of one shape -> posteriors [n, classes]."""
    return np.concatenate([self._run(images[start:start + self.batch_size], dense)
                           for start in range(0, len(images), self.batch_size)])

  def dense(self, images: list[np.ndarray], flip: bool = True,
            buckets: bool = True) -> np.ndarray:
    """Sec. 3.2 dense posteriors [n, classes] of images [h_i, w_i, 3] of any shapes; with
    flip, averaged with those of the horizontal flips. buckets=False runs each exact
    shape unpadded (a program per shape): the reference the buckets are tested and timed
    against."""
    views = list(images) + ([im[:, ::-1] for im in images] if flip else [])
    groups: dict[tuple[int, int], list[int]] = {}
    for i, view in enumerate(views):
      shape = view.shape[:2]
      groups.setdefault(bucket_shape(*shape) if buckets else shape, []).append(i)
    probs = np.zeros((len(views), self.model.num_classes), np.float32)
    for (height, width), indices in groups.items():
      for start in range(0, len(indices), self.batch_size):
        part = indices[start:start + self.batch_size]
        batch = np.zeros((len(part), height, width, 3), np.float32)
        for row, i in enumerate(part):
          batch[row, :views[i].shape[0], :views[i].shape[1]] = views[i]
        valid = np.asarray([views[i].shape[:2] for i in part]) if buckets else None
        probs[part] = self._run(batch, True, valid)
    return 0.5 * (probs[:len(images)] + probs[len(images):]) if flip else probs


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
  return image[top:top + size, left:left + size]


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


def posteriors_at_scale(predictor: Predictor, rescaled: list[np.ndarray], protocol: str,
                        image_size: int, flip: bool = True) -> np.ndarray:
  """Posteriors [n, classes] of n images already rescaled to one Q."""
  parts = []
  if protocol == 'single':
    parts.append(predictor(np.stack([centre_crop(im, image_size) for im in rescaled])))
  if 'multicrop' in protocol:
    views = np.concatenate([multi_crop_views(im, image_size=image_size, flip=flip)
                            for im in rescaled])
    probs = predictor(views).reshape(len(rescaled), -1, predictor.model.num_classes)
    parts.append(probs.mean(1))
  if 'dense' in protocol:
    parts.append(predictor.dense(rescaled, flip))
  return np.mean(parts, axis=0)
