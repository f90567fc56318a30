"""Tests for vgg_jax.features: named activations, perceptual distance, Gram, style loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import run_helpers
from vgg_jax import features
from vgg_jax import models
from vgg_jax.models import layers


def tiny(variant='A', batch_norm=False, dtype=jnp.float32, conv_impl='auto'):
  model = models.VGG(variant=variant, width=0.125, fc_width=32, num_classes=10, image_size=32,
                     batch_norm=batch_norm, dtype=dtype, conv_impl=conv_impl)
  variables = models.init_variables(model, jax.random.key(0))
  if batch_norm:  # Running statistics other than 0 / 1, so that using them shows.
    rng = np.random.default_rng(0)
    variables['batch_stats'] = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), jnp.float32),
        variables['batch_stats'])
  return model, variables


def images(shape=(2, 32, 32, 3), seed=1):
  return jax.random.normal(jax.random.key(seed), shape) * 60.0


def test_feature_names_follow_the_release():
  assert models.feature_names('D')[:5] == ('conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1')
  assert models.feature_names('D')[-5:] == ('fc6', 'relu6', 'fc7', 'relu7', 'fc8')
  assert 'conv3_3' in models.feature_names('D') and 'conv3_4' in models.feature_names('E')
  assert models.feature_names('A-LRN')[2] == 'norm1'
  assert models.feature_names('B', batch_norm=True)[:3] == ('conv1_1', 'bn1_1', 'relu1_1')
  assert len([n for n in models.feature_names('E') if n.startswith('pool')]) == 5


@pytest.mark.parametrize('variant,batch_norm', [('A-LRN', False), ('A', True)])
def test_fc8_at_the_training_size_equals_the_logits(variant, batch_norm):
  model, variables = tiny(variant, batch_norm)
  x = images()
  got = features.extract(model, variables, x, ['fc8', 'relu6', 'pool5'])
  np.testing.assert_allclose(got['fc8'][:, 0, 0], run_helpers.apply(model, variables, x), rtol=1e-5,
                             atol=1e-5)
  assert got['relu6'].shape == (2, 1, 1, 32) and float(got['relu6'].min()) >= 0
  assert got['pool5'].shape == (2, 1, 1, 64)


def test_conv_and_relu_are_the_layer_outputs():
  model, variables = tiny('A')
  x = images()
  got = features.extract(model, variables, x, ('conv1_1', 'relu1_1', 'pool1', 'conv2_1'))
  kernel, bias = (variables['params']['conv1_1'][k] for k in ('kernel', 'bias'))
  conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias
  np.testing.assert_allclose(got['conv1_1'], conv, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(got['relu1_1'], jax.nn.relu(got['conv1_1']), rtol=1e-6)
  np.testing.assert_array_equal(got['pool1'], layers.max_pool_2x2(got['relu1_1'], 'xla'))
  assert got['conv2_1'].shape == (2, 16, 16, 16)


def test_batch_norm_features_use_the_running_statistics():
  model, variables = tiny('A', batch_norm=True)
  got = features.extract(model, variables, images(), ['conv1_1', 'bn1_1'])
  stats, affine = variables['batch_stats']['bn1_1'], variables['params']['bn1_1']
  expected = ((got['conv1_1'] - stats['mean']) / np.sqrt(stats['var'] + 1e-5) *
              affine['scale'] + affine['bias'])
  np.testing.assert_allclose(got['bn1_1'], expected, rtol=1e-5, atol=1e-4)


def test_only_the_layers_up_to_the_deepest_are_computed():
  model, variables = tiny('B')
  # Without the parameters of conv3_1 onwards, pool2 still computes: nothing later is run.
  early = {name: p for name, p in variables['params'].items()
           if name in ('conv1_1', 'conv1_2', 'conv2_1', 'conv2_2')}
  got = features.extract(model, {'params': early}, images(), ['pool2', 'relu1_1'])
  assert set(got) == {'pool2', 'relu1_1'} and got['pool2'].shape == (2, 8, 8, 16)
  with pytest.raises(Exception, match='conv3_1'):
    features.extract(model, {'params': early}, images(), ['conv3_1'])


def test_any_image_size_and_clear_errors():
  model, variables = tiny('A')
  got = features.extract(model, variables, images((1, 40, 72, 3)), ['pool5', 'conv5_2'])
  assert got['conv5_2'].shape == (1, 2, 4, 64) and got['pool5'].shape == (1, 1, 2, 64)
  fc = features.extract(model, variables, images((1, 64, 96, 3)), ['fc7'])
  assert fc['fc7'].shape == (1, 2, 3, 32)  # fc6 runs as a 1x1-window conv over 2x3.
  with pytest.raises(ValueError, match=r"\['conv3_3'\] are not in VGG-A.*conv3_2, relu3_2"):
    features.extract(model, variables, images(), ['conv3_3'])
  early = features.extract(model, variables, images((1, 16, 24, 3)), ['conv1_1', 'relu5_2'])
  assert early['relu5_2'].shape == (1, 1, 1, 64)  # Four pools: 16 px suffice.
  with pytest.raises(ValueError, match='pool5 needs images of at least 32x32, got 24x40'):
    features.extract(model, variables, images((1, 24, 40, 3)), ['conv1_1', 'pool5'])
  with pytest.raises(ValueError, match='conv5_1 needs images of at least 16x16, got 8x40'):
    features.extract(model, variables, images((1, 8, 40, 3)), ['conv5_1'])
  big = models.VGG(variant='A', width=0.125, fc_width=32, num_classes=10, image_size=64)
  with pytest.raises(ValueError, match='fc6 .*image_size=64'):
    features.extract(big, models.init_variables(big, jax.random.key(0)), images(), ['fc6'])


def test_matmul_and_xla_paths_give_the_same_features():
  x = images((2, 40, 48, 3))
  got = [features.extract(*tiny('A-LRN', conv_impl=impl), x, ['norm1', 'relu3_2', 'pool5'])
         for impl in ('matmul', 'xla')]
  for name in got[0]:
    np.testing.assert_allclose(got[0][name], got[1][name], rtol=1e-4, atol=1e-3)


def test_jit_and_gradients_with_respect_to_the_images():
  model, variables = tiny('A', batch_norm=True)
  x, target = images(), images(seed=2)
  distance = jax.jit(lambda a, b: features.perceptual_distance(
      model, variables, a, b, {'relu2_1': 1.0, 'relu4_2': 0.5}).sum())
  grad = jax.grad(distance)(x, target)
  assert grad.shape == x.shape and np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0
  # A step against the gradient lowers the distance.
  step = 1e-2 * float(distance(x, target)) / float(jnp.sum(grad * grad))
  assert float(distance(x - step * grad, target)) < float(distance(x, target))


def test_perceptual_distance_is_the_weighted_sum_of_feature_mses():
  model, variables = tiny('A')
  x, y = images(), images(seed=2)
  a, b = (features.extract(model, variables, v, ['relu1_1', 'relu3_2']) for v in (x, y))
  expected = (2.0 * np.mean((a['relu1_1'] - b['relu1_1'])**2, axis=(1, 2, 3)) +
              0.5 * np.mean((a['relu3_2'] - b['relu3_2'])**2, axis=(1, 2, 3)))
  got = features.perceptual_distance(model, variables, x, y, {'relu1_1': 2.0, 'relu3_2': 0.5})
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  np.testing.assert_array_equal(features.perceptual_distance(model, variables, x, x,
                                                             ['relu1_1']), [0.0, 0.0])


def test_srgan_loss_is_ledig_et_al_vgg54():
  """1 / (W H) sum_{x,y} ||phi(x) - phi(y)||^2 at relu5_4 of VGG-19, maps scaled by 1/12.75."""
  model, variables = tiny('E')
  x, y = images(), images(seed=2)
  both = features.extract(model, variables, jnp.concatenate([x, y]), ['relu5_4'])['relu5_4']
  a, b = np.asarray(both[:2], np.float64), np.asarray(both[2:], np.float64)
  assert a.shape == (2, 2, 2, 64)  # Four pools: W = H = 2 at 32 px.
  expected = np.sum((a / 12.75 - b / 12.75)**2, axis=(1, 2, 3)) / (2 * 2)
  got = features.srgan_loss(model, variables, x, y)
  assert got.shape == (2,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  plain = features.srgan_loss(model, variables, x, y, feature_scale=1.0)
  np.testing.assert_allclose(plain, expected * 12.75**2, rtol=1e-4)
  vgg22 = features.srgan_loss(model, variables, x, y, layer='relu2_2')
  assert vgg22.shape == (2,) and np.all(np.asarray(vgg22) > 0)
  with pytest.raises(ValueError, match=r"\['relu5_4'\] are not in VGG-D"):
    features.srgan_loss(*tiny('D'), x, y)


def test_gram_and_style_loss_are_gatys_formulas():
  rng = np.random.default_rng(0)
  f, a = rng.normal(size=(2, 5, 6, 4)), rng.normal(size=(1, 5, 6, 4))
  gram = features.gram_matrix(jnp.asarray(f, jnp.float32))
  flat = f.reshape(2, 30, 4)
  np.testing.assert_allclose(gram, np.einsum('bmc,bmd->bcd', flat, flat) / 30, rtol=1e-5)
  # E_l = 1 / (4 N^2 M^2) * sum((G - A)^2) with unnormalised G = F^T F, N = 4, M = 30.
  g_raw = np.einsum('bmc,bmd->bcd', flat, flat)
  a_raw = np.einsum('bmc,bmd->bcd', a.reshape(1, 30, 4), a.reshape(1, 30, 4))
  expected = 3.0 * np.sum((g_raw - a_raw)**2, axis=(1, 2)) / (4 * 4**2 * 30**2)
  got = features.style_loss({'x': gram}, {'x': features.gram_matrix(jnp.asarray(a, jnp.float32))},
                            {'x': 3.0})
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_style_loss_of_the_style_images_own_grams_is_zero():
  model, variables = tiny('A')
  feats = features.extract(model, variables, images(), ['relu1_1', 'relu3_2'])
  targets = {name: features.gram_matrix(f) for name, f in feats.items()}
  assert targets['relu3_2'].shape == (2, 32, 32)
  np.testing.assert_array_equal(features.style_loss(targets, targets), [0.0, 0.0])


def test_bfloat16_features_and_losses():
  model32, variables = tiny('A')
  model16 = models.VGG(variant='A', width=0.125, fc_width=32, num_classes=10, image_size=32,
                       dtype=jnp.bfloat16)
  x, y = images(), images(seed=2)
  f16 = features.extract(model16, variables, x, ['relu3_2'])['relu3_2']
  assert f16.dtype == jnp.bfloat16
  gram = features.gram_matrix(f16)
  assert gram.dtype == jnp.float32
  d32 = features.perceptual_distance(model32, variables, x, y, ['relu3_2'])
  d16 = features.perceptual_distance(model16, variables, x, y, ['relu3_2'])
  assert d16.dtype == jnp.float32
  np.testing.assert_allclose(d16, d32, rtol=5e-2)
  grad = jax.grad(lambda v: features.perceptual_distance(model16, variables, v, y,
                                                         ['relu3_2']).sum())(x)
  assert np.all(np.isfinite(np.float32(grad)))
