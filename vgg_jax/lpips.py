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
spatial=True keeps the maps: each layer's is resized to H x W by bilinear interpolation
with half-pixel centres (torch's align_corners=False) and the five are summed: [B, H, W].
Weights: the trunk is pretrained.load(backbone), 'vgg16' by default (any torchvision-layout
VGG-16 file or import works); the lin weights are named_weights.LPIPS_WEIGHTS's file of the
version (fetched once into $VGG_JAX_CACHE/lpips, sha256 checked) or a path to such a .pth,
e.g. the lpips wheel's lpips/weights/v0.1/vgg.pth. The trunk runs in `dtype` (bfloat16
halves its memory); normalisation, differences and sums are float32.
"""

import functools
import io
import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import data
from vgg_jax import files
from vgg_jax import models
from vgg_jax import pretrained
from vgg_jax.pretrained import download
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
DTYPES = {'float32': models.DTYPES['float32'], 'bfloat16': models.DTYPES['bfloat16'],
          'float64': jnp.float64}  # float64 for checks, with jax_enable_x64.
# Our vgg16 import folds torchvision's normalisation into conv1_1, whose input channel c is
# divided by 255 * std_c: a torch input t is this trunk's t * 255 * std.
TORCH_TO_TRUNK = np.asarray([255.0 * s for s in named_weights.TORCH_IMAGENET.std], np.float32)


@flax.struct.dataclass
class LPIPS:
  """The metric: a pytree (pass it into jit-compiled functions as an argument).

  variables: the trunk's conv parameters; lin: five [C_l] float32 arrays.
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
  for name, x in (('x0', x0), ('x1', x1)):
    shape = tuple(np.shape(x))
    if len(shape) != 4 or shape[-1] != 3:
      raise ValueError(f'{name} has shape {shape}; LPIPS takes RGB batches [B, H, W, 3].')
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f'{name} is {jnp.result_type(x)}; LPIPS takes float images in [-1, 1] '
                       '(uint8 u: u / 127.5 - 1).')
  if np.shape(x0) != np.shape(x1):
    raise ValueError(f'x0 and x1 differ in shape, {tuple(np.shape(x0))} and '
                     f'{tuple(np.shape(x1))}: LPIPS compares images of one size.')
  if min(np.shape(x0)[1:3]) < MIN_SIZE:
    raise ValueError(f'LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE} (relu5_3 is behind '
                     f'four 2x2 pools), got {np.shape(x0)[1]}x{np.shape(x0)[2]}.')
  low = 0.0 if normalize else -1.0
  for name, x in (('x0', x0), ('x1', x1)):
    if isinstance(x, jax.core.Tracer):
      continue
    least, most = float(jnp.min(x)), float(jnp.max(x))
    if not low <= least <= most <= 1.0:  # NaN fails too.
      raise ValueError(f'{name} has values in [{least:.4g}, {most:.4g}]; LPIPS takes images in '
                       f'[{low:g}, 1]' + ('.' if normalize else
                                          ' (pass normalize=True for images in [0, 1]).'))


@functools.partial(jax.jit, static_argnames=('spatial', 'normalize'))
def _layer_distances(metric: LPIPS, x0, x1, spatial: bool, normalize: bool):
  batch, height, width = x0.shape[:3]
  dtype = jnp.promote_types(metric.trunk.dtype, jnp.float32)  # float64 only when asked for.
  x = jnp.concatenate([x0, x1]).astype(dtype)
  if normalize:
    x = 2.0 * x - 1.0
  if metric.version == '0.1':
    x = (x - SHIFT.astype(dtype)) / SCALE.astype(dtype)
  feats = metric.trunk.apply(metric.variables, x * TORCH_TO_TRUNK.astype(dtype), LAYERS,
                            method=models.VGG.features)
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
         dtype: str = 'float32') -> LPIPS:
  """The LPIPS metric of `version` ('0.1' or '0.0').

  backbone: named weights, a weights file or an import's directory, as pretrained.load
  takes them; it must be VGG-16 without batch norm in torchvision's input convention.
  lin_weights: a name of named_weights.LPIPS_WEIGHTS or a .pth path; default the
  version's own, 'lpips_vgg_v<version>'. dtype: the trunk's activations, 'float32' or
  'bfloat16' (the rest is float32), or 'float64' throughout (with jax_enable_x64: for
  checks, where float32 rounding would decide which side of a ReLU a value near 0 falls).
  """
  if version not in VERSIONS:
    raise ValueError(f'LPIPS version {version!r} is not one of {VERSIONS}.')
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: LPIPS's trunk runs in one of {tuple(DTYPES)}.")
  if dtype == 'float64' and not jax.config.jax_enable_x64:
    raise ValueError("dtype='float64' needs jax_enable_x64 (jax.enable_x64(True)).")
  trunk, variables, mean_rgb = pretrained.load(backbone)
  check_trunk(trunk, mean_rgb, backbone)
  lin = linear_weights(lin_weights or f'lpips_vgg_v{version}')
  convs = {n: p for n, p in variables['params'].items() if n.startswith('conv')}
  return LPIPS(variables={'params': jax.device_put(convs)},
               lin=tuple(jnp.asarray(w) for w in lin),
               trunk=trunk.clone(dtype=DTYPES[dtype]), version=version)


def check_trunk(trunk: models.VGG, mean_rgb, backbone: str):
  """LPIPS is defined on torchvision's VGG-16: variant D, no batch norm, its input."""
  if trunk.variant != 'D' or trunk.batch_norm:
    raise ValueError(f"{backbone} is VGG-{trunk.variant}{'_bn' if trunk.batch_norm else ''}; "
                     "LPIPS's trunk is VGG-16 (variant D) without batch norm, e.g. 'vgg16'.")
  torch_mean = pretrained.mean_rgb_of(named_weights.TORCH_IMAGENET)
  if not np.allclose(mean_rgb, torch_mean, atol=1e-3):
    raise ValueError(f"{backbone} takes RGB minus {np.round(mean_rgb, 3).tolist()}; LPIPS's "
                     f'scaling layer needs a trunk in torchvision\'s convention (minus '
                     f'{np.round(torch_mean, 3).tolist()}, divided by 255 * std), e.g. '
                     "'vgg16' or a torchvision vgg16 file.")


def linear_weights(name_or_path: str) -> tuple[np.ndarray, ...]:
  """The five lin weight vectors of a .pth path, or of a name of LPIPS_WEIGHTS (its copy
  in the cache, fetched once and checked against its sha256 at every use)."""
  path = named_weights.as_path(name_or_path, named_weights.LPIPS_WEIGHTS)
  if path is not None:
    return read_linear_weights(path)
  entry = named_weights.LPIPS_WEIGHTS[name_or_path]
  directory = os.path.join(named_weights.cache_dir(), 'lpips')
  verified = download.cached_bytes(entry, directory)
  return read_linear_weights(os.path.join(directory, entry.file_name), io.BytesIO(verified))


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


def read_image(path: str) -> np.ndarray:
  """An image file as float32 [H, W, 3] in [-1, 1]: u / 127.5 - 1, as the reference reads it."""
  # Pillow: a dependency already (and no TensorFlow, so this runs on any machine).
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert('RGB'), np.float32)
  except OSError as error:
    raise ValueError(f'Could not read image {path}: {error}') from error
  return pixels / 127.5 - 1.0


def read_pair(path0: str, path1: str) -> tuple[np.ndarray, np.ndarray]:
  """Two image files of one size; different sizes raise, naming both files."""
  x0, x1 = read_image(path0), read_image(path1)
  if x0.shape != x1.shape:
    raise ValueError(f'{path0} is {x0.shape[1]}x{x0.shape[0]} but {path1} is '
                     f'{x1.shape[1]}x{x1.shape[0]}: LPIPS compares images of one size.')
  return x0, x1


def compare_files(metric: LPIPS, path0: str, path1: str) -> float:
  """LPIPS between two image files."""
  x0, x1 = read_pair(path0, path1)
  return float(metric(x0[None], x1[None])[0])


def paired_names(dir0: str, dir1: str) -> list[str]:
  """Image names present in both folders, sorted; the others are reported on stderr."""
  names = []
  for folder in (dir0, dir1):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'No folder {folder}.')
    names.append({n for n in os.listdir(folder) if n.lower().endswith(data.IMAGE_EXTENSIONS)})
  both = sorted(names[0] & names[1])
  for folder, only in ((dir0, names[0] - names[1]), (dir1, names[1] - names[0])):
    if only:
      logging.warning('%d image(s) only in %s, skipped: %s', len(only), folder,
                      ', '.join(sorted(only)[:5]) + (', ...' if len(only) > 5 else ''))
  if not both:
    raise ValueError(f'{dir0} and {dir1} have no image file names in common.')
  return both


def compare_dirs(metric: LPIPS, dir0: str, dir1: str, batch_size: int = 8,
                 report_seconds: float = 5.0) -> dict[str, float]:
  """{name: LPIPS} of every same-named pair, batched by image size; logs progress.

  Each batch is padded to batch_size, so each image size compiles once.
  """
  names, out, pending = paired_names(dir0, dir1), {}, {}
  start = last = time.monotonic()

  def run(shape):
    batch_names, x0, x1 = zip(*pending.pop(shape))
    pad = batch_size - len(batch_names)
    x0, x1 = (np.stack(x + (x[-1],) * pad) for x in (x0, x1))
    out.update(zip(batch_names, np.asarray(metric(x0, x1))[:len(batch_names)].tolist()))

  for i, name in enumerate(names):
    x0, x1 = read_pair(os.path.join(dir0, name), os.path.join(dir1, name))
    pending.setdefault(x0.shape, []).append((name, x0, x1))
    if len(pending[x0.shape]) == batch_size:
      run(x0.shape)
    if time.monotonic() - last >= report_seconds or i == len(names) - 1:
      for shape in list(pending) if i == len(names) - 1 else ():
        run(shape)
      last = time.monotonic()
      logging.info('LPIPS: %d/%d pairs read, %d compared, %.1f pairs/s', i + 1, len(names),
                   len(out), len(out) / max(last - start, 1e-9))
  return {name: out[name] for name in names}


def write_csv(path: str, distances: dict[str, float]):
  """name,lpips rows, written atomically."""
  rows = ['image,lpips'] + [f'{name},{value:.8g}' for name, value in distances.items()]
  files.write_file_atomically(path, '\n'.join(rows) + '\n')


def define_flags():
  """The command's flags, defined only when this module runs as a script."""
  flags.DEFINE_string('dir0', None, 'Folder of images; compared with same-named ones of --dir1.')
  flags.DEFINE_string('dir1', None, 'The second folder.')
  flags.DEFINE_string('csv', 'lpips.csv', 'With --dir0/--dir1: where the per-image CSV goes.')
  flags.DEFINE_enum('version', '0.1', VERSIONS, "LPIPS version: '0.1' or the original '0.0'.")
  flags.DEFINE_string('backbone', 'vgg16', 'The VGG-16 trunk: named weights, a torchvision '
                      'vgg16 file or an import directory.')
  flags.DEFINE_string('lin_weights', None, "LPIPS's linear weights: a name or a .pth path "
                      '(default: lpips_vgg_v<version>).')
  flags.DEFINE_enum('dtype', 'float32', ('float32', 'bfloat16'), "The trunk's activations.")
  flags.DEFINE_integer('batch_size', 8, 'Image pairs per batch (folders).')


def main(argv):
  args = flags.FLAGS
  images = argv[1:]
  if bool(args.dir0) != bool(args.dir1) or bool(args.dir0) == bool(images) or (
      images and len(images) != 2):
    raise app.UsageError('Give two image files, or --dir0 and --dir1.')
  metric = load(args.version, args.backbone, args.lin_weights, args.dtype)
  if images:
    print(f'{compare_files(metric, *images):.7g}')
    return
  distances = compare_dirs(metric, args.dir0, args.dir1, args.batch_size)
  write_csv(args.csv, distances)
  mean = float(np.mean(list(distances.values())))
  print(f'LPIPS v{args.version} over {len(distances)} pairs: mean {mean:.6f}; '
        f'per image in {args.csv}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
