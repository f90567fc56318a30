"""Tests for vgg_jax.data.imagenet_classes: the shipped table equals what the packages hold."""

import importlib.resources

import numpy as np
import pytest

from vgg_jax.data import imagenet_classes


def test_ids_are_tfds_imagenet2012_labels_in_order():
  text = (importlib.resources.files('tensorflow_datasets') / 'datasets' / 'imagenet2012' /
          'labels.txt').read_text()
  assert imagenet_classes.wnids() == [line.strip() for line in text.splitlines() if line.strip()]


def test_names_are_torchvisions_categories_in_order():
  meta = pytest.importorskip('torchvision.models._meta', reason='needs torchvision')
  categories = meta._IMAGENET_CATEGORIES  # pylint: disable=protected-access
  assert [name for _, name in imagenet_classes.classes()] == categories


def test_describe_and_decode():
  assert imagenet_classes.describe('n02099601') == 'golden retriever (n02099601)'
  assert imagenet_classes.describe('cat') == 'cat'  # A folder's class stays as it is.
  p = np.full((2, 1000), 1e-4, np.float32)
  p[0, 207], p[0, 1], p[1, 0] = 0.7, 0.2, 0.9
  rows = imagenet_classes.decode(p, k=2)
  assert rows[0] == [('n02099601', 'golden retriever', pytest.approx(0.7)),
                     ('n01443537', 'goldfish', pytest.approx(0.2))]
  assert rows[1][0][:2] == ('n01440764', 'tench') and len(rows[1]) == 2
  assert imagenet_classes.decode(p[0], k=1) == [rows[0][:1]]
  with pytest.raises(ValueError, match=r'\[B, 1000\]'):
    imagenet_classes.decode(np.zeros((2, 10)))
