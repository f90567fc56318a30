"""Tests for vgg_jax.evaluation.views: the test views, shape buckets with exact masks."""

import itertools
import os

import jax
import numpy as np
import pytest

from vgg_jax.evaluation import views
from vgg_jax import models


def test_multi_crop_views_count_and_offsets():
  image = np.arange(40 * 50 * 3, dtype=np.float32).reshape(40, 50, 3)
  crops = views.multi_crop_views(image, image_size=32)
  assert crops.shape == (50, 32, 32, 3)
  offsets = views.multi_crop_offsets(40, 50, 32)
  assert offsets[0] == (0, 0) and offsets[-1] == (8, 18) and offsets[12] == (4, 9)
  np.testing.assert_array_equal(crops[24], image[8:40, 18:50])
  np.testing.assert_array_equal(crops[25], image[0:32, 0:32][:, ::-1])
  np.testing.assert_array_equal(
      views.multi_crop_views(image, image_size=32, flip=False), crops[:25])


def random_predictor(num_classes=10):
  model = models.VGG(variant='A', width=1 / 16, fc_width=32, image_size=32,
                     num_classes=num_classes)
  params = models.init_variables(model, jax.random.key(0))['params']
  return views.Predictor(model, {'params': params}, batch_size=16)


def test_dense_equals_flip_averaged_centre_crop_on_square_images_at_q_equal_crop():
  predictor = random_predictor()
  images = list(np.random.default_rng(0).normal(0, 50, (5, 32, 32, 3)).astype(np.float32))
  dense = views.posteriors_at_scale(predictor, images, 'dense', 32)
  single = views.posteriors_at_scale(predictor, images, 'single', 32)
  flipped = views.posteriors_at_scale(predictor, [im[:, ::-1] for im in images],
                                         'single', 32)
  np.testing.assert_allclose(dense, 0.5 * (single + flipped), rtol=1e-5, atol=1e-6)
  assert not np.allclose(single, flipped, atol=1e-4)  # The flip matters for random nets.


def test_dense_posterior_is_flip_invariant_and_handles_mixed_shapes():
  predictor = random_predictor()
  rng = np.random.default_rng(1)
  images = [rng.normal(0, 50, shape).astype(np.float32)
            for shape in ((40, 56, 3), (40, 40, 3), (40, 56, 3))]
  dense = views.posteriors_at_scale(predictor, images, 'dense', 32)
  flipped = views.posteriors_at_scale(predictor, [im[:, ::-1] for im in images], 'dense', 32)
  np.testing.assert_allclose(dense, flipped, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-5)
  # Each image's posterior is its own, whatever shares its batch.
  alone = views.posteriors_at_scale(predictor, images[1:2], 'dense', 32)
  np.testing.assert_allclose(dense[1:2], alone, rtol=1e-5, atol=1e-6)


def test_multicrop_averages_fifty_views():
  predictor = random_predictor()
  image = np.random.default_rng(2).normal(0, 50, (40, 48, 3)).astype(np.float32)
  crops = views.multi_crop_views(image, image_size=32)
  assert len(crops) == 50
  expected = predictor(crops).mean(0)
  got = views.posteriors_at_scale(predictor, [image], 'multicrop', 32)[0]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  both = views.posteriors_at_scale(predictor, [image], 'dense+multicrop', 32)[0]
  dense = views.posteriors_at_scale(predictor, [image], 'dense', 32)[0]
  np.testing.assert_allclose(both, 0.5 * (dense + expected), rtol=1e-5, atol=1e-6)


def test_flip_off_uses_only_unflipped_views():
  predictor = random_predictor()
  rng = np.random.default_rng(4)
  images = [rng.normal(0, 50, (40, 48, 3)).astype(np.float32)]
  dense = views.posteriors_at_scale(predictor, images, 'dense', 32, flip=False)
  np.testing.assert_allclose(dense, predictor(np.stack(images), dense=True), rtol=1e-5, atol=1e-6)
  crops = views.multi_crop_views(images[0], image_size=32)[:25]
  multi = views.posteriors_at_scale(predictor, images, 'multicrop', 32, flip=False)
  np.testing.assert_allclose(multi[0], predictor(crops).mean(0), rtol=1e-5, atol=1e-6)




def random_variables(model, seed=0):
  """Fresh variables with every bias and BatchNorm statistic random: zeros beyond an image
  then differ from what a conv or a BatchNorm computes there."""
  variables = models.init_variables(model, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  def randomize(path, x):
    name = jax.tree_util.keystr(path)
    if 'bias' in name or 'mean' in name:
      return rng.uniform(-0.5, 0.5, x.shape).astype(np.float32)
    if 'scale' in name or 'var' in name:
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    return np.asarray(x)
  return jax.tree_util.tree_map_with_path(randomize, variables)


def photos(count, seed=0, low=32, high=80):
  """count images [h, w, 3] of distinct random shapes, odd and even sides, both ways up."""
  rng = np.random.default_rng(seed)
  shapes = set()
  while len(shapes) < count:
    shapes.add((int(rng.integers(low, high)), int(rng.integers(low, high))))
  return [rng.normal(0, 50, shape + (3,)).astype(np.float32) for shape in sorted(shapes)]


def check_buckets_equal_shapes(variant, batch_norm, conv_impl, flip, images):
  model = models.VGG(variant=variant, width=1 / 16, fc_width=16, num_classes=5,
                     image_size=32, batch_norm=batch_norm, conv_impl=conv_impl)
  predictor = views.Predictor(model, random_variables(model), batch_size=8)
  bucketed = predictor.dense(images, flip)
  by_shape = predictor.dense(images, flip, buckets=False)
  np.testing.assert_allclose(bucketed, by_shape, rtol=1e-4, atol=2e-6)
  assert not np.allclose(by_shape[0], by_shape[1], atol=1e-3)  # Images do differ.


def test_buckets_equal_the_per_shape_path_on_many_shapes():
  """24 shapes (odd sides: pools floor them) in at most 9 buckets; every posterior as before
  on every fourth one (6 shapes in 4 buckets: the per-shape path compiles once per shape,
  so more is slow; the slow tier runs every variant and both conv paths)."""
  images = photos(24)
  assert len({im.shape for im in images}) == 24
  assert len({views.bucket_shape(*im.shape[:2]) for im in images}) <= 9
  assert len({views.bucket_shape(*im.shape[:2]) for im in images[::4]}) >= 4
  check_buckets_equal_shapes('A-LRN', True, 'xla', True, images[::4])


# The slow tier's cells: (variant, batch_norm, conv_impl, flip). Each variant runs twice,
# the second cell the first's opposite in the other three values; the first cells follow a
# 4-row orthogonal array, so every pair of values of any two factors meets in 12 cells
# (test_the_bucket_cells_cover_every_pair_of_values). BUCKET_MATRIX=full runs all 48.
_FIRST = [(False, 'xla', False), (False, 'matmul', True), (True, 'xla', True),
          (True, 'matmul', False)]
_OTHER = {'xla': 'matmul', 'matmul': 'xla'}
PAIRWISE = []
for _i, _variant in enumerate(models.CONFIGS):
  _batch_norm, _conv_impl, _flip = _FIRST[_i % 4]
  PAIRWISE += [(_variant, _batch_norm, _conv_impl, _flip),
               (_variant, not _batch_norm, _OTHER[_conv_impl], not _flip)]
BUCKET_CELLS = (list(itertools.product(models.CONFIGS, [False, True], ['xla', 'matmul'],
                                       [False, True]))
                if os.environ.get('BUCKET_MATRIX') == 'full' else PAIRWISE)


def test_the_bucket_cells_cover_every_pair_of_values():
  values = (list(models.CONFIGS), [False, True], ['xla', 'matmul'], [False, True])
  for a, b in itertools.combinations(range(4), 2):
    assert {(cell[a], cell[b]) for cell in PAIRWISE} == set(
        itertools.product(values[a], values[b])), (a, b)
  assert len(PAIRWISE) == 2 * len(models.CONFIGS) == len(set(PAIRWISE))


@pytest.mark.slow
@pytest.mark.parametrize('variant, batch_norm, conv_impl, flip', BUCKET_CELLS,
                         ids=['-'.join(map(str, cell)) for cell in BUCKET_CELLS])
def test_buckets_equal_the_per_shape_path(variant, batch_norm, conv_impl, flip):
  """Every variant, with and without BatchNorm, both conv paths, flips on and off: every
  pair of those values in one cell or more (all combinations with BUCKET_MATRIX=full)."""
  check_buckets_equal_shapes(variant, batch_norm, conv_impl, flip, photos(4, seed=1))


def test_compilations_are_bounded_by_buckets_and_batch_sizes():
  model = models.VGG(variant='A', width=1 / 16, fc_width=16, num_classes=5, image_size=32)
  predictor = views.Predictor(model, random_variables(model), batch_size=16)
  images = photos(40, seed=2, low=40, high=64)  # Sides 40..63: every image in bucket 64x64.
  before = views._posteriors._cache_size()  # pylint: disable=protected-access
  first = predictor.dense(images[:25])
  rest = predictor.dense(images[25:])
  compiled = views._posteriors._cache_size() - before  # pylint: disable=protected-access
  bound = 1 * len(predictor.batch_sizes)  # One bucket.
  assert predictor.batch_sizes == (8, 16) and compiled <= bound
  assert {shape for shape, *_ in predictor.programs} <= {(8, 64, 64, 3), (16, 64, 64, 3)}
  np.testing.assert_allclose(np.concatenate([first, rest]).sum(1), 1.0, rtol=1e-5)


def test_padding_rows_and_batch_sizes_change_no_posterior():
  model = models.VGG(variant='A', width=1 / 16, fc_width=16, num_classes=5, image_size=32)
  variables = random_variables(model)
  images = photos(5, seed=3, low=32, high=60)
  together = views.Predictor(model, variables, batch_size=32).dense(images)
  alone = [views.Predictor(model, variables, batch_size=8).dense([im])[0] for im in images]
  np.testing.assert_allclose(together, np.stack(alone), rtol=1e-5, atol=1e-6)


def test_batch_sizes_double_from_the_device_count():
  assert views.batch_sizes(64, 8) == (8, 16, 32, 64)
  assert views.batch_sizes(24, 8) == (8, 16, 24)
  assert views.batch_sizes(8, 8) == (8,)
  assert views.bucket_shape(33, 64) == (64, 64) and views.bucket_shape(32, 65) == (32, 96)


def test_views_per_scale_without_flips():
  assert views.views_per_scale('dense+multicrop', flip=False) == 26
  assert views.views_per_scale('single', flip=False) == 1
  assert views.views_per_scale('multicrop') == 50
