"""VGG as a backbone: named activations and the feature losses of the literature.

  model, variables, mean_rgb = pretrained.load(DIR)
  feats = features.extract(model, variables, images - mean_rgb, ['relu2_2', 'relu4_3'])

Layer names are the original release's (models.feature_names): conv3_3, bn3_3 (batch-norm
variants), relu3_3, pool3, ..., fc6, relu6, fc7, relu7, fc8. Only the layers up to the
deepest requested one are computed; FC layers run fully-convolutionally, so every
activation is [B, h, w, C]. All functions are jit-friendly (the layer names are static)
and differentiable with respect to the images; with model.dtype bfloat16 the activations
are bfloat16 and the losses accumulate in float32.
The losses, each as its paper writes it (docstrings give the equations):
perceptual_distance (Johnson et al. 2016), srgan_loss (Ledig et al. 2017), gram_matrix
and style_loss (Gatys et al. 2016); LPIPS (Zhang et al. 2018) is vgg_jax.lpips.
"""

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from vgg_jax import models


def extract(model: models.VGG, variables, images, layers: Sequence[str] | str):
  """{layer name: activation [B, h, w, C]} of images [B, H, W, 3].

  H, W: at least 2^(pools up to the deepest layer): 16 for relu5_3, 32 for pool5.

  images are what the model was trained on: RGB 0..255 minus its mean_rgb. Raises a
  ValueError listing the variant's layers when a name is not one of them.
  """
  names = (layers,) if isinstance(layers, str) else tuple(layers)
  return _extract(model, variables, images, names)


# Compiled whole (the model and the names are static): run op by op, every primitive of
# the net would compile on its own.
@functools.partial(jax.jit, static_argnames=('model', 'names'))
def _extract(model: models.VGG, variables, images, names: tuple[str, ...]):
  return model.apply(variables, images, names, method=models.VGG.features)


def _layer_weights(layers: Mapping[str, float] | Sequence[str]) -> dict[str, float]:
  if isinstance(layers, str):
    return {layers: 1.0}
  if isinstance(layers, Mapping):
    return dict(layers)
  return {name: 1.0 for name in layers}


def perceptual_distance(model: models.VGG, variables, images, targets,
                        layers: Mapping[str, float] | Sequence[str]) -> jax.Array:
  """Feature reconstruction loss (Johnson, Alahi & Fei-Fei, ECCV 2016), per image:

    l_feat^{phi,j}(y_hat, y) = 1 / (C_j H_j W_j) * ||phi_j(y_hat) - phi_j(y)||_2^2

  summed over the layers j with weights: sum_j w_j * mean((phi_j(x) - phi_j(y))^2).
  layers: names (weight 1 each) or {name: weight} (Johnson et al. use relu2_2 of VGG-16).
  Returns [B] float32; the mean over the batch is the usual perceptual loss.
  """
  weights = _layer_weights(layers)
  both = extract(model, variables, jnp.concatenate([images, targets]), tuple(weights))
  batch = images.shape[0]
  total = jnp.zeros((batch,), jnp.float32)
  for name, weight in weights.items():
    diff = (both[name][:batch] - both[name][batch:]).astype(jnp.float32)
    total = total + weight * jnp.mean(jnp.square(diff), axis=(1, 2, 3))
  return total


SRGAN_FEATURE_SCALE = 1 / 12.75  # Ledig et al.: "comparable to the MSE loss".


def srgan_loss(model: models.VGG, variables, images, targets, layer: str = 'relu5_4',
               feature_scale: float = SRGAN_FEATURE_SCALE) -> jax.Array:
  """SRGAN's VGG content loss (Ledig et al., CVPR 2017), per image:

    l_VGG/i.j = 1 / (W_ij H_ij) * sum_{x=1}^{W_ij} sum_{y=1}^{H_ij}
                (phi_ij(I_HR)_{x,y} - phi_ij(G(I_LR))_{x,y})^2

  phi_ij: the activation of the j-th conv (after its ReLU) before the i-th max-pool of
  VGG-19, W_ij x H_ij its size; the paper's VGG54 is relu5_4 of variant E (VGG22 is
  relu2_2). The square is over each position's C-vector, so channels are summed and
  positions averaged (MSE over channels too is this divided by C). The paper rescales
  the feature maps by 1/12.75, hence feature_scale, which multiplies the loss by its
  square (1.0: the plain equation). images (super-resolved) and targets (HR) are in
  the model's convention (RGB 0..255 minus mean_rgb). Returns [B] float32.
  """
  both = extract(model, variables, jnp.concatenate([images, targets]), layer)[layer]
  batch = images.shape[0]
  diff = (both[:batch] - both[batch:]).astype(jnp.float32) * feature_scale
  return jnp.mean(jnp.sum(jnp.square(diff), axis=-1), axis=(1, 2))


def gram_matrix(activations) -> jax.Array:
  """[B, h, w, C] -> [B, C, C] = F^T F / (h w), accumulated in float32.

  Gatys et al.'s G^l_ij = sum_k F^l_ik F^l_jk over the M_l = h w positions k, divided by M_l.
  """
  _, height, width, _ = activations.shape
  gram = jnp.einsum('bhwc,bhwd->bcd', activations, activations,
                    preferred_element_type=jnp.float32)
  return gram / (height * width)


def style_loss(grams, target_grams, weights: Mapping[str, float] | None = None) -> jax.Array:
  """Style loss (Gatys, Ecker & Bethge, CVPR 2016), per image:

    E_l = 1 / (4 N_l^2 M_l^2) * sum_ij (G^l_ij - A^l_ij)^2,   L_style = sum_l w_l E_l

  G^l, A^l: the Gram matrices of the generated and the style image at layer l, N_l its
  channels, M_l its positions. grams, target_grams: {layer: [B or 1, C, C]} from
  gram_matrix, which divides by M_l, so the 1 / M_l^2 is already in. Returns [B] float32.
  """
  weights = weights or {name: 1.0 for name in grams}
  total = 0.0
  for name, weight in weights.items():
    diff = grams[name] - target_grams[name]
    total = total + weight * jnp.mean(jnp.square(diff), axis=(1, 2)) / 4.0
  return total
