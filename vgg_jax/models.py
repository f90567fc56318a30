"""The VGG family of Simonyan & Zisserman (ICLR 2015), Table 1, as one Flax module.

`python -m vgg_jax.models` prints Table 2 (weight layers, parameters, GMACs) reproduced.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import layers

# Table 1: the kernel size of each conv layer, per stage (1 = C's 1x1 convs).
CONFIGS = {
    'A': ((3,), (3,), (3, 3), (3, 3), (3, 3)),
    'A-LRN': ((3,), (3,), (3, 3), (3, 3), (3, 3)),
    'B': ((3, 3), (3, 3), (3, 3), (3, 3), (3, 3)),
    'C': ((3, 3), (3, 3), (3, 3, 1), (3, 3, 1), (3, 3, 1)),
    'D': ((3, 3), (3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    'E': ((3, 3), (3, 3), (3, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3)),
}
STAGE_CHANNELS = (64, 128, 256, 512, 512)  # Table 1, conv width per stage.
FC_WIDTH = 4096  # Table 1, fc6 and fc7.
LRN_VARIANTS = ('A-LRN',)  # LRN after conv1_1's ReLU.
NUM_POOLS = len(STAGE_CHANNELS)  # One 2x2/2 max-pool after each stage.
MIN_IMAGE_SIZE = 2**NUM_POOLS  # 32: the smallest input five pools leave a pixel of.
HEADS = ('fc', 'small')  # fc6-fc8 of Table 1, or a small transfer-learning head.
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # torchvision's BatchNorm2d (its momentum 0.1).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# Table 2 and PAPER.md: (params as printed in the paper, GMACs per 224x224 image).
PAPER_TABLE2 = {
    'A': ('133M', 7.61), 'A-LRN': ('133M', 7.61), 'B': ('133M', 11.31),
    'C': ('134M', 11.77), 'D': ('138M', 15.47), 'E': ('144M', 19.63),
}


def stage_channels(width: float) -> tuple[int, ...]:
  """Conv channels per stage after the `width` multiplier (at least 1 each)."""
  return tuple(max(1, int(round(c * width))) for c in STAGE_CHANNELS)


def layer_names(variant: str) -> tuple[str, ...]:
  """Weight-layer names in order, as in the original release: conv1_1 .. fc8."""
  convs = [f'conv{s + 1}_{i + 1}' for s, stage in enumerate(CONFIGS[variant])
           for i in range(len(stage))]
  return tuple(convs) + ('fc6', 'fc7', 'fc8')


def feature_names(variant: str, batch_norm: bool = False, head: str = 'fc') -> tuple[str, ...]:
  """Every named activation of the net in order, as the original release names them.

  conv1_1, (bn1_1,) relu1_1, ..., pool1, ..., pool5, then fc6, relu6, fc7, relu7, fc8
  (head='small': head1, relu_head1, head2). A-LRN adds norm1 after relu1_1.
  """
  names = []
  for s, stage in enumerate(CONFIGS[variant]):
    for i in range(len(stage)):
      index = f'{s + 1}_{i + 1}'
      names += [f'conv{index}'] + ([f'bn{index}'] if batch_norm else []) + [f'relu{index}']
      if s == 0 and i == len(stage) - 1 and variant in LRN_VARIANTS:
        names.append('norm1')
    names.append(f'pool{s + 1}')
  if head == 'small':
    return tuple(names) + ('head1', 'relu_head1', 'head2')
  return tuple(names) + ('fc6', 'relu6', 'fc7', 'relu7', 'fc8')


class VGG(nn.Module):
  """VGG net `variant` of Table 1; images [B, H, W, 3] NHWC float -> logits [B, num_classes].

  image_size is the training crop size: it fixes fc6's window (image_size / 32).
  head='small' replaces fc6-fc8 by the common transfer-learning head: head1 (Dense
  head_width over the flattened conv map), ReLU, dropout, head2 (Dense num_classes).
  With dense=True the same parameters run fully-convolutionally on any image at least
  image_size on each side, and the class-score map is spatially averaged (Sec. 3.2).
  batch_norm=True: BatchNorm after every conv, before its ReLU, as torchvision's vgg*_bn
  (not in the paper); its running statistics live in the 'batch_stats' collection.
  frozen_norms=('bn1_1', ...): those BatchNorm layers normalise with their running
  statistics in training too and never update them, as a frozen conv base needs.
  capture=(names, ...): returns {name: activation [B, h, w, C]} for those feature_names
  instead of the logits, computing only as far as the deepest of them; FC layers then run
  fully-convolutionally (fc6 as a window x window conv), on images of any size >= 32 (at
  least image_size when an FC layer is asked for).
  """
  variant: str = 'D'
  num_classes: int = 1000
  width: float = 1.0  # Multiplier of Table 1's conv widths 64..512.
  fc_width: int = FC_WIDTH
  dropout_rate: float = 0.5  # Sec. 3.1, after fc6 and fc7.
  dtype: Any = jnp.float32  # Computation dtype; parameters stay float32.
  kernel_init: str = 'glorot'
  image_size: int = 224
  head: str = 'fc'
  head_width: int = 256
  conv_impl: str = 'auto'  # 'xla', 'matmul' (fast on CPU), 'auto': by backend.
  pool_impl: str = 'auto'  # 'xla', 'reshape' (bias and ReLU fused), 'auto': by conv_impl.
  batch_norm: bool = False
  frozen_norms: tuple[str, ...] = ()

  def __post_init__(self):
    if self.variant not in CONFIGS:
      raise ValueError(f'Unknown VGG variant {self.variant!r}; choose one of {list(CONFIGS)}.')
    if not (isinstance(self.num_classes, (int, np.integer)) and self.num_classes > 0):
      raise ValueError(f'num_classes must be a positive integer, got {self.num_classes!r}.')
    if self.image_size < MIN_IMAGE_SIZE:
      raise ValueError(f'image_size={self.image_size} is smaller than {MIN_IMAGE_SIZE}: '
                       f'the {NUM_POOLS} 2x2 max-pools need at least '
                       f'{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} inputs.')
    if not self.width > 0 or not self.fc_width > 0:
      raise ValueError(f'width and fc_width must be positive, got {self.width}, {self.fc_width}.')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'dropout_rate must be in [0, 1), got {self.dropout_rate}.')
    layers.kernel_initializer(self.kernel_init)  # Raises on an unknown scheme.
    layers.resolve_pool_impl(self.pool_impl, self.conv_impl)  # Raises on unknown ones.
    if self.head not in HEADS:
      raise ValueError(f'head={self.head!r} is not one of {HEADS}.')
    if not isinstance(self.batch_norm, (bool, np.bool_)):
      raise ValueError(f'batch_norm must be True or False, got {self.batch_norm!r}.')
    norms = [n for n in self.feature_names if n.startswith('bn')]
    unknown = [n for n in self.frozen_norms if n not in norms]
    if not isinstance(self.frozen_norms, tuple) or unknown:
      raise ValueError(f'frozen_norms must be a tuple of this net\'s BatchNorm layers '
                       f'({", ".join(norms) or "none: batch_norm=False"}); got '
                       f'{self.frozen_norms!r}.')
    super().__post_init__()

  @property
  def feature_names(self) -> tuple[str, ...]:
    return feature_names(self.variant, self.batch_norm, self.head)

  def _check_input(self, images, dense):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be [B, H, W, 3] (NHWC), got shape {images.shape}.')
    height, width = images.shape[1:3]
    if dense and min(height, width) < self.image_size:
      raise ValueError(f'Dense evaluation needs images of at least image_size={self.image_size} '
                       f'on each side, got {height}x{width}.')
    if not dense and (height, width) != (self.image_size, self.image_size):
      raise ValueError(f'images are {height}x{width} but the FC head was built for '
                       f'image_size={self.image_size}: pass {self.image_size}x'
                       f'{self.image_size} crops, set image_size, or use dense=True.')

  def check_capture(self, images_shape, capture) -> tuple[str, ...]:
    """The requested feature names, checked against this variant and the image size."""
    if isinstance(capture, str):
      capture = (capture,)
    capture, valid = tuple(capture), self.feature_names
    unknown = [name for name in capture if name not in valid]
    if unknown or not capture:
      raise ValueError(f'Layer(s) {unknown} are not in VGG-{self.variant}'
                       f'{"_bn" if self.batch_norm else ""}; its layers are: {", ".join(valid)}.')
    if len(images_shape) != 4 or images_shape[-1] != 3:
      raise ValueError(f'images must be [B, H, W, 3] (NHWC), got shape {tuple(images_shape)}.')
    smallest = min(images_shape[1:3])
    if smallest < MIN_IMAGE_SIZE:
      raise ValueError(f'Feature extraction needs images of at least {MIN_IMAGE_SIZE}x'
                       f'{MIN_IMAGE_SIZE}, got {images_shape[1]}x{images_shape[2]}.')
    deepest = max(valid.index(name) for name in capture)
    if deepest > valid.index('pool5') and smallest < self.image_size:
      raise ValueError(f'Layer {valid[deepest]} (FC) needs images of at least image_size='
                       f'{self.image_size} on each side, got {images_shape[1]}x'
                       f'{images_shape[2]}.')
    return capture

  @nn.compact
  def __call__(self, images, train: bool = False, dense: bool = False, capture=None):
    if capture is None:
      self._check_input(images, dense)
      return self._logits(self._conv_stages(images, train, None), train, dense)
    capture = self.check_capture(images.shape, capture)
    out, valid = {}, self.feature_names
    deepest = valid[max(valid.index(name) for name in capture)]

    def keep(name, x) -> bool:  # Records x if asked for; True once the deepest is reached.
      if name in capture:
        out[name] = x
      return name == deepest

    x = self._conv_stages(images, train, keep)
    if deepest in out:
      return out
    self._logits(x, train, True, keep)
    return out

  def _conv_stages(self, images, train, keep):
    """conv1_1 .. pool5 (or up to the deepest captured layer, keep() saying when)."""
    init = layers.kernel_initializer(self.kernel_init)
    impl = layers.resolve_conv_impl(self.conv_impl)
    pool_impl = layers.resolve_pool_impl(self.pool_impl, self.conv_impl)
    fused = keep is None and not self.batch_norm
    x = images.astype(self.dtype)
    for stage, (kernel_sizes, channels) in enumerate(
        zip(CONFIGS[self.variant], stage_channels(self.width))):
      for i, k in enumerate(kernel_sizes):
        index = f'{stage + 1}_{i + 1}'
        conv = layers.Conv(channels, k, impl, dtype=self.dtype, kernel_init=init,
                           name=f'conv{index}')
        lrn = stage == 0 and i == len(kernel_sizes) - 1 and self.variant in LRN_VARIANTS
        if fused and i == len(kernel_sizes) - 1 and not lrn:
          x = conv.bias_relu_max_pool(x, pool_impl)  # Stage end: conv, ReLU, 2x2 pool.
          break
        x = conv(x)
        if keep and keep(f'conv{index}', x):
          return x
        if self.batch_norm:
          frozen = f'bn{index}' in self.frozen_norms
          x = nn.BatchNorm(use_running_average=not train or frozen, momentum=BN_MOMENTUM,
                           epsilon=BN_EPSILON, dtype=self.dtype, name=f'bn{index}')(x)
          if keep and keep(f'bn{index}', x):
            return x
        x = nn.relu(x)
        if keep and keep(f'relu{index}', x):
          return x
        if lrn:
          x = layers.local_response_norm(x)  # A-LRN: ReLU, LRN, pool.
          if keep and keep('norm1', x):
            return x
      else:  # No fused stage end: pool here.
        x = layers.max_pool_2x2(x, pool_impl)
      if keep and keep(f'pool{stage + 1}', x):
        return x
    return x

  def _logits(self, x, train, dense, keep=None):
    """fc6-fc8 (or the small head) over the last conv map; keep() as in _conv_stages."""
    init = layers.kernel_initializer(self.kernel_init)
    window = self.image_size // MIN_IMAGE_SIZE
    if self.head == 'small':
      names, widths = ('head1', 'head2'), (self.head_width,)
    else:
      names, widths = ('fc6', 'fc7', 'fc8'), (self.fc_width, self.fc_width)
    x = layers.Fc6(widths[0], window, dtype=self.dtype, kernel_init=init,
                   name=names[0])(x, dense)
    for name, features in zip(names[1:], widths[1:] + (self.num_classes,)):
      if keep and keep(names[names.index(name) - 1], x):
        return x
      x = nn.relu(x)
      relu = 'relu_head1' if self.head == 'small' else f'relu{names.index(name) + 5}'
      if keep and keep(relu, x):
        return x
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.Dense(features, dtype=self.dtype, kernel_init=init, name=name)(x)
    if keep:
      keep(names[-1], x)
      return x
    if dense:  # Sec. 3.2: class-score map [B, h, w, classes] averaged over space.
      x = x.mean(axis=(1, 2))
    return x.astype(jnp.float32)


def create_model(model_config, num_classes: int | None = None) -> VGG:
  """VGG from config.model's fields (dtype given by name); num_classes overrides its own."""
  fields = dict(model_config.items())
  if fields['dtype'] not in DTYPES:
    raise ValueError(f"config.model.dtype={fields['dtype']!r} is not one of {list(DTYPES)}.")
  fields['dtype'] = DTYPES[fields['dtype']]
  if num_classes is not None:
    fields['num_classes'] = num_classes
  return VGG(**fields)


def init_variables(model: VGG, rng) -> dict[str, Any]:
  """Fresh {'params'} (and 'batch_stats' if batch_norm) for image_size inputs."""
  size = model.image_size
  return dict(model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32)))


def init_params(model: VGG, rng):
  """Fresh parameters of `model` for image_size x image_size inputs."""
  return init_variables(model, rng)['params']


def count_params(params) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def param_shapes(model: VGG, image_size: int | None = None):
  """Parameter ShapeDtypeStructs via jax.eval_shape: nothing is allocated."""
  size = image_size or model.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)['params']


def forward_macs(variant: str, image_size: int = 224, num_classes: int = 1000,
                 width: float = 1.0, fc_width: int = FC_WIDTH) -> int:
  """Multiply-accumulates of one forward pass, counted from the layer shapes.

  Counts the conv and FC weight layers only (ReLU, pooling and LRN are not MACs).
  """
  macs, size, in_channels = 0, image_size, 3
  for kernel_sizes, channels in zip(CONFIGS[variant], stage_channels(width)):
    for k in kernel_sizes:
      macs += size * size * k * k * in_channels * channels
      in_channels = channels
    size //= 2
  fc_in = size * size * in_channels
  return macs + fc_in * fc_width + fc_width * fc_width + fc_width * num_classes


def print_table2():
  """Prints Table 2 reproduced beside the paper's figures, then the batch-norm variants."""
  header = (f'{"config":<9}{"weight layers":>14}{"params (ours, exact)":>22}'
            f'{"params (paper)":>16}{"GMACs (ours)":>14}{"GMACs (paper)":>15}')
  print('Table 2 reproduced: 224x224x3 input, 1000 classes. Parameters from '
        'jax.eval_shape of VGG.init;\nGMACs counted from the layer shapes '
        '(conv and FC multiply-accumulates of one forward pass).')
  print(header)
  print('-' * len(header))
  for variant in CONFIGS:
    params = count_params(param_shapes(VGG(variant=variant)))
    gmacs = forward_macs(variant) / 1e9
    paper_params, paper_gmacs = PAPER_TABLE2[variant]
    print(f'{variant:<9}{len(layer_names(variant)):>14}{params:>22,}{paper_params:>16}'
          f'{gmacs:>14.2f}{paper_gmacs:>15.2f}')
  print('\nNot in the paper: batch_norm=True (BatchNorm after every conv, as torchvision\'s '
        'vgg*_bn).\nParameters include BatchNorm\'s scale and bias (2 per channel), not its '
        'running statistics;\nBatchNorm adds no MACs.')
  for variant in CONFIGS:
    params = count_params(param_shapes(VGG(variant=variant, batch_norm=True)))
    print(f'{variant + "_bn":<9}{len(layer_names(variant)):>14}{params:>22,}{"-":>16}'
          f'{forward_macs(variant) / 1e9:>14.2f}{"-":>15}')


if __name__ == '__main__':
  print_table2()
