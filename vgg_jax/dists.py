"""DISTS (Ding et al., TPAMI 2020) on VGG-16, equal to the `DISTS_pytorch` package's, in JAX.

  metric = dists.load()                     # trunk: the vgg16 named weights; alpha, beta
  d = metric(x0, x1)                        # [B] float32; x0, x1: [B, H, W, 3] RGB in [0, 1]
  grads = jax.grad(lambda x: metric(x, target).mean())(x)   # a loss: differentiable, jit-able

  python -m vgg_jax.dists IMG0 IMG1                              # prints the distance
  python -m vgg_jax.dists --dir0=A --dir1=B --csv=dists.csv      # same-named images

The distance, step by step as the reference (DISTS_pytorch 0.1) computes it:
  1. (x - mean) / std with torchvision's ImageNet mean and std;
  2. VGG-16's conv layers with torchvision's vgg16 weights, each of pool1..pool4 replaced
     by L2 pooling: sqrt(g * x^2 + 1e-12), g the 3x3 Hanning window normalised to sum 1
     (np.hanning(5)[1:-1] = (1/2, 1, 1/2), outer product, / 4), stride 2, zero padding 1,
     so a side of n becomes ceil(n / 2);
  3. six feature sets f_k: the image x itself (as given, in [0, 1]), relu1_2, relu2_2,
     relu3_3, relu4_3 and relu5_3 (3, 64, 128, 256, 512 and 512 channels);
  4. per set k and channel c, over its h_k x w_k positions, the means m0, m1, variances
     v0, v1 and covariance v01 = mean(f0 f1) - m0 m1 of the two images' maps: texture
     l_kc = (2 m0 m1 + c1) / (m0^2 + m1^2 + c1), structure s_kc = (2 v01 + c2) /
     (v0 + v1 + c2), with c1 = c2 = 1e-6;
  5. DISTS = 1 - sum over k, c of (alpha_kc l_kc + beta_kc s_kc), the learned alpha and
     beta (1,475 each) divided by their joint sum, sum(alpha) + sum(beta).
Weights: the trunk is pretrained.load(backbone), 'vgg16' by default (any torchvision-layout
VGG-16 file or import works); alpha and beta are named_weights.DISTS_WEIGHTS's
'dists_vgg16' (the DISTS_pytorch wheel's weights.pt, fetched once into
$VGG_JAX_CACHE/dists, sha256 checked) or a path to such a file. The trunk runs in
`dtype`; the pooling and the statistics run in float32 (float64 with dtype='float64').
"""

from typing import Any

from absl import flags
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import cli
from vgg_jax import models
from vgg_jax import perceptual
from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import torch_files
from vgg_jax.pretrained import untrusted


def _stages() -> tuple[tuple[str, str], ...]:
  """(last layer, the pool after it) of each of VGG-16's stages, from its layer table."""
  table = models.layer_table('D')
  return tuple((layer.name, after.name) for layer, after in zip(table, table[1:])
               if after.kind == 'pool')


STAGES = _stages()  # (('relu1_2', 'pool1'), ..., ('relu5_3', 'pool5')).
LAYERS = tuple(last for last, _ in STAGES)  # Each stage's last ReLU: relu1_2 .. relu5_3.
CHANNELS = (3,) + models.STAGE_CHANNELS  # The image, then each of LAYERS.
TOTAL_CHANNELS = sum(CHANNELS)  # 1,475: alpha's and beta's length.
MEAN = np.asarray(named_weights.TORCH_IMAGENET.mean, np.float32)
STD = np.asarray(named_weights.TORCH_IMAGENET.std, np.float32)
_HANN = np.hanning(5)[1:-1]  # (1/2, 1, 1/2): the reference's 3x3 window is its outer product.
WINDOW = tuple(float(w) for w in _HANN / _HANN.sum())  # (1/4, 1/2, 1/4): each axis's share.
POOL_EPS = 1e-12  # Under the L2 pool's square root.
C1 = C2 = 1e-6  # The texture and structure terms' constants.
# As LPIPS's: at 16 relu5_3 has one position (each L2 pool takes a side n to ceil(n / 2)).
# The reference runs on smaller images too, where ever more layers have one position and
# their structure terms are 1 whatever the images.
MIN_SIZE = 16
INPUTS = perceptual.Inputs('DISTS', 0.0, MIN_SIZE, 'relu5_3 is behind four stride-2 L2 pools',
                           " (RGB as torchvision's ToTensor gives it: u / 255 for 8-bit u, "
                           '(x + 1) / 2 for images in [-1, 1])')


@flax.struct.dataclass
class DISTS:
  """The metric: a pytree (pass it into jit-compiled functions as an argument).

  variables: the trunk's conv parameters; alpha, beta: [1475] float32, as the file holds
  them (divided by their joint sum when used).
  """
  variables: Any
  alpha: jax.Array
  beta: jax.Array
  trunk: models.VGG = flax.struct.field(pytree_node=False)

  def __call__(self, x0, x1) -> jax.Array:
    """DISTS of each pair: [B] float32 (float64 with dtype='float64').

    x0, x1: float [B, H, W, 3] RGB in [0, 1], H, W >= 16.
    """
    perceptual.check_pair(x0, x1, INPUTS)
    return _distances(self, x0, x1)


def l2_pool(x) -> jax.Array:
  """DISTS's L2 pooling of [B, H, W, C]: sqrt(g * x^2 + 1e-12), g the normalised 3x3
  Hanning window, stride 2, zero padding 1: [B, ceil(H / 2), ceil(W / 2), C].

  g is WINDOW's outer product with itself, so it runs as two strided 1-D passes.
  """
  y = jnp.square(x)
  for axis in (1, 2):
    size = (y.shape[axis] + 1) // 2
    pads = [(1, 1) if a == axis else (0, 0) for a in range(y.ndim)]
    y = jnp.pad(y, pads)
    y = sum(w * jax.lax.slice_in_dim(y, i, i + 2 * size - 1, stride=2, axis=axis)
            for i, w in enumerate(WINDOW))
  return jnp.sqrt(y + POOL_EPS)


def feature_sets(metric: DISTS, x) -> list[jax.Array]:
  """The six [B, h_k, w_k, C_k] feature sets of images x [B, H, W, 3] in [0, 1]: x itself,
  then each stage's last ReLU, the pools between stages L2 pools (in x's dtype)."""
  h = (x - MEAN.astype(x.dtype)) / STD.astype(x.dtype)
  h = h * perceptual.TORCH_TO_TRUNK.astype(x.dtype)  # The trunk's input convention.
  out, after = [x], None
  for last, pool in STAGES:
    if after is not None:
      h = l2_pool(h)
    h = metric.trunk.apply(metric.variables, h, last, after, method=models.VGG.features)[last]
    h = h.astype(x.dtype)
    out.append(h)
    after = pool
  return out


@jax.jit
def _distances(metric: DISTS, x0, x1):
  batch = x0.shape[0]
  dtype = jnp.promote_types(metric.trunk.dtype, jnp.float32)  # float64 only when asked for.
  feats = feature_sets(metric, jnp.concatenate([x0, x1]).astype(dtype))
  total = metric.alpha.astype(dtype).sum() + metric.beta.astype(dtype).sum()
  ends = np.cumsum(CHANNELS)
  score = jnp.zeros((batch,), dtype)
  for f, start, end in zip(feats, ends - np.asarray(CHANNELS), ends):
    f0, f1 = f[:batch], f[batch:]
    m0, m1 = jnp.mean(f0, axis=(1, 2)), jnp.mean(f1, axis=(1, 2))  # [B, C_k]
    v0 = jnp.mean(jnp.square(f0 - m0[:, None, None]), axis=(1, 2))
    v1 = jnp.mean(jnp.square(f1 - m1[:, None, None]), axis=(1, 2))
    v01 = jnp.mean(f0 * f1, axis=(1, 2)) - m0 * m1
    texture = (2 * m0 * m1 + C1) / (jnp.square(m0) + jnp.square(m1) + C1)
    structure = (2 * v01 + C2) / (v0 + v1 + C2)
    alpha = metric.alpha[start:end].astype(dtype) / total
    beta = metric.beta[start:end].astype(dtype) / total
    score = score + jnp.sum(alpha * texture + beta * structure, axis=-1)
  return 1 - score


def load(backbone: str = 'vgg16', weights: str | None = None, dtype: str = 'float32') -> DISTS:
  """The DISTS metric.

  backbone: named weights, a weights file or an import's directory, as pretrained.load
  takes them; it must be VGG-16 without batch norm in torchvision's input convention.
  weights: a name of named_weights.DISTS_WEIGHTS or a path to a DISTS weights file (the
  DISTS_pytorch wheel's weights.pt); default 'dists_vgg16'. dtype: the trunk's
  activations, 'float32' or 'bfloat16' (the rest is float32), or 'float64' throughout
  (with jax_enable_x64, for checks).
  """
  trunk, variables = perceptual.load_trunk(backbone, dtype, 'DISTS')
  alpha, beta = learned_weights(weights or 'dists_vgg16')
  return DISTS(variables=variables, alpha=jnp.asarray(alpha), beta=jnp.asarray(beta),
               trunk=trunk)


def learned_weights(name_or_path: str) -> tuple[np.ndarray, np.ndarray]:
  """alpha and beta of a path, or of a name of DISTS_WEIGHTS (its copy in the cache,
  fetched once and checked against its sha256 at every use)."""
  return read_weights(
      *perceptual.weights_file(name_or_path, named_weights.DISTS_WEIGHTS, 'dists'))


def read_weights(path: str, file=None) -> tuple[np.ndarray, np.ndarray]:
  """alpha and beta, [1475] float32 each, of a DISTS weights file: a torch state dict
  {'alpha': [1, 1475, 1, 1], 'beta': [1, 1475, 1, 1]}, non-negative, not all zero.

  file: path's bytes already read and verified (parsed instead of reopening path).
  """
  state = torch_files.read_state_dict(path, file)
  out = []
  for key in ('alpha', 'beta'):
    if key not in state:
      raise untrusted.WeightsFileError(
          f'{path} has no {key}: not a DISTS weights file; its keys: '
          f'{", ".join(untrusted.short(k) for k in list(state)[:8]) or "none"}.')
    weights = state[key]
    if weights.shape != (1, TOTAL_CHANNELS, 1, 1) or weights.dtype.kind in 'biu':
      raise untrusted.WeightsFileError(
          f'{path}: {key} is {weights.dtype} of shape {weights.shape}; DISTS needs floats of '
          f'shape {(1, TOTAL_CHANNELS, 1, 1)} (one per channel of its six feature sets).')
    weights = np.ascontiguousarray(weights.reshape(TOTAL_CHANNELS), np.float32)
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
      raise untrusted.WeightsFileError(
          f'{path}: {key} has negative, infinite or NaN weights (least '
          f'{np.nanmin(weights):.4g}); DISTS\'s weights are finite and non-negative.')
    out.append(weights)
  if not out[0].sum() + out[1].sum() > 0:
    raise untrusted.WeightsFileError(f'{path}: alpha and beta are all zero; DISTS divides by '
                                     'their sum.')
  return out[0], out[1]


def define_flags():
  """The command's flags, defined only when this module runs as a script."""
  perceptual.define_flags('dists.csv')
  flags.DEFINE_string('weights', None, "DISTS's alpha and beta: a name or a path (the "
                      "DISTS_pytorch wheel's weights.pt; default: dists_vgg16).")


def main(argv):
  args = flags.FLAGS
  images = perceptual.command_images(argv)
  metric = load(args.backbone, args.weights, args.dtype)
  print(perceptual.run_command(metric, INPUTS, images, 'DISTS'))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
