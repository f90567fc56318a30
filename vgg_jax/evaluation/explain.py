"""Where a VGG looks: Grad-CAM, gradient saliency and SmoothGrad, and their overlays.

  maps, classes, probs = explain.gradcam(model, variables, images)        # [B, H, W] in [0, 1]
  maps, classes, probs = explain.saliency(model, variables, images, samples=25)  # SmoothGrad

images are what the model takes (RGB minus mean_rgb), a batch of one size; the class is
each image's top class unless given. dense=True runs the net fully-convolutionally (any
image at least image_size; the class score is the averaged score map, Sec. 3.2), else
images must be image_size crops. Batch-norm nets use their running statistics.
- Grad-CAM (Selvaraju et al., ICCV 2017): with A^k the activation maps of a layer and y^c
  the class's score before the softmax, alpha^c_k = mean over positions of dy^c/dA^k, and
  L^c = ReLU(sum_k alpha^c_k A^k), resized bilinearly to the image. The layer defaults to
  the last ReLU of the last conv stage (relu5_3 on VGG-16), the paper's choice for VGG.
- Saliency (Simonyan, Vedaldi & Zisserman, ICLR 2014 workshop): M = max over channels of
  |dy^c/dx|. SmoothGrad (Smilkov et al. 2017) averages dy^c/dx over `samples` copies of
  the image with Gaussian noise of std noise * (max - min of the image) before that.
Each map is divided by its maximum (all zero stays zero). No TensorFlow here.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import errors
from vgg_jax import models

METHODS = ('gradcam', 'saliency')


@dataclasses.dataclass(frozen=True)
class Explanation:
  """What to draw over an image: Grad-CAM at `layer` (default: default_layer), or the
  saliency map, SmoothGrad with `samples` > 0 noisy copies of `noise` times its range."""
  method: str
  layer: str | None = None
  samples: int = 0
  noise: float = 0.15

  def __post_init__(self):
    if self.method not in METHODS:
      raise errors.InvalidInput(f'--explain={self.method!r} is not one of {METHODS}.')


def default_layer(model: models.VGG) -> str:
  """Grad-CAM's layer: the last ReLU of the last conv stage."""
  table = model.layer_table
  last_pool = max(i for i, layer in enumerate(table) if layer.kind == 'pool')
  return [layer.name for layer in table[:last_pool] if layer.kind == 'relu'][-1]


def _scores(model, variables, images, dense, start=None):
  """Class scores before the softmax, [B, classes] float32."""
  if start is not None:
    return model.apply(variables, images, start, dense, method=models.VGG.run_from)
  if dense:
    return model.apply(variables, images, method=models.VGG.dense)
  return model.apply(variables, images)


def _scores_and_pullback(model, variables, x, dense, start=None):
  """(class scores [B, classes], classes [B] -> dy^c/dx per image) from one forward pass."""
  logits, pullback = jax.vjp(lambda x: _scores(model, variables, x, dense, start), x)

  def class_gradient(classes):
    return pullback(jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype))[0]

  return logits, class_gradient


def _classes(logits, classes):
  return jnp.argmax(logits, axis=-1) if classes is None else jnp.asarray(classes)


def _normalise(maps):
  top = jnp.max(maps, axis=(1, 2), keepdims=True)
  return jnp.where(top > 0, maps / jnp.where(top > 0, top, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=('model', 'layer', 'dense'))
def _gradcam(model, variables, images, classes, layer: str, dense: bool):
  # The net up to the layer once, then the rest from its activations: the logits and
  # dy^c/dA^k both come from that second half.
  activations = model.apply(variables, images, layer, method=models.VGG.features)[layer]
  logits, class_gradient = _scores_and_pullback(model, variables, activations, dense, layer)
  classes = _classes(logits, classes)
  grads = class_gradient(classes).astype(jnp.float32)
  weights = jnp.mean(grads, axis=(1, 2))  # alpha^c_k.
  cam = jax.nn.relu(jnp.einsum('bhwk,bk->bhw', activations.astype(jnp.float32), weights))
  size = (cam.shape[0],) + images.shape[1:3]
  return _normalise(jax.image.resize(cam, size, 'bilinear')), classes, jax.nn.softmax(logits)


def gradcam(model: models.VGG, variables, images, classes=None, layer: str | None = None,
            dense: bool = False):
  """(Grad-CAM maps [B, H, W] in [0, 1], classes [B], posteriors [B, classes])."""
  layer = layer or default_layer(model)
  model.check_names(layer)  # An unknown name lists the net's layers.
  names = [entry.name for entry in model.layer_table]
  if names.index(layer) >= model.head_start:
    raise errors.InvalidInput(
        f'Grad-CAM needs a layer of the conv stages (up to '
        f'{names[model.head_start - 1]}), not the head\'s {layer}.')
  return _gradcam(model, variables, jnp.asarray(images, jnp.float32),
                  None if classes is None else jnp.asarray(classes), layer, dense)


@functools.partial(jax.jit, static_argnames=('model', 'dense', 'samples'))
def _saliency(model, variables, images, classes, rng, dense: bool, samples: int,
              noise: float):
  logits, class_gradient = _scores_and_pullback(model, variables, images, dense)
  classes = _classes(logits, classes)
  if samples:
    spread = jnp.max(images, axis=(1, 2, 3), keepdims=True) - jnp.min(
        images, axis=(1, 2, 3), keepdims=True)
    keys = jax.random.split(rng, samples)

    def noisy(total, key):
      x = images + noise * spread * jax.random.normal(key, images.shape)
      return total + _scores_and_pullback(model, variables, x, dense)[1](classes), None

    grads, _ = jax.lax.scan(noisy, jnp.zeros_like(images), keys)
    grads = grads / samples
  else:
    grads = class_gradient(classes)
  return _normalise(jnp.max(jnp.abs(grads), axis=-1)), classes, jax.nn.softmax(logits)


def saliency(model: models.VGG, variables, images, classes=None, dense: bool = False,
             samples: int = 0, noise: float = 0.15, seed: int = 0):
  """(saliency maps [B, H, W] in [0, 1], classes [B], posteriors); samples > 0: SmoothGrad."""
  if samples < 0 or not 0 <= noise:
    raise errors.InvalidInput(
        f'SmoothGrad needs samples >= 0 and noise >= 0, got {samples}, {noise}.')
  return _saliency(model, variables, jnp.asarray(images, jnp.float32),
                   None if classes is None else jnp.asarray(classes), jax.random.key(seed),
                   dense, samples, noise)


def write_overlay(path: str, image, heatmap, title: str, alpha: float = 0.5):
  """The image (uint8 RGB [H, W, 3]) beside itself under the heatmap ([H, W] in [0, 1])."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  height, width = np.shape(heatmap)
  figure = Figure(figsize=(2 * max(2.5, width / 80) + 0.6, max(2.5, height / 80) + 0.5))
  left, right = figure.subplots(1, 2)
  for axes in (left, right):
    axes.imshow(image, interpolation='nearest')
    axes.axis('off')
  right.imshow(heatmap, cmap='jet', alpha=alpha, vmin=0, vmax=1)
  figure.suptitle(title, fontsize=8)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100)
