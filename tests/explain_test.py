"""vgg_jax.evaluation.explain: Grad-CAM points at the evidence (and a random net's does not); saliency."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import run_helpers
from vgg_jax.evaluation import explain
from vgg_jax import models

SIZE, PATCH = 64, 16
COLOURS = np.asarray([[230, 40, 40], [40, 200, 40], [40, 60, 230]], np.float32)


def patch_images(n, seed):
  """Images whose class is the colour of a 16x16 patch at a random place, on grey clutter.

  Returns (images minus 128, labels, the patches' top-left corners).
  """
  rng = np.random.default_rng(seed)
  images = np.ones((n, SIZE, SIZE, 3)) * rng.uniform(60, 200, (n, 1, 1, 1))
  for image in images:  # Grey rectangles of random shades: edges everywhere, no colour.
    for _ in range(12):
      (h, w), (y, x) = rng.integers(4, 20, 2), rng.integers(0, SIZE - 4, 2)
      image[y:y + h, x:x + w] = rng.uniform(0, 255)
  images += rng.normal(0, 12, images.shape)
  labels = rng.integers(0, len(COLOURS), n)
  corners = rng.integers(0, SIZE - PATCH + 1, (n, 2))
  for image, label, (y, x) in zip(images, labels, corners):
    image[y:y + PATCH, x:x + PATCH] = COLOURS[label] + rng.normal(0, 12, (PATCH, PATCH, 3))
  return np.clip(images, 0, 255).astype(np.float32) - 128.0, labels, corners


def peak_inside(maps, corners) -> np.ndarray:
  """Whether each map's maximum lies inside its image's patch."""
  peaks = [np.unravel_index(np.argmax(m), m.shape) for m in np.asarray(maps)]
  return np.asarray([y <= py < y + PATCH and x <= px < x + PATCH
                     for (py, px), (y, x) in zip(peaks, corners)])


def tiny(batch_norm=False, width=0.25, size=SIZE):
  model = models.VGG(variant='A', width=width, fc_width=64, num_classes=3, image_size=size,
                     dropout_rate=0.0, batch_norm=batch_norm)
  return model, models.init_variables(model, jax.random.key(0))


def small(batch_norm=False):
  """The fast tests' net: 32 px, width 1/8."""
  return tiny(batch_norm, width=0.125, size=32)


def noise(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(0, 60, shape), jnp.float32)


@pytest.mark.slow
def test_gradcam_points_at_the_evidence_and_a_random_net_does_not():
  """Trained on 1,200 generated images (80 Adam steps), tested on 200 others."""
  model, variables = tiny()
  params, tx = variables['params'], optax.adam(1e-3)
  opt_state, (x, y, _) = tx.init(params), patch_images(1200, seed=0)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss(p):
      logits = model.apply({'params': p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(1)
  for _ in range(80):
    batch = rng.integers(0, len(x), 32)
    params, opt_state = step(params, opt_state, x[batch], y[batch])
  test_x, test_y, corners = patch_images(200, seed=99)
  # relu4_2: an 8x8 map at 64 px. The last stage's (relu5_2) is 4x4, cells as big as the
  # patch, so its upsampled maximum sits at a cell centre that can miss a patch it found.
  maps, classes, probs = explain.gradcam(model, {'params': params}, test_x, layer='relu4_2')
  correct = np.asarray(classes) == test_y
  assert correct.mean() >= 0.9 and maps.shape == (200, SIZE, SIZE)
  np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, rtol=1e-5)
  trained = peak_inside(maps, corners)[correct].mean()
  # Adebayo et al.'s sanity check: the same method on a re-initialised net.
  random_params = models.init_variables(model, jax.random.key(7))['params']
  random_maps, _, _ = explain.gradcam(model, {'params': random_params}, test_x,
                                      classes=test_y, layer='relu4_2')
  untrained = peak_inside(random_maps, corners)[correct].mean()
  assert trained >= 0.9 and untrained <= 0.5, (trained, untrained)
  saliency, _, _ = explain.saliency(model, {'params': params}, test_x)
  assert peak_inside(saliency, corners)[correct].mean() >= 0.8


def test_default_layer_is_the_last_conv_stage_relu():
  assert explain.default_layer(models.VGG(variant='D')) == 'relu5_3'
  assert explain.default_layer(models.VGG(variant='E', batch_norm=True)) == 'relu5_4'
  assert explain.default_layer(models.VGG(variant='A-LRN', head='small')) == 'relu5_2'


def test_batch_norm_net_any_size_and_clear_errors():
  model, variables = small(batch_norm=True)
  rng = np.random.default_rng(0)
  variables['batch_stats'] = jax.tree_util.tree_map(  # Statistics other than 0 / 1.
      lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32),
      variables['batch_stats'])
  image, wide = noise((1, 32, 32, 3), 3), noise((1, 45, 69, 3), 4)
  maps, classes, probs = explain.gradcam(model, variables, wide, dense=True)
  logits = run_helpers.apply(model, variables, wide, dense=True)
  assert maps.shape == (1, 45, 69) and int(classes[0]) == int(jnp.argmax(logits[0]))
  np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=1e-5)
  assert 0.0 <= float(maps.min()) and float(maps.max()) == pytest.approx(1.0)
  chosen, picked, _ = explain.gradcam(model, variables, wide, classes=[2], dense=True,
                                      layer='pool3')
  assert chosen.shape == (1, 45, 69) and int(picked[0]) == 2
  saliency, _, _ = explain.saliency(model, variables, image)  # A crop: the FC head.
  assert saliency.shape == (1, 32, 32) and float(saliency.max()) == pytest.approx(1.0)
  with pytest.raises(ValueError, match=r"\['relu5_3'\] are not in VGG-A_bn"):
    explain.gradcam(model, variables, image, layer='relu5_3')
  with pytest.raises(ValueError, match=r"up to pool5\), not the head's relu6"):
    explain.gradcam(model, variables, image, layer='relu6')
  with pytest.raises(ValueError, match='samples >= 0'):
    explain.saliency(model, variables, image, samples=-1)


def test_gradcam_weights_are_the_mean_gradient_of_the_class_score():
  """alpha_k = mean dy^c/dA^k, L = ReLU(sum_k alpha_k A^k), by hand through `start`."""
  model, variables = small()
  image = noise((2, 32, 32, 3), 5)
  got, classes, _ = explain.gradcam(model, variables, image, layer='relu4_2')

  @jax.jit
  def by_hand(variables, image):
    acts = model.apply(variables, image, 'relu4_2', method=models.VGG.features)['relu4_2']
    grads = jax.grad(lambda a: jnp.sum(jnp.take_along_axis(
        model.apply(variables, a, 'relu4_2', method=models.VGG.run_from), classes[:, None], axis=1)))(acts)
    cam = jax.nn.relu(jnp.einsum('bhwk,bk->bhw', acts, grads.mean(axis=(1, 2))))
    cam = jax.image.resize(cam, (2, 32, 32), 'bilinear')
    return cam / cam.max(axis=(1, 2), keepdims=True)

  np.testing.assert_allclose(got, by_hand(variables, image), atol=1e-5)


def test_smoothgrad_without_noise_is_the_plain_gradient():
  model, variables = small()
  image = noise((2, 32, 32, 3), 6)
  plain, classes, _ = explain.saliency(model, variables, image)

  @jax.jit
  def by_hand(variables, image):
    grads = jax.grad(lambda x: jnp.sum(jnp.take_along_axis(
        model.apply(variables, x), classes[:, None], axis=1)))(image)
    top = jnp.abs(grads).max(axis=-1)
    return top / top.max(axis=(1, 2), keepdims=True)

  np.testing.assert_allclose(plain, by_hand(variables, image), atol=1e-6)
  silent, _, _ = explain.saliency(model, variables, image, samples=4, noise=0.0)
  np.testing.assert_allclose(silent, plain, atol=1e-6)
  noisy, _, _ = explain.saliency(model, variables, image, samples=4, noise=0.2)
  assert np.abs(np.asarray(noisy) - np.asarray(plain)).max() > 0.01
