"""The CPU-only kernels: convolutions as matmuls and a fused bias + ReLU + 2x2 max-pool.

When and why: models.VGG uses these when conv_impl resolves to 'matmul' (the pools: when
pool_impl resolves to 'reshape'), which 'auto' does on JAX's CPU backend only. XLA's CPU
convolution is several times slower than its matmul, and JAX's generic derivatives of
max-pooling and of a matmul's weight take XLA:CPU's slowest paths; each function here
computes the same numbers as the plain JAX expression through a faster one (each is
tested equal to it; the measurements are in docs/performance.md). GPU and TPU backends
keep XLA's own convolution and pooling unless pool_impl='reshape' is asked for.
"""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def rows_matmul(x, w):
  """x [..., K] @ w [K, N], whose weight gradient is computed as (dy^T @ x)^T.

  XLA's CPU backend otherwise computes x^T @ dy with both operands transposed, the
  slowest of its three forms.
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


def conv_as_matmul(x, kernel):
  """Stride-1 'same' convolution of x [B, H, W, Cin] by kernel [k, k, Cin, Cout] (HWIO).

  Concatenates the k*k shifted slices of the zero-padded input and multiplies by the
  kernel reshaped to [k*k*Cin, Cout]: XLA's convolution's numbers through its matmul.
  """
  k, _, channels, features = kernel.shape
  if k == 1:
    return rows_matmul(x, kernel[0, 0])
  before, after = (k - 1) // 2, k // 2
  padded = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
  height, width = x.shape[1:3]
  patches = jnp.concatenate([padded[:, dy:dy + height, dx:dx + width]
                             for dy in range(k) for dx in range(k)], axis=-1)
  return rows_matmul(patches, kernel.reshape(k * k * channels, features))


# 3x3 layers whose 9x patch tensor would exceed this many bytes build less (conv()).
PATCH_BYTES_LIMIT = 64 * 2**20


def conv(x, kernel):
  """Stride-1 'same' convolution (the matmul path's), its formulation chosen by shape.

  conv_as_matmul builds patches nine times the input. Where those would exceed
  PATCH_BYTES_LIMIT and the layer is float32, 3x3, with 16-64 input channels,
  conv_kernel_rows builds three times the input instead (docs/performance.md, round 3,
  says why). Both are tested equal to XLA's convolution. Shapes are the traced (global)
  ones.
  """
  k, _, channels, _ = kernel.shape
  patch_bytes = x.size * k * k * x.dtype.itemsize
  if (k == 3 and x.dtype == jnp.float32 and patch_bytes > PATCH_BYTES_LIMIT
      and 16 <= channels <= 64):
    return conv_kernel_rows(x, kernel)
  return conv_as_matmul(x, kernel)


def _column_patches(x):
  """x [B, H, W, C] -> [B, H + 2, W, 3C]: each padded row's three column shifts."""
  width = x.shape[2]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([padded[:, :, dx:dx + width] for dx in range(3)], axis=-1)


def conv_kernel_rows(x, kernel):
  """3x3 'same' convolution with patches three times the input, not nine.

  One matmul multiplies the column patches [B, H+2, W, 3C] by all three kernel rows side
  by side [3C, 3 Cout]; output row h sums kernel row dy's block of patch row h + dy.
  """
  height, channels, features = x.shape[1], kernel.shape[2], kernel.shape[3]
  rows = jnp.concatenate([kernel[dy].reshape(3 * channels, features) for dy in range(3)], -1)
  z = rows_matmul(_column_patches(x), rows)
  return sum(z[:, dy:dy + height, :, dy * features:(dy + 1) * features] for dy in range(3))


def even_crop(x):
  """x [B, H, W, C] without its last row/column where H/W is odd (VALID 2x2 pooling)."""
  height, width = x.shape[1:3]
  return x[:, :height // 2 * 2, :width // 2 * 2]


def _window_max(y):
  """y [B, H, W, C] (H, W even) -> its 2x2 windows [B, H/2, 2, W/2, 2, C] and their maxima."""
  batch, height, width, channels = y.shape
  windows = y.reshape(batch, height // 2, 2, width // 2, 2, channels)
  return windows, windows.max(axis=(2, 4), keepdims=True)


def _first_max_gradient(y, grad):
  """Each 2x2 window's gradient to its first maximum (row-major), as XLA's pool does.

  y [B, H, W, C] (H, W even), grad [B, H/2, W/2, C] -> the gradient with respect to y.
  """
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
  return grad_y.astype(y.dtype)


@jax.custom_vjp
def _even_max_pool(y):
  return _window_max(y)[1].squeeze((2, 4))


def _max_pool_fwd(y):
  return _even_max_pool(y), y


def _max_pool_bwd(y, grad):
  return (_first_max_gradient(y, grad),)


_even_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_2x2(x):
  """2x2 max-pool, stride 2, VALID, as a reshape and a max.

  Its gradient goes to each window's first maximum, as XLA's pool's does (JAX's generic
  derivative of max would split it between tied maxima, e.g. the zeros after a ReLU).
  """
  return _even_max_pool(even_crop(x))


@jax.custom_vjp
def _even_bias_relu_max_pool(y, bias):
  return jnp.maximum(_window_max(y)[1] + bias, 0).squeeze((2, 4))


def _bias_relu_max_pool_fwd(y, bias):
  out = _even_bias_relu_max_pool(y, bias)
  return out, (y, bias, out > 0)


def _bias_relu_max_pool_bwd(residuals, grad):
  """All of each window's gradient to its first maximum (row-major), as XLA's pool does."""
  y, bias, positive = residuals
  grad = jnp.where(positive, grad, 0)
  grad_bias = grad.astype(jnp.float32).sum(axis=(0, 1, 2)).astype(bias.dtype)
  return _first_max_gradient(y, grad), grad_bias


_even_bias_relu_max_pool.defvjp(_bias_relu_max_pool_fwd, _bias_relu_max_pool_bwd)


def bias_relu_max_pool_2x2(y, bias):
  """max_pool_2x2(relu(y + bias)) as relu(max(y) + bias), one pass each way.

  max commutes with adding a per-channel constant and with ReLU, so the bias and ReLU
  run on the pooled map (a quarter of the elements); the backward pass routes each
  window's gradient to its first maximum in one fused pass instead of JAX's generic
  max/ReLU derivatives (which XLA:CPU runs as several passes with transposes).
  y: [B, H, W, C] conv output without bias; bias: [C].
  """
  return _even_bias_relu_max_pool(even_crop(y), bias)
