"""What the perceptual metrics (vgg_jax.lpips, vgg_jax.dists) share.

Their VGG-16 trunk (pretrained.load(backbone), refused unless it is VGG-16 without batch
norm in torchvision's input convention), the checks of an image pair, image files read in
pairs, two folders compared by name in batches of one size, the CSV, and the command line
both run: `python -m vgg_jax.<metric> IMG0 IMG1` or `--dir0=A --dir1=B --csv=FILE`.
"""

import dataclasses
import io
import os
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import data
from vgg_jax import errors
from vgg_jax import files
from vgg_jax import models
from vgg_jax import pretrained
from vgg_jax.pretrained import download
from vgg_jax.pretrained import named_weights

DTYPES = {'float32': models.DTYPES['float32'], 'bfloat16': models.DTYPES['bfloat16'],
          'float64': jnp.float64}  # float64 for checks, with jax_enable_x64.
# Our vgg16 import folds torchvision's normalisation into conv1_1, whose input channel c is
# divided by 255 * std_c: a torch input t is this trunk's t * 255 * std.
TORCH_TO_TRUNK = np.asarray([255.0 * s for s in named_weights.TORCH_IMAGENET.std], np.float32)
# A metric's distances of a batch: x0, x1 [B, H, W, 3] -> [B].
Metric = Callable[[Any, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a metric takes, for its checks, messages, file reader, log and CSV."""
  metric: str  # Its name: 'LPIPS', 'DISTS'.
  low: float  # Images in [low, 1]; an 8-bit value u is read as u / (255 / (1 - low)) + low.
  min_size: int  # The smallest side.
  why_min_size: str  # The reason, for the message.
  hint: str = ''  # Added to the message for values out of range.

  @property
  def uint8_scale(self) -> float:
    return 255.0 / (1.0 - self.low)


def load_trunk(backbone: str, dtype: str, metric: str) -> tuple[models.VGG, dict[str, Any]]:
  """(trunk in `dtype`, {'params': its conv layers}) of pretrained.load(backbone), checked.

  dtype: 'float32', 'bfloat16', or 'float64' (with jax_enable_x64: for checks, where
  float32 rounding would decide which side of a ReLU a value near 0 falls).
  """
  if dtype not in DTYPES:
    raise errors.InvalidInput(f"dtype={dtype!r}: {metric}'s trunk runs in one of {tuple(DTYPES)}.")
  if dtype == 'float64' and not jax.config.jax_enable_x64:
    raise errors.InvalidInput("dtype='float64' needs jax_enable_x64 (jax.enable_x64(True)).")
  try:
    trunk, variables, mean_rgb = pretrained.load(backbone)
  except download.DownloadError as error:
    raise download.DownloadError(
        f'{error} Or give {metric} a VGG-16 trunk you have: --backbone=PATH (in Python, '
        'backbone=PATH), a torchvision vgg16 .pth or an import directory.') from None
  check_trunk(trunk, mean_rgb, backbone, metric)
  convs = {n: p for n, p in variables['params'].items() if n.startswith('conv')}
  return trunk.clone(dtype=DTYPES[dtype]), {'params': jax.device_put(convs)}


def check_trunk(trunk: models.VGG, mean_rgb, backbone: str, metric: str = 'LPIPS'):
  """The metric is defined on torchvision's VGG-16: variant D, no batch norm, its input."""
  if trunk.variant != 'D' or trunk.batch_norm:
    raise errors.InvalidInput(
        f"{backbone} is VGG-{trunk.variant}{'_bn' if trunk.batch_norm else ''}; "
        f"{metric}'s trunk is VGG-16 (variant D) without batch norm, e.g. 'vgg16'.")
  torch_mean = pretrained.mean_rgb_of(named_weights.TORCH_IMAGENET)
  if not np.allclose(mean_rgb, torch_mean, atol=1e-3):
    raise errors.InvalidInput(
        f"{backbone} takes RGB minus {np.round(mean_rgb, 3).tolist()}; {metric}'s "
        f'input normalisation needs a trunk in torchvision\'s convention (minus '
        f'{np.round(torch_mean, 3).tolist()}, divided by 255 * std), e.g. '
        "'vgg16' or a torchvision vgg16 file.")


def weights_file(name_or_path: str, table: dict[str, Any],
                 folder: str) -> tuple[str, io.BytesIO | None]:
  """(path, its verified bytes or None) of a metric's learned weights: a path as it is, or
  a name of `table`, fetched once into $VGG_JAX_CACHE/<folder> and checked against its
  sha256 at every use (the bytes checked are the bytes returned for parsing)."""
  path = named_weights.as_path(name_or_path, table)
  if path is not None:
    return path, None
  entry = table[name_or_path]
  directory = os.path.join(named_weights.cache_dir(), folder)
  verified = download.cached_bytes(entry, directory)
  return os.path.join(directory, entry.file_name), io.BytesIO(verified)


def check_pair(x0, x1, inputs: Inputs):
  """Raises ValueError naming what is wrong: rank, channels, dtype, shapes, size, range.

  The range is checked on concrete arrays only; inside jit or grad the values are unknown.
  """
  metric, low = inputs.metric, inputs.low
  for name, x in (('x0', x0), ('x1', x1)):
    shape = tuple(np.shape(x))
    if len(shape) != 4 or shape[-1] != 3:
      raise errors.InvalidInput(
          f'{name} has shape {shape}; {metric} takes RGB batches [B, H, W, 3].')
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise errors.InvalidInput(
          f'{name} is {jnp.result_type(x)}; {metric} takes float images in '
          f'[{low:g}, 1] (uint8 u: u / {inputs.uint8_scale:g}'
          f'{f" - {-low:g}" if low else ""}).')
  if np.shape(x0) != np.shape(x1):
    raise errors.InvalidInput(
        f'x0 and x1 differ in shape, {tuple(np.shape(x0))} and '
        f'{tuple(np.shape(x1))}: {metric} compares images of one size.')
  if min(np.shape(x0)[1:3]) < inputs.min_size:
    raise errors.InvalidInput(
        f'{metric} needs images of at least {inputs.min_size}x{inputs.min_size} '
        f'({inputs.why_min_size}), got {np.shape(x0)[1]}x{np.shape(x0)[2]}.')
  for name, x in (('x0', x0), ('x1', x1)):
    if isinstance(x, jax.core.Tracer):
      continue
    least, most = float(jnp.min(x)), float(jnp.max(x))
    if not low <= least <= most <= 1.0:  # NaN fails too.
      raise errors.InvalidInput(
          f'{name} has values in [{least:.4g}, {most:.4g}]; {metric} takes images '
          f'in [{low:g}, 1]{inputs.hint}.')


def read_image(path: str, low: float) -> np.ndarray:
  """An image file as float32 [H, W, 3] in [low, 1]: u / (255 / (1 - low)) + low, as the
  references read them (LPIPS: u / 127.5 - 1; DISTS: torchvision's ToTensor, u / 255)."""
  # Pillow: a dependency already (and no TensorFlow, so this runs on any machine).
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert('RGB'), np.float32)
  except OSError as error:
    raise errors.InvalidInput(f'Could not read image {path}: {error}') from error
  return pixels / np.float32(255.0 / (1.0 - low)) + np.float32(low)


def read_pair(path0: str, path1: str, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
  """Two image files of one size; different sizes raise, naming both files."""
  x0, x1 = read_image(path0, inputs.low), read_image(path1, inputs.low)
  if x0.shape != x1.shape:
    raise errors.InvalidInput(
        f'{path0} is {x0.shape[1]}x{x0.shape[0]} but {path1} is '
        f'{x1.shape[1]}x{x1.shape[0]}: {inputs.metric} compares images of one '
        'size.')
  return x0, x1


def compare_files(metric: Metric, path0: str, path1: str, inputs: Inputs) -> float:
  """The metric between two image files."""
  x0, x1 = read_pair(path0, path1, inputs)
  return float(metric(x0[None], x1[None])[0])


def paired_names(dir0: str, dir1: str) -> list[str]:
  """Image names present in both folders, sorted; the others are reported on stderr."""
  names = []
  for folder in (dir0, dir1):
    if not os.path.isdir(folder):
      raise errors.NotFound(f'No folder {folder}.')
    names.append({n for n in os.listdir(folder) if n.lower().endswith(data.IMAGE_EXTENSIONS)})
  both = sorted(names[0] & names[1])
  for folder, only in ((dir0, names[0] - names[1]), (dir1, names[1] - names[0])):
    if only:
      logging.warning('%d image(s) only in %s, skipped: %s', len(only), folder,
                      ', '.join(sorted(only)[:5]) + (', ...' if len(only) > 5 else ''))
  if not both:
    raise errors.InvalidInput(f'{dir0} and {dir1} have no image file names in common.')
  return both


def compare_dirs(metric: Metric, dir0: str, dir1: str, inputs: Inputs, batch_size: int = 8,
                 report_seconds: float = 5.0) -> dict[str, float]:
  """{name: distance} of every same-named pair, batched by image size; logs progress.

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
    x0, x1 = read_pair(os.path.join(dir0, name), os.path.join(dir1, name), inputs)
    pending.setdefault(x0.shape, []).append((name, x0, x1))
    if len(pending[x0.shape]) == batch_size:
      run(x0.shape)
    if time.monotonic() - last >= report_seconds or i == len(names) - 1:
      for shape in list(pending) if i == len(names) - 1 else ():
        run(shape)
      last = time.monotonic()
      logging.info('%s: %d/%d pairs read, %d compared, %.1f pairs/s', inputs.metric, i + 1,
                   len(names), len(out), len(out) / max(last - start, 1e-9))
  return {name: out[name] for name in names}


def write_csv(path: str, distances: dict[str, float], column: str):
  """image,<column> rows, written atomically."""
  rows = [f'image,{column}'] + [f'{name},{value:.8g}' for name, value in distances.items()]
  files.write_file_atomically(path, '\n'.join(rows) + '\n')


def define_flags(default_csv: str):
  """The flags every metric's command has: the folders, the trunk (its own flags are its
  module's)."""
  flags.DEFINE_string('dir0', None, 'Folder of images; compared with same-named ones of --dir1.')
  flags.DEFINE_string('dir1', None, 'The second folder.')
  flags.DEFINE_string('csv', default_csv, 'With --dir0/--dir1: where the per-image CSV goes.')
  flags.DEFINE_integer('batch_size', 8, 'Image pairs per batch (folders).')
  flags.DEFINE_string('backbone', 'vgg16', 'The VGG-16 trunk: named weights, a torchvision '
                      'vgg16 file or an import directory.')
  flags.DEFINE_enum('dtype', 'float32', ('float32', 'bfloat16'), "The trunk's activations.")


def command_images(argv) -> list[str]:
  """The two image files of the command line, or [] with --dir0 and --dir1; else UsageError."""
  args, images = flags.FLAGS, argv[1:]
  if bool(args.dir0) != bool(args.dir1) or bool(args.dir0) == bool(images) or (
      images and len(images) != 2):
    raise app.UsageError('Give two image files, or --dir0 and --dir1.')
  return images


def run_command(metric: Metric, inputs: Inputs, images: list[str], label: str) -> str:
  """What the command prints: the distance of two files, or (the CSV written) the count
  and mean of two folders' pairs. label: the metric as the summary names it."""
  args = flags.FLAGS
  if images:
    return f'{compare_files(metric, *images, inputs):.7g}'
  distances = compare_dirs(metric, args.dir0, args.dir1, inputs, args.batch_size)
  write_csv(args.csv, distances, inputs.metric.lower())
  mean = float(np.mean(list(distances.values())))
  return f'{label} over {len(distances)} pairs: mean {mean:.6f}; per image in {args.csv}'
