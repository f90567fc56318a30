"""Tests for vgg_jax.models.cpu_ops: each CPU kernel equals the plain JAX expression."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_jax.models import cpu_ops
from vgg_jax.models import layers


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_fused_bias_relu_pool_equals_xla_pool_with_ties(dtype):
  # Few distinct values: most windows tie, and odd sizes (7, 9) drop a row and a column.
  values = np.random.RandomState(0).choice([-1.0, 0.0, 1.0, 2.0], size=(2, 7, 9, 3))
  y = jnp.asarray(values, dtype)
  bias = jnp.asarray([0.5, -1.0, 0.0], dtype)
  cotangent = jnp.asarray(np.random.RandomState(1).normal(size=(2, 3, 4, 3)), dtype)
  reference = lambda y, b: nn.max_pool(jax.nn.relu(y + b), (2, 2), strides=(2, 2),
                                       padding='VALID')
  fused = cpu_ops.bias_relu_max_pool_2x2
  np.testing.assert_array_equal(fused(y, bias), reference(y, bias))
  np.testing.assert_array_equal(cpu_ops.max_pool_2x2(y), layers.max_pool_2x2(y, 'xla'))
  grads = [jax.vjp(f, y, bias)[1](cotangent) for f in (reference, fused)]
  # XLA's pool gives each window's gradient to one maximum; so must the fused pool.
  np.testing.assert_array_equal(grads[1][0], grads[0][0])
  # The bias gradient sums in float32 (XLA's reference sums in the input dtype).
  exact = jax.vjp(reference, *(jnp.float32(a) for a in (y, bias)))[1](jnp.float32(cotangent))
  np.testing.assert_allclose(np.float32(grads[1][1]), exact[1], rtol=1e-2)
  assert grads[1][0].dtype == dtype and grads[1][1].dtype == dtype


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_max_pool_gradient_goes_to_the_first_maximum_as_xlas(dtype):
  """The unfused pool (A-LRN's first stage, batch-norm nets, features) after a ReLU's ties."""
  values = np.random.RandomState(2).choice([-1.0, 0.0, 1.0], size=(2, 7, 9, 3))
  y = jax.nn.relu(jnp.asarray(values, dtype))  # Many windows of tied zeros.
  cotangent = jnp.asarray(np.random.RandomState(3).normal(size=(2, 3, 4, 3)), dtype)
  ours = jax.vjp(cpu_ops.max_pool_2x2, y)[1](cotangent)[0]
  xla = jax.vjp(lambda v: layers.max_pool_2x2(v, 'xla'), y)[1](cotangent)[0]
  np.testing.assert_array_equal(ours, xla)
  assert ours.dtype == dtype


def test_rows_matmul_gradients_equal_plain_matmul():
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 12))
  w = jax.random.normal(jax.random.key(1), (12, 7))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  ours = jax.grad(loss(cpu_ops.rows_matmul), (0, 1))(x, w)
  plain = jax.grad(loss(jnp.matmul), (0, 1))(x, w)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('k', [1, 3])
def test_conv_as_matmul_equals_xla_convolution(k):
  x = jax.random.normal(jax.random.key(0), (2, 7, 9, 5))
  kernel = jax.random.normal(jax.random.key(1), (k, k, 5, 4))
  expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(cpu_ops.conv_as_matmul(x, kernel), expected, rtol=1e-5,
                             atol=1e-5)


def xla_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', precision='highest',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('shape', [(2, 7, 9, 5), (1, 1, 2, 3)])
def test_kernel_rows_convolution_equals_xla_with_gradients(shape):
  """Outputs, input and kernel gradients, against XLA's convolution at full precision."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], shape)
  kernel = jax.random.normal(keys[1], (3, 3, shape[-1], 4))
  cotangent = jax.random.normal(keys[2], shape[:3] + (4,))
  ours, ours_vjp = jax.vjp(cpu_ops.conv_kernel_rows, x, kernel)
  expected, expected_vjp = jax.vjp(xla_conv, x, kernel)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
  for a, b in zip(ours_vjp(cotangent), expected_vjp(cotangent)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('shape, chosen', [
    ((4, 8, 8, 32), 'conv_kernel_rows'),  # 16-64 channels.
    ((4, 7, 9, 64), 'conv_kernel_rows'),
    ((4, 8, 8, 128), 'conv_as_matmul'),  # More channels: no gain measured.
    ((4, 8, 8, 8), 'conv_as_matmul')])  # Under 16 channels (conv1_1's 3, say).
def test_conv_builds_less_only_past_the_patch_limit(monkeypatch, shape, chosen):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 16)) / shape[-1]
  calls = []
  for name in ('conv_as_matmul', 'conv_kernel_rows'):
    original = getattr(cpu_ops, name)
    monkeypatch.setattr(cpu_ops, name, lambda *a, f=original, n=name: calls.append(n) or f(*a))
  np.testing.assert_allclose(cpu_ops.conv(x, kernel), xla_conv(x, kernel), rtol=1e-4,
                             atol=1e-4)
  assert calls == ['conv_as_matmul']  # Under the limit: the plain patches.
  monkeypatch.setattr(cpu_ops, 'PATCH_BYTES_LIMIT', 0)
  np.testing.assert_allclose(cpu_ops.conv(x, kernel), xla_conv(x, kernel), rtol=1e-4,
                             atol=1e-4)
  assert calls[1:] == [chosen]
  calls.clear()
  cpu_ops.conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert calls == ['conv_as_matmul']  # bfloat16 keeps the patches (no new round-off).
