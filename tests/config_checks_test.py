"""Tests for vgg_jax.training.config_checks: every shipped config passes, bad fields are named."""

import os

import pytest

from experiments.configs import cifar10
from experiments.configs import digits
from experiments.configs import fake_data_benchmark
from experiments.configs import finetune
from experiments.configs import image_folder
from experiments.configs import imagenet
import run_helpers
from vgg_jax import models
from vgg_jax.training import config_checks
from vgg_jax.training import train


@pytest.mark.parametrize('make', [
    digits.get_config, imagenet.get_config, cifar10.get_config,
    fake_data_benchmark.get_config, lambda: image_folder.get_config('/data/cats_vs_dogs'),
    lambda: finetune.get_config('small,E')])
def test_shipped_configs_pass(make):
  config = make()
  if config.data.source == 'folder' and not config.data.folder:  # Given on the command line.
    config.data.folder = '/data/cats_vs_dogs'
  config_checks.check_train_config(config)


@pytest.mark.parametrize('overrides, message', [
    ({'model.variant': 'F'}, r"config.model.variant='F': must be one of"),
    ({'model.dtype': 'int8'}, r"config.model.dtype='int8': must be one of"),
    ({'model.pool_impl': 'avg'}, r"config.model.pool_impl='avg': must be one of"),
    ({'model.width': 0.0}, r'config.model.width=0.0: must be > 0'),
    ({'model.image_size': 16}, r'config.model.image_size=16: must be at least 32'),
    ({'data.source': 'csv'}, r"config.data.source='csv': must be one of"),
    ({'data.scale_min': 24}, r'config.data.scale_min=24: the training scale S must be at least'),
    ({'data.scale_max': 30}, r'config.data.scale_max=30: must be at least data.scale_min=32'),
    ({'data.eval_scale': 30}, r'config.data.eval_scale=30: the test scale Q must be at least'),
    ({'model.head_width': 0}, r'config.model.head_width=0: must be a positive integer'),
    ({'model.num_classes': -1}, r'config.model.num_classes=-1: must be a class count'),
    ({'optimizer.schedule': 'linear'}, r"config.optimizer.schedule='linear': must be one of"),
    ({'optimizer.momentum': 1.5}, r'config.optimizer.momentum=1.5: must be in \[0, 1\)'),
    ({'optimizer.plateau_min_delta': -0.1}, r'config.optimizer.plateau_min_delta=-0.1: must be'),
    ({'global_batch_size': 0}, r'config.global_batch_size=0: must be a positive integer'),
    ({'eval_every_steps': -5}, r'config.eval_every_steps=-5: must be a positive integer'),
    ({'init_from': 'vgg17'}, r"config.init_from='vgg17': must be a run or import directory, "
     r'given as a path \(\./DIR for one here\), or named weights: vgg11, vgg11_bn'),
    ({'init_from': 'vgg19'}, r"config.model.variant='A': must be 'E', the variant of "
     r"init_from='vgg19'"),
    ({'init_from': 'vgg11_bn'}, r'config.model.batch_norm=False: must be True'),
])
def test_bad_field_is_named_and_nothing_is_written(tmp_path, overrides, message):
  config = run_helpers.tiny_config(**overrides)
  with pytest.raises(ValueError, match=message):
    config_checks.check_train_config(config)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_folder_source_needs_its_root():
  config = run_helpers.tiny_config(**{'data.source': 'folder', 'data.folder': ''})
  with pytest.raises(ValueError, match="config.data.folder='': must name the image folder"):
    config_checks.check_train_config(config)


def test_a_config_stored_before_the_later_fields_still_passes():
  config = run_helpers.tiny_config()
  del config.model['pool_impl']
  del config.data['device_window']
  config_checks.check_train_config(config)
  assert models.create_model(config.model).pool_impl == 'auto'


def test_a_missing_field_is_named():
  config = run_helpers.tiny_config()
  del config.data['pca_stddev']
  with pytest.raises(ValueError, match='config.data.pca_stddev is missing'):
    config_checks.check_train_config(config)
