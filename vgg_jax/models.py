"""The VGG family of Simonyan & Zisserman (ICLR 2015), Table 1, as one Flax module.

`python -m vgg_jax.models` prints Table 2 (weight layers, parameters, GMACs) reproduced.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import cpu_ops

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
KERNEL_INITS = ('glorot', 'paper')
HEADS = ('fc', 'small')  # fc6-fc8 of Table 1, or a small transfer-learning head.
CONV_IMPLS = ('auto', 'xla', 'matmul')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# Table 2 and PAPER.md: (params as printed in the paper, GMACs per 224x224 image).
PAPER_TABLE2 = {
    'A': ('133M', 7.61), 'A-LRN': ('133M', 7.61), 'B': ('133M', 11.31),
    'C': ('134M', 11.77), 'D': ('138M', 15.47), 'E': ('144M', 19.63),
}


def local_response_norm(x, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """AlexNet's LRN across channels: b = a / (k + alpha * sum_{n nearest} a^2)^beta.

  The sum runs over the n channels centred on each channel (fewer at the edges) and
  alpha is NOT divided by n. Caffe's LRN layer computes k + alpha/n * sum(a^2) with
  k=1 by default, so its output differs from this one for the same numbers.
  x: [..., C]; computed in float32, returned in x's dtype.
  """
  squares = jnp.square(x.astype(jnp.float32))
  half = n // 2
  padded = jnp.pad(squares, [(0, 0)] * (x.ndim - 1) + [(half, n - 1 - half)])
  channels = x.shape[-1]
  window_sum = sum(padded[..., i:i + channels] for i in range(n))
  return (x.astype(jnp.float32) / (k + alpha * window_sum)**beta).astype(x.dtype)


def kernel_initializer(scheme: str):
  """'glorot': Glorot/Xavier uniform. 'paper': N(0, 0.01^2), Sec. 3.1.

  The paper says "variance 1e-2"; its Caffe release and every reproduction use a
  standard deviation of 0.01 (variance 1e-4). A standard deviation of 0.1 blows the
  activations up through eleven layers, so std 0.01 is what 'paper' means here.
  """
  if scheme == 'glorot':
    return nn.initializers.xavier_uniform()
  if scheme == 'paper':
    return nn.initializers.normal(stddev=0.01)
  raise ValueError(f'kernel_init={scheme!r} is not one of {KERNEL_INITS}.')


def stage_channels(width: float) -> tuple[int, ...]:
  """Conv channels per stage after the `width` multiplier (at least 1 each)."""
  return tuple(max(1, int(round(c * width))) for c in STAGE_CHANNELS)


def layer_names(variant: str) -> tuple[str, ...]:
  """Weight-layer names in order, as in the original release: conv1_1 .. fc8."""
  convs = [f'conv{s + 1}_{i + 1}' for s, stage in enumerate(CONFIGS[variant])
           for i in range(len(stage))]
  return tuple(convs) + ('fc6', 'fc7', 'fc8')


def resolve_conv_impl(conv_impl: str) -> str:
  """'auto' -> 'matmul' on the CPU backend (XLA's CPU convolution is slow), else 'xla'."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={conv_impl!r} is not one of {CONV_IMPLS}.')
  if conv_impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return conv_impl


class Conv(nn.Module):
  """A k x k, stride 1, 'same' convolution plus bias; kernel [k, k, Cin, Cout] (HWIO).

  impl 'xla' calls XLA's convolution; 'matmul' computes the same numbers as one matmul
  (cpu_ops.conv_as_matmul), fast on XLA's CPU backend. Parameters are identical.
  """
  features: int
  kernel_size: int
  impl: str = 'xla'
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()

  @nn.compact
  def _convolve(self, x):
    """(conv(x) without bias, bias), both in self.dtype."""
    k, channels = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, channels, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    if self.impl == 'xla':
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    else:
      y = cpu_ops.conv_as_matmul(x, kernel)
    return y, bias

  def __call__(self, x):
    y, bias = self._convolve(x)
    return y + bias

  def bias_relu_max_pool(self, x):
    """A stage's last conv and its end, max_pool_2x2(relu(conv(x) + bias)) (Table 1).

    On the matmul path the bias, ReLU and pool run fused (cpu_ops.bias_relu_max_pool_2x2).
    With capture_intermediates the conv output is recorded as this layer's __call__
    output, as the unfused path records it.
    """
    if self.impl == 'xla':
      return max_pool_2x2(nn.relu(self(x)), self.impl)
    y, bias = self._convolve(x)
    if self.is_mutable_collection('intermediates'):
      self.sow('intermediates', '__call__', y + bias)
    return cpu_ops.bias_relu_max_pool_2x2(y, bias)


def max_pool_2x2(x, impl: str):
  """2x2 max-pool, stride 2, VALID (odd rows/columns dropped), Table 1."""
  if impl == 'xla':
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  return cpu_ops.max_pool_2x2(x)


class Fc6(nn.Module):
  """fc6 over the last conv map: a dense layer, or the same weights as a conv (Sec. 3.2).

  The kernel is stored [window*window*C, features] in H,W,C flatten order, so
  reshaping it to [window, window, C, features] gives the equivalent HWIO conv.
  """
  features: int
  window: int
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x, dense: bool):
    channels = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        (self.window * self.window * channels, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    kernel, bias, x = kernel.astype(self.dtype), bias.astype(self.dtype), x.astype(self.dtype)
    if dense:
      kernel = kernel.reshape(self.window, self.window, channels, self.features)
      y = jax.lax.conv_general_dilated(
          x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    else:
      y = x.reshape(x.shape[0], -1) @ kernel
    return y + bias


class VGG(nn.Module):
  """VGG net `variant` of Table 1; images [B, H, W, 3] NHWC float -> logits [B, num_classes].

  image_size is the training crop size: it fixes fc6's window (image_size / 32).
  head='small' replaces fc6-fc8 by the common transfer-learning head: head1 (Dense
  head_width over the flattened conv map), ReLU, dropout, head2 (Dense num_classes).
  With dense=True the same parameters run fully-convolutionally on any image at least
  image_size on each side, and the class-score map is spatially averaged (Sec. 3.2).
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
    kernel_initializer(self.kernel_init)  # Raises on an unknown scheme.
    resolve_conv_impl(self.conv_impl)  # Raises on an unknown implementation.
    if self.head not in HEADS:
      raise ValueError(f'head={self.head!r} is not one of {HEADS}.')
    super().__post_init__()

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

  @nn.compact
  def __call__(self, images, train: bool = False, dense: bool = False):
    self._check_input(images, dense)
    init = kernel_initializer(self.kernel_init)
    impl = resolve_conv_impl(self.conv_impl)
    x = images.astype(self.dtype)
    for stage, (kernel_sizes, channels) in enumerate(
        zip(CONFIGS[self.variant], stage_channels(self.width))):
      for i, k in enumerate(kernel_sizes):
        conv = Conv(channels, k, impl, dtype=self.dtype, kernel_init=init,
                    name=f'conv{stage + 1}_{i + 1}')
        if i < len(kernel_sizes) - 1:
          x = nn.relu(conv(x))
        elif stage == 0 and self.variant in LRN_VARIANTS:  # A-LRN: ReLU, LRN, pool.
          x = max_pool_2x2(local_response_norm(nn.relu(conv(x))), impl)
        else:  # The stage ends: conv, ReLU, 2x2 pool.
          x = conv.bias_relu_max_pool(x)

    window = self.image_size // MIN_IMAGE_SIZE
    if self.head == 'small':
      x = Fc6(self.head_width, window, dtype=self.dtype, kernel_init=init, name='head1')(x, dense)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
      x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=init, name='head2')(x)
    else:
      x = Fc6(self.fc_width, window, dtype=self.dtype, kernel_init=init, name='fc6')(x, dense)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
      x = nn.Dense(self.fc_width, dtype=self.dtype, kernel_init=init, name='fc7')(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
      x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=init, name='fc8')(x)
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


def init_params(model: VGG, rng):
  """Fresh parameters of `model` for image_size x image_size inputs."""
  size = model.image_size
  return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32))['params']


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
  """Prints Table 2 reproduced beside the paper's figures."""
  header = (f'{"config":<7}{"weight layers":>14}{"params (ours, exact)":>22}'
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
    print(f'{variant:<7}{len(layer_names(variant)):>14}{params:>22,}{paper_params:>16}'
          f'{gmacs:>14.2f}{paper_gmacs:>15.2f}')


if __name__ == '__main__':
  print_table2()
