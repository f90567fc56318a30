"""checkpointing's checks without Orbax runs: the model a meta describes, the log filter."""

import logging as std_logging

import pytest

from vgg_jax import checkpointing

MODEL = {'variant': 'A', 'num_classes': None, 'width': 0.25, 'fc_width': 32, 'image_size': 32,
         'batch_norm': False, 'pool_impl': 'auto'}


def meta_of(model, num_classes=10):
  return checkpointing.make_meta({'model': model}, 8, global_batch_size=16,
                                 num_classes=num_classes, class_names=[])


def test_model_fields_take_the_stored_class_count():
  assert checkpointing.model_fields(meta_of(MODEL)) == dict(MODEL, num_classes=10)


def test_check_compatible_names_each_differing_field():
  checkpointing.check_compatible('run', meta_of(MODEL), MODEL, num_classes=10)
  with pytest.raises(ValueError, match="width: checkpoint 0.25 vs config 0.5.*another"):
    checkpointing.check_compatible('run', meta_of(MODEL), dict(MODEL, width=0.5), 10)


def test_a_meta_stored_before_batch_norm_and_pool_impl_is_upgraded_once():
  old = {k: v for k, v in MODEL.items() if k not in ('batch_norm', 'pool_impl')}
  meta = checkpointing.upgrade_meta(meta_of(old))
  assert meta['config']['model'] == MODEL  # A plain VGG, pooling as the backend chooses.
  checkpointing.check_compatible('run', meta, MODEL, num_classes=10)
  with pytest.raises(ValueError, match='batch_norm: checkpoint False vs config True'):
    checkpointing.check_compatible('run', meta, dict(MODEL, batch_norm=True), 10)


def test_orbax_filter_keeps_other_warnings_and_other_libraries():
  def record(path, level, message):
    return std_logging.LogRecord('absl', level, path, 1, message, None, None)
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not checkpointing.filter_orbax_log(record(orbax, std_logging.INFO, 'saved'))
  assert not checkpointing.filter_orbax_log(
      record(orbax, std_logging.WARNING, 'Given directory is read only: x'))
  assert checkpointing.filter_orbax_log(record(orbax, std_logging.WARNING, 'disk full'))
  assert checkpointing.filter_orbax_log(record('/vgg_jax/training/train.py', std_logging.INFO, 'x'))
