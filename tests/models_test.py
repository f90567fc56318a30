"""Tests for vgg_jax.models: Table 1 structure, Table 2 sizes, LRN, dense evaluation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import run_helpers
from vgg_jax import models
from vgg_jax.models import cpu_ops
from vgg_jax.models import layers
from vgg_jax.models import table2

# PAPER.md Table 2, exact counts at 224x224x3 with 1000 classes.
EXACT_PARAMS = {
    'A': 132_863_336, 'A-LRN': 132_863_336, 'B': 133_047_848,
    'C': 133_638_952, 'D': 138_357_544, 'E': 143_667_240,
}
WEIGHT_LAYERS = {'A': 11, 'A-LRN': 11, 'B': 13, 'C': 16, 'D': 16, 'E': 19}
TINY = dict(width=1 / 16, fc_width=32, image_size=32, num_classes=10)


@pytest.mark.parametrize('variant', models.CONFIGS)
def test_param_count_matches_table2(variant):
  shapes = models.param_shapes(models.VGG(variant=variant))
  assert models.count_params(shapes) == EXACT_PARAMS[variant]


# torchvision's documented sizes of vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn.
TORCHVISION_BN_PARAMS = {'A': 132_868_840, 'B': 133_053_736, 'D': 138_365_992,
                         'E': 143_678_248}


@pytest.mark.parametrize('variant', TORCHVISION_BN_PARAMS)
def test_batch_norm_param_count_matches_torchvision(variant):
  shapes = models.param_shapes(models.VGG(variant=variant, batch_norm=True))
  assert models.count_params(shapes) == TORCHVISION_BN_PARAMS[variant]


def test_table2_prints_the_batch_norm_rows(capsys):
  table2.print_table2()
  out = capsys.readouterr().out
  assert '138,357,544' in out and 'D_bn' in out and '138,365,992' in out
  assert out.count('_bn ') == len(models.CONFIGS)


@pytest.mark.parametrize('variant', models.CONFIGS)
def test_weight_layers_and_names(variant):
  shapes = models.param_shapes(models.VGG(variant=variant))
  assert len(shapes) == WEIGHT_LAYERS[variant]
  assert tuple(sorted(shapes)) == tuple(sorted(models.layer_names(variant)))
  assert len(models.layer_names(variant)) == WEIGHT_LAYERS[variant]


def test_config_c_has_1x1_convs_and_d_has_3x3():
  c = models.param_shapes(models.VGG(variant='C'))
  d = models.param_shapes(models.VGG(variant='D'))
  for name in ('conv3_3', 'conv4_3', 'conv5_3'):
    assert c[name]['kernel'].shape[:2] == (1, 1)
    assert d[name]['kernel'].shape[:2] == (3, 3)
  assert d['fc6']['kernel'].shape == (7 * 7 * 512, 4096)
  assert d['conv5_3']['kernel'].shape == (3, 3, 512, 512)


def test_forward_macs_match_paper():
  for variant, (_, gmacs) in table2.PAPER_TABLE2.items():
    assert round(models.forward_macs(variant) / 1e9, 2) == gmacs


def lrn_reference(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """AlexNet LRN written out channel by channel in NumPy."""
  out = np.empty_like(a)
  channels = a.shape[-1]
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    total = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
    out[..., i] = a[..., i] / (k + alpha * total) ** beta
  return out


def test_lrn_matches_numpy_reference():
  # Large activations so the alpha * sum term moves the result far from a / k^beta.
  a = np.random.default_rng(0).uniform(0, 60, size=(2, 3, 4, 11)).astype(np.float32)
  got = np.asarray(layers.local_response_norm(jnp.asarray(a)))
  np.testing.assert_allclose(got, lrn_reference(a), rtol=1e-5)
  caffe_like = a / (1 + 1e-4 / 5 * a**2) ** 0.75  # Not the formula we implement.
  assert not np.allclose(got, caffe_like, rtol=1e-2)


def test_a_lrn_applies_lrn_and_a_does_not():
  images = jnp.ones((1, 32, 32, 3)) * 50
  params = models.init_variables(models.VGG(variant='A', **TINY), jax.random.key(0))
  out_a = run_helpers.apply(models.VGG(variant='A', **TINY), params, images)
  out_lrn = run_helpers.apply(models.VGG(variant='A-LRN', **TINY), params, images)
  assert not np.allclose(out_a, out_lrn)


@pytest.mark.parametrize('variant', models.CONFIGS)
def test_tiny_forward_every_variant(variant):
  model = models.VGG(variant=variant, **TINY)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  # Op by op: the variants share most primitives' shapes, so each compiles once for all.
  variables = model.init(jax.random.key(0), images)
  logits = model.apply(variables, images)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  train_logits = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train_logits, logits)  # Dropout is on in training.


def test_dense_equals_fc_head_at_training_size():
  model = models.VGG(variant='A', width=1 / 16, fc_width=64, num_classes=7)
  images = jax.random.normal(jax.random.key(1), (2, 224, 224, 3))
  variables = models.init_variables(model, jax.random.key(0))
  fc = run_helpers.apply(model, variables, images)
  dense = run_helpers.apply(model, variables, images, dense=True)
  np.testing.assert_allclose(dense, fc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size', [288, 384])
def test_dense_output_shape_on_larger_images(size):
  model = models.VGG(variant='A', width=1 / 16, fc_width=64, num_classes=7)
  variables = models.init_variables(model, jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (2, size, size + 32, 3))
  scores = run_helpers.apply(model, variables, images, dense=True)
  assert scores.shape == (2, 7)
  assert np.all(np.isfinite(scores))


def test_dense_averages_the_score_map():
  # At 64x64 training size the window is 2x2; on a 96x96 image the score map is 2x2.
  model = models.VGG(variant='A', width=1 / 16, fc_width=16, num_classes=5, image_size=64)
  variables = models.init_variables(model, jax.random.key(0))
  images = jax.random.normal(jax.random.key(3), (1, 96, 96, 3))
  features = jax.jit(lambda v: model.apply(v, images, capture_intermediates=True,
                                           method=models.VGG.dense,
                                           mutable=['intermediates']))(variables)[1]
  conv5_2 = features['intermediates']['conv5_2']['__call__'][0]  # Conv output (plus bias).
  pooled = layers.max_pool_2x2(jax.nn.relu(conv5_2), 'xla')  # pool5.
  assert pooled.shape[1:3] == (3, 3)
  expected = []
  for i in range(2):
    for j in range(2):
      window = pooled[:, i:i + 2, j:j + 2, :]
      p = variables['params']
      h = jax.nn.relu(window.reshape(1, -1) @ p['fc6']['kernel'] + p['fc6']['bias'])
      h = jax.nn.relu(h @ p['fc7']['kernel'] + p['fc7']['bias'])
      expected.append(h @ p['fc8']['kernel'] + p['fc8']['bias'])
  dense = run_helpers.apply(model, variables, images, dense=True)
  np.testing.assert_allclose(dense, np.mean(expected, axis=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('batch_norm, head', [
    pytest.param(False, 'fc', marks=pytest.mark.slow), (True, 'small')])
def test_start_runs_on_from_a_layer_to_the_same_logits(batch_norm, head):
  """features(L) then run_from(L) is the whole forward pass, bit for bit."""
  model = models.VGG(variant='A-LRN', width=0.125, fc_width=32, num_classes=5, image_size=32,
                     batch_norm=batch_norm, head=head)
  variables = models.init_variables(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3)) * 50

  @functools.partial(jax.jit, static_argnames='layer')
  def two_halves(variables, x, layer):
    acts = model.apply(variables, x, layer, method=models.VGG.features)[layer]
    return model.apply(variables, acts, layer, method=models.VGG.run_from)

  full = run_helpers.apply(model, variables, x)
  for layer in ('norm1', 'pool3', 'relu5_2'):
    np.testing.assert_array_equal(two_halves(variables, x, layer), full, err_msg=layer)
  with pytest.raises(ValueError, match=r"\['conv5_3'\] are not in VGG-A-LRN"):
    model.apply(variables, x, 'conv5_3', method=models.VGG.run_from)


def test_bfloat16_computation_keeps_float32_params():
  model = models.VGG(variant='B', dtype=jnp.bfloat16, **TINY)
  images = jnp.ones((2, 32, 32, 3))
  variables = models.init_variables(model, jax.random.key(0))
  dtypes = {p.dtype for p in jax.tree_util.tree_leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  _, inter = jax.jit(lambda v: model.apply(v, images, capture_intermediates=True,
                                           mutable=['intermediates']))(variables)
  assert inter['intermediates']['conv2_2']['__call__'][0].dtype == jnp.bfloat16
  assert run_helpers.apply(model, variables, images).dtype == jnp.float32


def test_kernel_init_schemes():
  images = jnp.zeros((1, 32, 32, 3))
  init = lambda model: jax.jit(model.init)(jax.random.key(0), images)['params']
  paper = init(models.VGG(variant='A', kernel_init='paper', width=1 / 8, image_size=32))
  glorot = init(models.VGG(variant='A', width=1 / 8, image_size=32))
  assert abs(float(jnp.std(paper['conv3_1']['kernel'])) - 0.01) < 1e-3
  assert float(jnp.abs(paper['conv3_1']['bias']).max()) == 0.0
  fan_in, fan_out = 3 * 3 * 16, 3 * 3 * 32  # conv3_1 at width 1/8: 16 -> 32 channels.
  glorot_std = np.sqrt(2.0 / (fan_in + fan_out))
  assert abs(float(jnp.std(glorot['conv3_1']['kernel'])) - glorot_std) < 0.1 * glorot_std


@pytest.mark.parametrize('kwargs, message', [
    (dict(variant='F'), "variant='F': must be one of"),
    (dict(num_classes=0), 'num_classes=0: must be a positive integer'),
    (dict(image_size=16), r'image_size=16: must be at least 32 \(five 2x2 pools\)'),
    (dict(kernel_init='he'), "kernel_init='he': must be one of"),
    (dict(width=0), 'width=0: must be > 0'),
    (dict(batch_norm='yes'), "batch_norm='yes': must be True or False"),
])
def test_bad_construction_names_the_value(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.VGG(**kwargs)


def test_bad_inputs_name_the_value():
  model = models.VGG(variant='A', **TINY)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='images are 16x16 but the FC head was built for'):
    model.apply(variables, jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match='at least image_size=32 on each side, got 24x40'):
    model.apply(variables, jnp.zeros((1, 24, 40, 3)), method=models.VGG.dense)
  with pytest.raises(ValueError, match=r'must be \[B, H, W, 3\]'):
    model.apply(variables, jnp.zeros((1, 3, 32, 32)))


@pytest.mark.parametrize('variant', [pytest.param('A-LRN', marks=pytest.mark.slow), 'C'])
def test_matmul_convolution_and_reshape_pool_equal_xla_outputs_and_gradients(variant,
                                                                          monkeypatch):
  # 36x36: odd pooled sizes (18 -> 9 -> 4) exercise the VALID floor of both pools.
  kwargs = dict(variant=variant, width=1 / 16, fc_width=16, num_classes=5, image_size=36)
  xla = models.VGG(conv_impl='xla', pool_impl='xla', **kwargs)
  others = [models.VGG(conv_impl='matmul', **kwargs),  # 'auto' pool: 'reshape', fused.
            models.VGG(conv_impl='xla', pool_impl='reshape', **kwargs)]
  # Moderate inputs: with huge ones LRN drives pre-activations to ~1e-8, where either
  # implementation's round-off flips ReLU masks and the gradients part for that reason.
  images = jax.random.normal(jax.random.key(1), (2, 36, 36, 3)) * 5
  variables = xla.init(jax.random.key(0), images)
  def loss(model, params):
    return jnp.sum(jnp.sin(model.apply({'params': params}, images)))
  # Jitted: one compilation each, where op-by-op dispatch compiled every primitive. A new
  # jit per model, so no trace is reused across the PATCH_BYTES_LIMIT change below.
  def outputs_and_grads(model):
    return jax.jit(lambda p: (model.apply({'params': p}, images),
                              jax.grad(functools.partial(loss, model))(p)))(variables['params'])
  expected_outputs, expected = outputs_and_grads(xla)
  def check(other):
    assert jax.tree_util.tree_map(jnp.shape, variables) == jax.tree_util.tree_map(
        jnp.shape, jax.eval_shape(other.init, jax.random.key(0), images))
    outputs, grads = outputs_and_grads(other)
    np.testing.assert_allclose(outputs, expected_outputs, rtol=1e-4, atol=1e-4)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           grads, expected)
  for other in others:
    check(other)
  # With no patch limit, the 16-32 channel layers take cpu_ops.conv_kernel_rows.
  monkeypatch.setattr(cpu_ops, 'PATCH_BYTES_LIMIT', 0)
  check(models.VGG(conv_impl='matmul', **kwargs))


def test_conv_impl_auto_picks_matmul_on_cpu_and_rejects_unknown():
  assert layers.resolve_conv_impl('auto') == 'matmul'  # Tests run on the CPU backend.
  with pytest.raises(ValueError, match="conv_impl='fft': must be one of"):
    models.VGG(conv_impl='fft')


def test_pool_impl_auto_follows_the_conv_path_and_rejects_unknown():
  assert layers.resolve_pool_impl('auto', 'matmul') == 'reshape'
  assert layers.resolve_pool_impl('auto', 'xla') == 'xla'
  assert layers.resolve_pool_impl('reshape', 'xla') == 'reshape'
  with pytest.raises(ValueError, match="pool_impl='avg': must be one of"):
    models.VGG(pool_impl='avg')


def test_captured_conv_intermediates_are_conv_outputs_on_both_paths():
  kwargs = dict(variant='A-LRN', width=1 / 16, fc_width=16, num_classes=5, image_size=32)
  xla, matmul = (models.VGG(conv_impl=impl, **kwargs) for impl in ('xla', 'matmul'))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3)) * 5
  variables = xla.init(jax.random.key(0), images)
  captured = [m.apply(variables, images, capture_intermediates=True,
                      mutable=['intermediates'])[1]['intermediates'] for m in (xla, matmul)]
  for layer in models.layer_names('A-LRN')[:-3]:
    a, b = (c[layer]['__call__'][0] for c in captured)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # conv1_1's output is the convolution plus bias, before ReLU: it has negative values.
  p = variables['params']['conv1_1']
  expected = jax.lax.conv_general_dilated(images, p['kernel'], (1, 1), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(captured[1]['conv1_1']['__call__'][0], expected + p['bias'],
                             rtol=1e-4, atol=1e-4)
  assert float(captured[1]['conv1_1']['__call__'][0].min()) < 0


def test_frozen_norms_use_their_running_statistics_in_training():
  model = models.VGG(variant='A', width=1 / 16, fc_width=16, num_classes=3, image_size=32,
                     batch_norm=True, frozen_norms=('bn1_1', 'bn2_1'))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3)) * 3
  _, updates = jax.jit(lambda v: model.apply(v, images, train=True, mutable=['batch_stats'],
                                             rngs={'dropout': jax.random.key(2)}))(variables)
  moved = {layer: not np.array_equal(stats['mean'], variables['batch_stats'][layer]['mean'])
           for layer, stats in updates['batch_stats'].items()}
  assert moved == {layer: layer not in ('bn1_1', 'bn2_1') for layer in moved}
  with pytest.raises(ValueError, match=r"frozen_norms must be a tuple of this net's BatchNorm "
                                       r'layers \(none: batch_norm=False\)'):
    models.VGG(variant='A', frozen_norms=('bn1_1',))
  with pytest.raises(ValueError, match=r"got \('bn9_9',\)"):
    models.VGG(variant='A', batch_norm=True, frozen_norms=('bn9_9',))


def test_features_run_on_from_a_layer_as_from_the_image():
  """features(after=L) on L's activations gives what features gives from the image (DISTS
  replaces each pool this way); its size check counts only the pools after L."""
  model = models.VGG(variant='D', **TINY)
  variables = models.init_variables(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (2, 32, 48, 3)) * 50
  names = ('relu2_2', 'relu3_3')
  pooled = model.apply(variables, x, 'pool1', method=models.VGG.features)['pool1']
  middle = model.apply(variables, pooled, names, 'pool1', method=models.VGG.features)
  whole = model.apply(variables, x, names, method=models.VGG.features)
  for name in names:
    np.testing.assert_array_equal(middle[name], whole[name], err_msg=name)
  assert model.check_capture((1, 2, 2, 64), 'relu3_3', after='pool1') == ('relu3_3',)
  with pytest.raises(ValueError, match=r'relu3_3 needs images of at least 2x2, got 1x2'):
    model.check_capture((1, 1, 2, 64), 'relu3_3', after='pool1')
  with pytest.raises(ValueError, match=r"\['relu1_2'\] lie before pool1, where the pass starts"):
    model.apply(variables, pooled, ('relu1_2', 'relu2_2'), 'pool1', method=models.VGG.features)


def test_call_takes_images_and_train_only():
  """One entry per use: dense scores, features and running on from a layer are methods."""
  model = models.VGG(variant='A', **TINY)
  variables = models.init_variables(model, jax.random.key(0))
  images = jnp.zeros((1, 32, 32, 3))
  for option in ({'dense': True}, {'capture': 'conv1_1'}, {'start': 'pool3'},
                 {'valid_sizes': jnp.array([[32, 32]])}):
    with pytest.raises(TypeError, match='unexpected keyword argument'):
      model.apply(variables, images, **option)
  assert set(model.apply(variables, images, ('conv1_1', 'pool5'),
                         method=models.VGG.features)) == {'conv1_1', 'pool5'}
