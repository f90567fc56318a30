"""The layers VGG is built of: convolution, max-pool, fc6 (dense or as a conv), LRN.

Conv and the pool have two implementations each, with the same parameters and numbers.
Conv: XLA's own ('xla'), or a matmul formulation fast on XLA's CPU backend ('matmul',
cpu_ops). Pool: XLA's reduce_window ('xla'), or a reshape and a max whose gradient goes to
each window's first maximum as XLA's does, with a stage's bias and ReLU fused in
('reshape', cpu_ops).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax import errors
from vgg_jax.models import cpu_ops

KERNEL_INITS = ('glorot', 'paper')
CONV_IMPLS = ('auto', 'xla', 'matmul')
POOL_IMPLS = ('auto', 'xla', 'reshape')


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
  raise errors.InvalidInput(f'kernel_init={scheme!r} is not one of {KERNEL_INITS}.')


def resolve_conv_impl(conv_impl: str) -> str:
  """'auto' -> 'matmul' on the CPU backend (XLA's CPU convolution is slow), else 'xla'."""
  if conv_impl not in CONV_IMPLS:
    raise errors.InvalidInput(f'conv_impl={conv_impl!r} is not one of {CONV_IMPLS}.')
  if conv_impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return conv_impl


def resolve_pool_impl(pool_impl: str, conv_impl: str) -> str:
  """'auto' -> 'reshape' beside matmul convs, 'xla' beside XLA's convs."""
  if pool_impl not in POOL_IMPLS:
    raise errors.InvalidInput(f'pool_impl={pool_impl!r} is not one of {POOL_IMPLS}.')
  if pool_impl == 'auto':
    return 'reshape' if resolve_conv_impl(conv_impl) == 'matmul' else 'xla'
  return pool_impl


class Conv(nn.Module):
  """A k x k, stride 1, 'same' convolution plus bias; kernel [k, k, Cin, Cout] (HWIO).

  impl 'xla' calls XLA's convolution; 'matmul' computes the same numbers through matmuls
  (cpu_ops.conv: patches times the kernel, or for large maps a formulation that builds
  less), fast on XLA's CPU backend. Parameters are identical.
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
      y = cpu_ops.conv(x, kernel)
    return y, bias

  def __call__(self, x):
    y, bias = self._convolve(x)
    return y + bias

  def bias_relu_max_pool(self, x, pool_impl: str):
    """A stage's last conv and its end, max_pool_2x2(relu(conv(x) + bias)) (Table 1).

    With pool_impl 'reshape' the bias, ReLU and pool run fused
    (cpu_ops.bias_relu_max_pool_2x2). With capture_intermediates the conv output is
    recorded as this layer's __call__ output, as the unfused path records it.
    """
    if pool_impl == 'xla':
      return max_pool_2x2(nn.relu(self(x)), pool_impl)
    y, bias = self._convolve(x)
    if self.is_mutable_collection('intermediates'):
      self.sow('intermediates', '__call__', y + bias)
    return cpu_ops.bias_relu_max_pool_2x2(y, bias)


def max_pool_2x2(x, impl: str):
  """2x2 max-pool, stride 2, VALID (odd rows/columns dropped), Table 1; impl 'xla' or
  'reshape' (a resolved pool_impl)."""
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
