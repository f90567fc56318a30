"""The training crop's resampling, run in the jitted train step on the device.

With config.data.device_window > 0 the host pipeline stops after decoding: it sends each
example's uint8 JPEG window (`data.preprocessing.train_window`) with the scale,
translation, flip and colour offset it drew, and `train_images` here does the rest of
Sec. 3.1's augmentation: the antialiased bilinear resize to the crop (TensorFlow's
ScaleAndTranslate with the triangle kernel, as two dense matrix products per image),
the mirror, the PCA colour shift and the mean subtraction, in float32. The host then
only decodes and sends uint8 instead of float32, so each CPU core feeds more images/s
(figures in docs/performance.md).

No TensorFlow here: the steps and the GPU benchmark import this module.
"""

import jax
import jax.numpy as jnp

WINDOW_KEYS = ('window', 'window_hw', 'resample', 'flip', 'colour')


def triangle_weights(in_size, length: int, size: int, scale, translation, flip):
  """[B, size, length] weights: output pixel x of example b takes weights[b, x, j] of
  input pixel j along one axis.

  The taps of ScaleAndTranslate's antialiased triangle kernel, in its float32 order of
  operations: sample s = (x + 0.5) / scale - translation / scale, weight
  max(0, 1 - |j + 0.5 - s| / r) with r = max(1 / scale, 1), only for j < in_size,
  normalised to sum 1; none if s is outside [0, in_size]. flip mirrors the output.
  in_size, scale, translation: [B] float32; flip: [B] bool; length: the padded axis.
  """
  x = jnp.arange(size, dtype=jnp.float32)
  x = jnp.where(flip[:, None], size - 1.0 - x, x)
  inv_scale = (1.0 / scale)[:, None]
  radius = jnp.maximum(inv_scale, 1.0)
  sample = (x + 0.5) * inv_scale - inv_scale * translation[:, None]  # [B, size]
  j = jnp.arange(length, dtype=jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(
      (j + 0.5 - sample[..., None]) * (1.0 / radius[..., None])))
  inside = (sample >= 0) & (sample <= in_size[:, None])
  valid = (j < in_size[:, None, None]) & inside[..., None]
  weights = jnp.where(valid, weights, 0.0)
  return weights / jnp.maximum(weights.sum(-1, keepdims=True), 1e-30)


def train_images(batch, size: int) -> jax.Array:
  """The float32 training crops [B, size, size, 3] of a batch of train_window outputs."""
  window = batch['window'].astype(jnp.float32)
  in_hw = batch['window_hw'].astype(jnp.float32)
  scale, translation = batch['resample'][:, :2], batch['resample'][:, 2:]
  no_flip = jnp.zeros_like(batch['flip'], dtype=bool)
  rows = triangle_weights(in_hw[:, 0], window.shape[1], size, scale[:, 0], translation[:, 0],
                          no_flip)
  columns = triangle_weights(in_hw[:, 1], window.shape[2], size, scale[:, 1],
                             translation[:, 1], batch['flip'])
  highest = jax.lax.Precision.HIGHEST  # No TF32 / bf16 passes on GPU and TPU.
  image = jnp.einsum('bih,bhwc->biwc', rows, window, precision=highest)
  image = jnp.einsum('bjw,biwc->bijc', columns, image, precision=highest)
  return image + batch['colour'][:, None, None, :]


def with_images(batch, size: int):
  """batch with 'images' made on the device if it carries windows, else as it is."""
  if 'window' not in batch:
    return batch
  rest = {k: v for k, v in batch.items() if k not in WINDOW_KEYS}
  return {**rest, 'images': train_images(batch, size)}
