"""Tests for vgg_jax.data.sources on data the tests make or packages ship."""

import pytest

import data_helpers
from vgg_jax.data import sources


def test_digits_split_is_fixed_stratified_and_disjoint():
  train = sources.load_digits_source('train')
  test = sources.load_digits_source('test')
  assert train.num_examples + test.num_examples == 1797
  train_labels = [int(ex['label']) for ex in train.make_dataset()]
  test_labels = [int(ex['label']) for ex in test.make_dataset()]
  # Stratified: every class's share of the test set within a point of 25%.
  for digit in range(10):
    share = test_labels.count(digit) / (test_labels.count(digit) + train_labels.count(digit))
    assert abs(share - 0.25) < 0.02
  again = sources.load_digits_source('test')
  assert [int(ex['label']) for ex in again.make_dataset()] == test_labels
  with pytest.raises(ValueError, match="not 'validation'"):
    sources.load_digits_source('validation')


def test_two_processes_see_disjoint_shards_covering_the_split(folder):
  for source in ('digits', 'folder'):
    config = data_helpers.data_config(source=source, folder=folder)
    split = 'train' if source == 'digits' else 'validation'
    shards = [sources.load_source(config, split, i, 2) for i in range(2)]
    whole = sources.load_source(config, split)
    describe = lambda s: [s.describe(i) for i in range(s.num_examples)]
    a, b = describe(shards[0]), describe(shards[1])
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(describe(whole))
    assert abs(len(a) - len(b)) <= 1


def test_tfds_not_prepared_says_what_to_do(tmp_path):
  config = data_helpers.data_config(source='tfds', name='imagenet2012', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    sources.load_source(config, 'train')
  message = str(error.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert 'tfds build imagenet2012' in message and str(tmp_path) in message
  config = data_helpers.data_config(source='tfds', name='cifar10', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match='download=True'):
    sources.load_source(config, 'train')


def test_tfds_unknown_split(tmp_path):
  config = data_helpers.data_config(source='tfds', name='cifar10', data_dir=str(tmp_path))
  with data_helpers.mock_tfds('cifar10', tmp_path, {'train': 4, 'test': 4}, 4):
    with pytest.raises(ValueError, match="no split 'validation'; it has"):
      sources.load_source(config, 'validation')


def test_bad_folder_layouts_name_the_problem(tmp_path):
  (tmp_path / 'train' / 'cat').mkdir(parents=True)
  config = data_helpers.data_config(source='folder', folder=str(tmp_path))
  with pytest.raises(ValueError, match=f'Class folder {tmp_path}/train/cat holds no images'):
    sources.load_source(config, 'train')
  with pytest.raises(ValueError, match=r"Split 'validation' not found: .*found in .*\['train'\]"):
    sources.load_source(config, 'validation')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='has no class folders'):
    sources.load_source(data_helpers.data_config(source='folder', folder=str(tmp_path)), 'empty')


def test_unknown_source_names_the_choices():
  with pytest.raises(ValueError, match="source='csv' is not one of"):
    sources.load_source(data_helpers.data_config(source='csv'), 'train')
