"""The published VGG weight files we load by name, with the facts their publishers give.

Each entry names one file: where it is, its size, the hash its publisher checks, which of
our nets it fills, the publisher's parameter count and ImageNet-1k validation accuracy,
the input convention its net expects and its licence. vgg_jax.pretrained.load(name)
downloads, verifies and converts an entry once into $VGG_JAX_CACHE (default
~/.cache/vgg_jax); VGG_JAX_MIRROR names a base URL or a local directory holding the same
file names, for clusters without internet.
"""

import dataclasses
import json
import os

from vgg_jax import errors
from vgg_jax.pretrained import untrusted

CACHE_ENV, MIRROR_ENV = 'VGG_JAX_CACHE', 'VGG_JAX_MIRROR'
DEFAULT_CACHE = os.path.join('~', '.cache', 'vgg_jax')


@dataclasses.dataclass(frozen=True)
class Convention:
  """What the source net takes: channels in `order`, values in [0, scale], then (x - mean) / std.

  mean and std are per channel in the source's order and on its scale.
  """
  order: str  # 'RGB' or 'BGR'.
  scale: float  # 1.0: values in [0, 1]; 255.0: 0..255.
  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def describe(self) -> str:
    if self.std == (1.0, 1.0, 1.0):
      return f'{self.order} 0..{self.scale:g} minus {list(self.mean)}'
    std = ', '.join('1/255' if abs(s - 1 / 255) < 1e-12 else f'{s:g}' for s in self.std)
    return f'{self.order} 0..{self.scale:g}, minus {list(self.mean)}, divided by [{std}]'


# torchvision's ImageNet normalisation (its transforms for every IMAGENET1K_V1 VGG).
TORCH_IMAGENET = Convention('RGB', 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Keras applications' 'caffe' mode: BGR, 0..255, minus the BGR means of VGG's release.
KERAS_CAFFE = Convention('BGR', 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
# torchvision's IMAGENET1K_FEATURES: the paper's mean subtraction, written on [0, 1].
TORCH_FEATURES = Convention('RGB', 1.0, (0.48235, 0.45882, 0.40784), (1 / 255,) * 3)

TORCHVISION = 'https://download.pytorch.org/models/'
KERAS = 'https://storage.googleapis.com/tensorflow/keras-applications/'
TORCHVISION_LICENCE = 'BSD-3-Clause (torchvision)'
KERAS_LICENCE = 'CC BY 4.0 (VGG release, ported by Keras)'


@dataclasses.dataclass(frozen=True)
class Weights:
  """One published weights file and the facts its publisher gives for it."""
  name: str
  layout: str  # A vgg_jax.pretrained source: 'torchvision' or 'keras'.
  url: str
  hash_kind: str  # 'sha256': the digest starts with `hash` (torch.hub); 'md5': equals it.
  hash: str
  variant: str  # Table 1: A, B, D, E = VGG-11, 13, 16, 19.
  batch_norm: bool
  include_top: bool  # False: the file's conv layers only are used.
  num_params: int  # The publisher's count, for the whole net.
  top1: float | None  # Publisher's ImageNet-1k validation accuracy (%), None if none given.
  top5: float | None
  convention: Convention
  licence: str
  size_mib: float  # The publisher's rounded size (torchvision) or ours from size_bytes.
  size_bytes: int | None = None  # Exact, where known; else the server's Content-Length.

  @property
  def file_name(self) -> str:
    return self.url.rsplit('/', 1)[1]


def _torchvision(name, file_name, variant, batch_norm, num_params, accuracy, size,
                 **changes) -> Weights:
  """accuracy: (top-1, top-5) %; size: (the publisher's MiB, exact bytes or None); changes:
  other fields than torchvision's usual ones (the whole sha256, convention, include_top)."""
  prefix = file_name.rsplit('-', 1)[1].split('.')[0]  # vgg16-397923af.pth: what torch.hub checks.
  entry = Weights(name, 'torchvision', TORCHVISION + file_name, 'sha256', prefix, variant,
                  batch_norm, True, num_params, *accuracy, TORCH_IMAGENET, TORCHVISION_LICENCE,
                  *size)
  return dataclasses.replace(entry, **changes)


def _keras(name, folder, file_name, md5, variant, include_top, num_params, size_bytes):
  # Keras applications' table: VGG16 71.3 / 90.1, VGG19 71.3 / 90.0 (top-1 / top-5 %), for
  # the whole net: a notop file (the conv base) has no accuracy of its own.
  top1, top5 = ((71.3, 90.1) if variant == 'D' else (71.3, 90.0)) if include_top else (None, None)
  return Weights(name, 'keras', f'{KERAS}{folder}/{file_name}', 'md5', md5, variant, False,
                 include_top, num_params, top1, top5, KERAS_CAFFE, KERAS_LICENCE,
                 round(size_bytes / 2**20, 3), size_bytes)


WEIGHTS = {w.name: w for w in (
    _torchvision('vgg11', 'vgg11-8a719046.pth', 'A', False, 132_863_336, (69.020, 88.628),
                 (506.84, None)),
    _torchvision('vgg11_bn', 'vgg11_bn-6002323d.pth', 'A', True, 132_868_840, (70.370, 89.810),
                 (506.881, None)),
    _torchvision('vgg13', 'vgg13-19584684.pth', 'B', False, 133_047_848, (69.928, 89.246),
                 (507.545, None)),
    _torchvision('vgg13_bn', 'vgg13_bn-abd245e5.pth', 'B', True, 133_053_736, (71.586, 90.374),
                 (507.59, None)),
    _torchvision('vgg16', 'vgg16-397923af.pth', 'D', False, 138_357_544, (71.592, 90.382),
                 (527.796, 553_433_881),
                 hash='397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0'),
    _torchvision('vgg16_bn', 'vgg16_bn-6c64b313.pth', 'D', True, 138_365_992, (73.360, 91.516),
                 (527.866, 553_507_836)),
    _torchvision('vgg19', 'vgg19-dcbb9e9d.pth', 'E', False, 143_667_240, (72.376, 90.876),
                 (548.051, 574_673_361),
                 hash='dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44'),
    _torchvision('vgg19_bn', 'vgg19_bn-c79401a0.pth', 'E', True, 143_678_248, (74.218, 91.842),
                 (548.143, 574_769_405)),
    # Conv layers only (the file's classifier holds no trained values); no accuracy given.
    _torchvision('vgg16_features', 'vgg16_features-amdegroot-88682ab5.pth', 'D', False,
                 138_357_544, (None, None), (527.802, None), convention=TORCH_FEATURES,
                 include_top=False),
    _keras('vgg16_keras', 'vgg16', 'vgg16_weights_tf_dim_ordering_tf_kernels.h5',
           '64373286793e3c8b2b4e3219cbf3544b', 'D', True, 138_357_544, 553_467_096),
    _keras('vgg16_keras_notop', 'vgg16', 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5',
           '6d6bbae143d832006294945121d1f1fc', 'D', False, 14_714_688, 58_889_256),
    _keras('vgg19_keras', 'vgg19', 'vgg19_weights_tf_dim_ordering_tf_kernels.h5',
           'cbe5617147190e668d6c5d5026f83318', 'E', True, 143_667_240, 574_710_816),
    _keras('vgg19_keras_notop', 'vgg19', 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5',
           '253f8cb515780f3b799900260a226db6', 'E', False, 20_024_384, 80_134_624),
)}


@dataclasses.dataclass(frozen=True)
class MetricWeights:
  """A perceptual metric's learned weights: one small file that its reference package's
  wheel ships, fetched from the publisher's repository and kept in the cache as it is."""
  name: str
  size_bytes: int
  hash: str  # The whole sha256, as the wheel's RECORD gives it.
  package: str  # The reference's wheel: 'lpips', 'DISTS_pytorch'.
  wheel_file: str  # Where that wheel (and the publisher's repository) holds the file.
  repository: str  # The base URL of the publisher's repository's raw files.
  argument: str  # The metric's load() argument (and flag) that takes a path instead.
  licence: str
  hash_kind: str = 'sha256'

  @property
  def url(self) -> str:
    return f'{self.repository}{self.wheel_file}'

  @property
  def file_name(self) -> str:  # LPIPS's versions are both vgg.pth in the wheel: ours are apart.
    return self.name + os.path.splitext(self.wheel_file)[1]


def lpips_weights(name: str, version: str, size_bytes: int, sha256: str) -> MetricWeights:
  """LPIPS's linear weights for VGG-16 (Zhang et al. 2018) of `version`: five non-negative
  1x1 convs, one per layer, as the `lpips` wheel ships them."""
  return MetricWeights(
      name, size_bytes, sha256, 'lpips', f'lpips/weights/v{version}/vgg.pth',
      'https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/', 'lin_weights',
      'BSD-2-Clause (lpips)')


LPIPS_WEIGHTS = {w.name: w for w in (
    lpips_weights('lpips_vgg_v0.1', '0.1', 7289,
                  'a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868'),
    lpips_weights('lpips_vgg_v0.0', '0.0', 6735,
                  'b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c'),
)}

# DISTS's alpha and beta (Ding et al., TPAMI 2020), [1, 1475, 1, 1] each over VGG-16's six
# feature sets, as the DISTS_pytorch 0.1 wheel ships them: twice, as DISTS_pytorch/weights.pt
# and, through its setup.py's data_files, as <sys.prefix>/weights.pt (the copy the reference
# reads). The URL is the publisher's repository copy, from which the wheel was built.
DISTS_WEIGHTS = {w.name: w for w in (
    MetricWeights('dists_vgg16', 12288,
                  'f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218',
                  'DISTS_pytorch', 'DISTS_pytorch/weights.pt',
                  'https://raw.githubusercontent.com/dingkeyan93/DISTS/master/', 'weights',
                  'MIT (DISTS_pytorch)'),
)}


def find(name: str, table: dict | None = None):
  """The entry called `name`; an unknown name raises, listing the known ones."""
  table = WEIGHTS if table is None else table
  if name not in table:
    raise errors.InvalidInput(
        f'{name!r} is no directory, weights file or named weights; known names: '
        f'{", ".join(table)}.')
  return table[name]


def cache_dir() -> str:
  """$VGG_JAX_CACHE, default ~/.cache/vgg_jax."""
  return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def cached_directory(name: str) -> str:
  return os.path.join(cache_dir(), name)


def record_path(name: str) -> str:
  """source.json of a conversion: its format, the file and the download's whole sha256."""
  return os.path.join(cached_directory(name), 'source.json')


def read_record(name: str) -> dict | None:
  try:
    with open(record_path(name)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def as_path(argument: str, table=None) -> str | None:
  """argument as a path (~ expanded), or None when it is a registered name of `table`.

  An argument that is neither a registered name nor looks like a path raises, listing
  the names and saying how to pass a file or directory of the working directory.
  """
  table = WEIGHTS if table is None else table
  if argument in table:
    return None
  if untrusted.looks_like_path(argument):
    return os.path.expanduser(argument)
  here = f' A file or directory {argument} exists here: pass it as ./{argument}.' if (
      os.path.exists(argument)) else ' Pass a file or directory as a path (./NAME).'
  raise errors.InvalidInput(
      f'{argument!r} is no registered name; known names: '
      f'{", ".join(table)}.{here}')


def hash_check(entry) -> str:
  """How a download of entry is verified: 'sha256', 'md5' or 'prefix' (8 hex of sha256)."""
  return 'prefix' if entry.hash_kind == 'sha256' and len(entry.hash) < 64 else entry.hash_kind


def format_table(cached: set[str], table: dict[str, Weights] | None = None) -> str:
  """The table as `python -m vgg_jax.pretrained --list` prints it.

  check: how a download is verified; 'prefix' entries (the publisher gives 8 hex digits
  of the sha256) are pinned to their first verified download's whole sha256 once cached.
  """
  table = WEIGHTS if table is None else table
  header = (f'{"name":<18}{"params":>13}{"top-1":>8}{"top-5":>8}{"MB":>7}  {"cached":<7}'
            f'{"check":<15}input (publisher\'s top-1/top-5 % on ImageNet-1k val)')
  lines = [header, '-' * len(header)]
  for w in table.values():
    acc = [f'{a:>8.3f}' if a is not None else f'{"-":>8}' for a in (w.top1, w.top5)]
    check = hash_check(w) + (', pinned' if hash_check(w) == 'prefix' and w.name in cached
                             else '')
    lines.append(f'{w.name:<18}{w.num_params:>13,}{"".join(acc)}{w.size_mib * 2**20 / 1e6:>7.0f}'
                 f'  {"yes" if w.name in cached else "no":<7}{check:<15}'
                 f'{w.convention.describe()}')
  return '\n'.join(lines)
