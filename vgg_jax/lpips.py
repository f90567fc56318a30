"""LPIPS (Zhang et al., CVPR 2018) on VGG-16, equal to the `lpips` package's, in JAX.

  metric = lpips.load()                     # version '0.1'; trunk: the vgg16 named weights
  d = metric(x0, x1)                        # [B] float32; x0, x1: [B, H, W, 3] in [-1, 1]
  grads = jax.grad(lambda x: metric(x, target).mean())(x)   # a loss: differentiable, jit-able

  python -m vgg_jax.lpips IMG0 IMG1                              # prints the distance
  python -m vgg_jax.lpips --dir0=A --dir1=B --csv=lpips.csv      # same-named images

The distance, step by step as the reference computes it:
  1. (version 0.1) the reference's scaling layer, (x - shift) / scale per channel, with
     shift = (-.030, -.088, -.188) and scale = (.458, .448, .450): torchvision's ImageNet
     mean and std written for inputs in [-1, 1]. Version 0.0 feeds x as it is (the
     original release's slip, which that version keeps);
  2. VGG-16's conv layers with torchvision's vgg16 weights, read at relu1_2, relu2_2,
     relu3_3, relu4_3 and relu5_3 (f_l: h_l x w_l x C_l);
  3. per layer l and position: f / (sqrt(sum_c f_c^2) + 1e-10), unit length over channels;
  4. d_l = mean over h_l x w_l of sum_c w_lc (f0_c - f1_c)^2, the learned w_lc >= 0 being a
     1x1 conv without bias (the lin weights); LPIPS = sum over l of d_l.
lpips=False is the reference's baseline, LPIPS(lpips=False): no lin weights (w_lc = 1,
the squared differences summed over channels), the rest as above.
spatial=True keeps the maps: each layer's is resized to H x W by bilinear interpolation
with half-pixel centres (torch's align_corners=False) and the five are summed: [B, H, W].
Weights: the trunk is pretrained.load(backbone), 'vgg16' by default (any torchvision-layout
VGG-16 file or import works); the lin weights are named_weights.LPIPS_WEIGHTS's file of the
version (fetched once into $VGG_JAX_CACHE/lpips, sha256 checked) or a path to such a .pth,
e.g. the lpips wheel's lpips/weights/v0.1/vgg.pth. The trunk runs in `dtype` (bfloat16
halves its memory); normalisation, differences and sums are float32. The trunk, the
checks of an image pair and the folder command are vgg_jax.perceptual's, shared with DISTS.
"""

import functools
from typing import Any

from absl import flags
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import cli
from vgg_jax import errors
from vgg_jax import models
from vgg_jax import perceptual
from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import torch_files
from vgg_jax.pretrained import untrusted

LAYERS = ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'relu5_3')
CHANNELS = models.STAGE_CHANNELS  # One layer of each stage.
VERSIONS = ('0.1', '0.0')
SHIFT = np.asarray([-.030, -.088, -.188], np.float32)  # The reference's ScalingLayer.
SCALE = np.asarray([.458, .448, .450], np.float32)
EPS = 1e-10  # The reference's normalize_tensor.
MIN_SIZE = 16  # relu5_3 lies behind four 2x2 pools.
DTYPES = perceptual.DTYPES
INPUTS = perceptual.Inputs('LPIPS', -1.0, MIN_SIZE, 'relu5_3 is behind four 2x2 pools',
                           ' (pass normalize=True for images in [0, 1])')
# normalize=True: images in [0, 1].
NORMALIZED_INPUTS = perceptual.Inputs('LPIPS', 0.0, MIN_SIZE, INPUTS.why_min_size)


@flax.struct.dataclass
class LPIPS:
  """The metric: a pytree (pass it into jit-compiled functions as an argument).

  variables: the trunk's conv parameters; lin: five [C_l] float32 arrays (ones in the
  baseline, lpips=False).
  """
  variables: Any
  lin: tuple[jax.Array, ...]
  trunk: models.VGG = flax.struct.field(pytree_node=False)
  version: str = flax.struct.field(pytree_node=False)

  def __call__(self, x0, x1, spatial: bool = False, normalize: bool = False) -> jax.Array:
    """LPIPS of each pair: [B] float32, or [B, H, W] with spatial=True.

    x0, x1: float [B, H, W, 3] RGB in [-1, 1] (in [0, 1] with normalize=True), H, W >= 16.
    """
    per_layer = self.layer_distances(x0, x1, spatial, normalize)
    return functools.reduce(jnp.add, (per_layer[name] for name in LAYERS))

  def layer_distances(self, x0, x1, spatial: bool = False,
                      normalize: bool = False) -> dict[str, jax.Array]:
    """{layer: d_l}, the five terms of the sum (the reference's retPerLayer)."""
    check_pair(x0, x1, normalize)
    return _layer_distances(self, x0, x1, spatial=spatial, normalize=normalize)


def check_pair(x0, x1, normalize: bool = False):
  """Raises ValueError naming what is wrong: rank, channels, dtype, shapes, size, range.

  The range is checked on concrete arrays only; inside jit or grad the values are unknown.
  """
  perceptual.check_pair(x0, x1, NORMALIZED_INPUTS if normalize else INPUTS)


@functools.partial(jax.jit, static_argnames=('spatial', 'normalize'))
def _layer_distances(metric: LPIPS, x0, x1, spatial: bool, normalize: bool):
  batch, height, width = x0.shape[:3]
  dtype = jnp.promote_types(metric.trunk.dtype, jnp.float32)  # float64 only when asked for.
  x = jnp.concatenate([x0, x1]).astype(dtype)
  if normalize:
    x = 2.0 * x - 1.0
  if metric.version == '0.1':
    x = (x - SHIFT.astype(dtype)) / SCALE.astype(dtype)
  x = x * perceptual.TORCH_TO_TRUNK.astype(dtype)
  feats = metric.trunk.apply(metric.variables, x, LAYERS, method=models.VGG.features)
  out = {}
  for name, weights in zip(LAYERS, metric.lin):
    f = feats[name].astype(dtype)
    f = f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + EPS)
    diff = jnp.einsum('bhwc,c->bhw', jnp.square(f[:batch] - f[batch:]), weights.astype(dtype),
                      precision=jax.lax.Precision.HIGHEST)
    out[name] = upsample(diff, height, width) if spatial else jnp.mean(diff, axis=(1, 2))
  return out


def interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] bilinear weights with half-pixel centres, as torch's
  align_corners=False: source = (i + 0.5) * in / out - 0.5, clamped at 0 and at the end."""
  source = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
  low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
  high = np.minimum(low + 1, size_in - 1)
  frac = source - low
  matrix = np.zeros((size_out, size_in), np.float64)
  np.add.at(matrix, (np.arange(size_out), low), 1.0 - frac)
  np.add.at(matrix, (np.arange(size_out), high), frac)
  return matrix.astype(np.float32)


def upsample(maps, height: int, width: int) -> jax.Array:
  """[B, h, w] -> [B, height, width], bilinear (interpolation_matrix on each axis)."""
  rows = interpolation_matrix(maps.shape[1], height).astype(maps.dtype)
  cols = interpolation_matrix(maps.shape[2], width).astype(maps.dtype)
  return jnp.einsum('Hh,bhw,Ww->bHW', rows, maps, cols, precision=jax.lax.Precision.HIGHEST)


def load(version: str = '0.1', backbone: str = 'vgg16', lin_weights: str | None = None,
         dtype: str = 'float32', lpips: bool = True) -> LPIPS:
  """The LPIPS metric of `version` ('0.1' or '0.0').

  backbone: named weights, a weights file or an import's directory, as pretrained.load
  takes them; it must be VGG-16 without batch norm in torchvision's input convention.
  lin_weights: a name of named_weights.LPIPS_WEIGHTS or a .pth path; default the
  version's own, 'lpips_vgg_v<version>'. dtype: the trunk's activations, 'float32' or
  'bfloat16' (the rest is float32), or 'float64' throughout (with jax_enable_x64: for
  checks, where float32 rounding would decide which side of a ReLU a value near 0 falls).
  lpips: False is the reference's baseline (its lpips=False): no lin weights, each
  layer's squared differences summed over channels.
  """
  if version not in VERSIONS:
    raise errors.InvalidInput(f'LPIPS version {version!r} is not one of {VERSIONS}.')
  if not lpips and lin_weights is not None:
    raise errors.InvalidInput(
        f'lin_weights={lin_weights!r} with lpips=False: the baseline has no lin '
        'weights (each layer is summed over channels).')
  trunk, variables = perceptual.load_trunk(backbone, dtype, 'LPIPS')
  lin = (linear_weights(lin_weights or f'lpips_vgg_v{version}') if lpips
         else tuple(np.ones(c, np.float32) for c in CHANNELS))
  return LPIPS(variables=variables, lin=tuple(jnp.asarray(w) for w in lin), trunk=trunk,
               version=version)


def linear_weights(name_or_path: str) -> tuple[np.ndarray, ...]:
  """The five lin weight vectors of a .pth path, or of a name of LPIPS_WEIGHTS (its copy
  in the cache, fetched once and checked against its sha256 at every use)."""
  return read_linear_weights(
      *perceptual.weights_file(name_or_path, named_weights.LPIPS_WEIGHTS, 'lpips'))


def read_linear_weights(path: str, file=None) -> tuple[np.ndarray, ...]:
  """The five [C_l] weight vectors of an LPIPS VGG .pth (lin<k>.model.<1 or 0>.weight).

  file: path's bytes already read and verified (parsed instead of reopening path).
  """
  state = torch_files.read_state_dict(path, file)
  out = []
  for k, (name, channels) in enumerate(zip(LAYERS, CHANNELS)):
    keys = [f'lin{k}.model.{i}.weight' for i in (1, 0) if f'lin{k}.model.{i}.weight' in state]
    if not keys:
      raise untrusted.WeightsFileError(
          f'{path} has no lin{k}.model.1.weight ({name}): not an LPIPS VGG weights file; its '
          f'keys: {", ".join(untrusted.short(k) for k in list(state)[:8])}.')
    weights = state[keys[0]]
    if weights.shape != (1, channels, 1, 1):
      raise untrusted.WeightsFileError(
          f'{path}: {keys[0]} has shape {weights.shape}; LPIPS VGG needs '
          f'{(1, channels, 1, 1)} ({name} has {channels} channels).')
    if not (weights >= 0).all():
      raise untrusted.WeightsFileError(
          f'{path}: {keys[0]} has negative (or NaN) weights (least {np.nanmin(weights):.4g}); '
          "LPIPS's linear weights are non-negative.")
    out.append(np.ascontiguousarray(weights.reshape(channels), np.float32))
  return tuple(out)


def define_flags():
  """The command's flags, defined only when this module runs as a script."""
  perceptual.define_flags('lpips.csv')
  flags.DEFINE_enum('version', '0.1', VERSIONS, "LPIPS version: '0.1' or the original '0.0'.")
  flags.DEFINE_bool('lpips', True, "False: the reference's baseline, no lin weights (each "
                    'layer summed over channels).')
  flags.DEFINE_string('lin_weights', None, "LPIPS's linear weights: a name or a .pth path "
                      '(default: lpips_vgg_v<version>).')


def main(argv):
  args = flags.FLAGS
  images = perceptual.command_images(argv)
  metric = load(args.version, args.backbone, args.lin_weights, args.dtype, args.lpips)
  label = f'LPIPS v{args.version}' + ('' if args.lpips else ' baseline')
  print(perceptual.run_command(metric, INPUTS, images, label))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
