"""The VGG family of Simonyan & Zisserman (ICLR 2015), Table 1, as one Flax module.

`python -m vgg_jax.models` prints Table 2 (weight layers, parameters, GMACs) reproduced.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


@jax.custom_vjp
def rows_matmul(x, w):
  """x [..., K] @ w [K, N], whose weight gradient is computed as (dy^T @ x)^T.

  XLA's CPU backend otherwise computes x^T @ dy with both operands transposed, the
  slowest form of the three (measured in docs/performance.md).
  """
  return x @ w


def _rows_matmul_fwd(x, w):
  return x @ w, (x, w)


def _rows_matmul_bwd(residuals, grad):
  x, w = residuals
  rows_x, rows_grad = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
  grad_w = (jnp.transpose(rows_grad) @ rows_x).T
  return grad @ w.T, grad_w.astype(w.dtype)


rows_matmul.defvjp(_rows_matmul_fwd, _rows_matmul_bwd)


class Conv(nn.Module):
  """A k x k, stride 1, 'same' convolution; kernel [k, k, Cin, Cout] (HWIO) and bias.

  With pool=True it returns max_pool_2x2(relu(conv + bias)), fused on the matmul path.

  'xla' calls XLA's convolution. 'matmul' concatenates the k*k shifted slices of the
  zero-padded input and multiplies by the kernel reshaped to [k*k*Cin, Cout]: the same
  numbers through XLA's fast CPU matmul. Parameters are identical either way.
  """
  features: int
  kernel_size: int
  impl: str = 'xla'
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()
  pool: bool = False  # Return max_pool_2x2(relu(conv(x) + bias)) instead of conv(x) + bias.

  @nn.compact
  def __call__(self, x):
    k, channels = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, channels, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    if self.impl == 'xla':
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    elif k == 1:
      y = rows_matmul(x, kernel[0, 0])
    else:
      before, after = (k - 1) // 2, k // 2
      padded = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
      height, width = x.shape[1:3]
      patches = jnp.concatenate([padded[:, dy:dy + height, dx:dx + width]
                                 for dy in range(k) for dx in range(k)], axis=-1)
      y = rows_matmul(patches, kernel.reshape(k * k * channels, self.features))
    if self.pool:
      return bias_relu_max_pool(y, bias) if self.impl == 'matmul' else max_pool_2x2(
          nn.relu(y + bias), self.impl)
    return y + bias


def _even(x):
  """x [B, H, W, C] without its last row/column where H/W is odd (VALID 2x2 pooling)."""
  height, width = x.shape[1:3]
  return x[:, :height // 2 * 2, :width // 2 * 2]


def _window_max(y):
  """y [B, H, W, C] (H, W even) -> its 2x2 windows [B, H/2, 2, W/2, 2, C] and their maxima."""
  batch, height, width, channels = y.shape
  windows = y.reshape(batch, height // 2, 2, width // 2, 2, channels)
  return windows, windows.max(axis=(2, 4), keepdims=True)


@jax.custom_vjp
def _even_bias_relu_max_pool(y, bias):
  return nn.relu(_window_max(y)[1] + bias).squeeze((2, 4))


def _bias_relu_max_pool_fwd(y, bias):
  out = _even_bias_relu_max_pool(y, bias)
  return out, (y, bias, out > 0)


def _bias_relu_max_pool_bwd(residuals, grad):
  """All of each window's gradient to its first maximum (row-major), as XLA's pool does."""
  y, bias, positive = residuals
  grad = jnp.where(positive, grad, 0)
  windows, maxima = _window_max(y)
  is_max = windows == maxima
  top_left, top_right, bottom_left = (is_max[:, :, i:i + 1, :, j:j + 1]
                                      for i, j in ((0, 0), (0, 1), (1, 0)))
  row = jnp.arange(2).reshape(1, 1, 2, 1, 1, 1)
  col = jnp.arange(2).reshape(1, 1, 1, 1, 2, 1)
  # Whether a maximum comes earlier in the window, in row-major order.
  earlier = jnp.where(row == 0, (col == 1) & top_left,
                      top_left | top_right | ((col == 1) & bottom_left))
  grad_y = jnp.where(is_max & ~earlier, grad[:, :, None, :, None], 0).reshape(y.shape)
  grad_bias = grad.astype(jnp.float32).sum(axis=(0, 1, 2)).astype(bias.dtype)
  return grad_y.astype(y.dtype), grad_bias


_even_bias_relu_max_pool.defvjp(_bias_relu_max_pool_fwd, _bias_relu_max_pool_bwd)


def bias_relu_max_pool(y, bias):
  """max_pool_2x2(relu(y + bias)) as relu(max(y) + bias), one pass each way.

  max commutes with adding a per-channel constant and with ReLU, so the bias and
  ReLU run on the pooled map; the backward pass routes each window's gradient to its
  first maximum in one fused pass instead of JAX's generic max/ReLU derivatives.
  """
  return _even_bias_relu_max_pool(_even(y), bias)


def max_pool_2x2(x, impl: str):
  """2x2 max-pool, stride 2, VALID (odd rows/columns dropped), Table 1."""
  if impl == 'xla':
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  return _window_max(_even(x))[1].squeeze((2, 4))


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
        last = i == len(kernel_sizes) - 1
        lrn = stage == 0 and i == 0 and self.variant in LRN_VARIANTS
        pool = last and not lrn  # The Conv then adds ReLU and the stage's pool itself.
        x = Conv(channels, k, impl, dtype=self.dtype, kernel_init=init, pool=pool,
                 name=f'conv{stage + 1}_{i + 1}')(x)
        if not pool:
          x = nn.relu(x)
          if lrn:
            x = local_response_norm(x)
          if last:
            x = max_pool_2x2(x, impl)

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
