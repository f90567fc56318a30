"""VGG as a backbone: named activations, perceptual distances, Gram matrices, style loss.

  model, variables, mean_rgb = pretrained.load(DIR)
  feats = features.extract(model, variables, images - mean_rgb, ['relu2_2', 'relu4_3'])

Layer names are the original release's (models.feature_names): conv3_3, bn3_3 (batch-norm
variants), relu3_3, pool3, ..., fc6, relu6, fc7, relu7, fc8. Only the layers up to the
deepest requested one are computed; FC layers run fully-convolutionally, so every
activation is [B, h, w, C]. All functions are jit-friendly (the layer names are static)
and differentiable with respect to the images; with model.dtype bfloat16 the activations
are bfloat16 and the losses accumulate in float32.
"""

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from vgg_jax import models


def extract(model: models.VGG, variables, images, layers: Sequence[str] | str):
  """{layer name: activation [B, h, w, C]} of images [B, H, W, 3] (H, W >= 32).

  images are what the model was trained on: RGB 0..255 minus its mean_rgb. Raises a
  ValueError listing the variant's layers when a name is not one of them.
  """
  names = (layers,) if isinstance(layers, str) else tuple(layers)
  return _extract(model, variables, images, names)


# Compiled whole (the model and the names are static): run op by op, every primitive of
# the net would compile on its own.
@functools.partial(jax.jit, static_argnames=('model', 'names'))
def _extract(model: models.VGG, variables, images, names: tuple[str, ...]):
  return model.apply(variables, images, train=False, capture=names)


def _layer_weights(layers: Mapping[str, float] | Sequence[str]) -> dict[str, float]:
  if isinstance(layers, str):
    return {layers: 1.0}
  if isinstance(layers, Mapping):
    return dict(layers)
  return {name: 1.0 for name in layers}


def perceptual_distance(model: models.VGG, variables, images, targets,
                        layers: Mapping[str, float] | Sequence[str]) -> jax.Array:
  """Feature-reconstruction distance per image: sum_l w_l * mean((phi_l(x) - phi_l(y))^2).

  layers: names (weight 1 each) or {name: weight}. Returns [B] float32; the mean over
  the batch is the usual perceptual loss (Johnson et al. 2016).
  """
  weights = _layer_weights(layers)
  both = extract(model, variables, jnp.concatenate([images, targets]), tuple(weights))
  batch = images.shape[0]
  total = jnp.zeros((batch,), jnp.float32)
  for name, weight in weights.items():
    diff = (both[name][:batch] - both[name][batch:]).astype(jnp.float32)
    total = total + weight * jnp.mean(jnp.square(diff), axis=(1, 2, 3))
  return total


def gram_matrix(activations) -> jax.Array:
  """[B, h, w, C] -> [B, C, C] = F^T F / (h w), accumulated in float32."""
  _, height, width, _ = activations.shape
  gram = jnp.einsum('bhwc,bhwd->bcd', activations, activations,
                    preferred_element_type=jnp.float32)
  return gram / (height * width)


def style_loss(grams, target_grams, weights: Mapping[str, float] | None = None) -> jax.Array:
  """Gatys et al. (2016): sum_l w_l / (4 N_l^2 M_l^2) * sum((G_l - A_l)^2), per image.

  grams, target_grams: {layer: [B or 1, C, C]} from gram_matrix (which divides by
  M_l = h w, so the 1 / M_l^2 is already in). Returns [B] float32.
  """
  weights = weights or {name: 1.0 for name in grams}
  total = 0.0
  for name, weight in weights.items():
    diff = grams[name] - target_grams[name]
    total = total + weight * jnp.mean(jnp.square(diff), axis=(1, 2)) / 4.0
  return total


def style_targets(model: models.VGG, variables, style_images,
                  layers: Sequence[str]) -> dict[str, jax.Array]:
  """{layer: Gram matrix [B, C, C]} of the style images, the style loss's targets."""
  feats = extract(model, variables, style_images, tuple(layers))
  return {name: gram_matrix(feats[name]) for name in layers}
