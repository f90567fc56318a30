"""Checks a run's config once at start-up; each error names the field that is wrong.

The fields are those of experiments/configs/base.py. Bad values stop the run before
anything is written to the workdir.
"""

import os

from vgg_jax import data
from vgg_jax import errors
from vgg_jax import models
from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import untrusted
from vgg_jax.training import optim

# Fields added after configs were first stored: an older run's config passes without them.
OPTIONAL_MODEL = ('pool_impl',)


_ABSENT = object()


def _field(config, name: str, optional: bool = False):
  """config.<name> (dotted); a missing one raises naming it, or is _ABSENT if optional."""
  value = config
  for part in name.split('.'):
    if part not in value:
      if optional:
        return _ABSENT
      raise errors.InvalidInput(
          f'config.{name} is missing: the config must define every field of '
          'experiments/configs/base.py.')
    value = value[part]
  return value


def _require(config, name: str, ok, want: str, optional: bool = False):
  """Raises ValueError naming config.<name> unless ok(value).

  optional: a field added after configs were first stored; a config without it (an older
  run's) passes and gets the code's default.
  """
  value = _field(config, name, optional)
  if value is not _ABSENT:
    models.check_fields({f'config.{name}': value}, {f'config.{name}': (ok, want)})


def check_model(config):
  """config.model: its dtype and class count here, VGG's own fields by models.check_fields."""
  fields = {name: _field(config, f'model.{name}', optional=name in OPTIONAL_MODEL)
            for name in models.FIELD_RULES if name != 'num_classes'}  # 0 allowed: below.
  _require(config, 'model.dtype', lambda v: v in models.DTYPES,
           f'must be one of {list(models.DTYPES)}')
  _require(config, 'model.num_classes', lambda v: isinstance(v, int) and v >= 0,
           'must be a class count (0: as many as the data has)')
  models.check_fields(
      {f'config.model.{k}': v for k, v in fields.items() if v is not _ABSENT},
      {f'config.model.{k}': rule for k, rule in models.FIELD_RULES.items()})


def check_data(config):
  size = config.model.image_size
  _require(config, 'data.source', lambda v: v in data.SOURCES, f'must be one of {data.SOURCES}')
  if config.data.source == 'folder':
    _require(config, 'data.folder', bool, "must name the image folder root for source='folder'")
  _require(config, 'data.skip_corrupt', lambda v: isinstance(v, bool), 'must be True or False')
  _require(config, 'data.scale_min', lambda v: v >= size,
           f'the training scale S must be at least the crop model.image_size={size}')
  _require(config, 'data.scale_max', lambda v: v >= config.data.scale_min,
           f'must be at least data.scale_min={config.data.scale_min}')
  _require(config, 'data.eval_scale', lambda v: v >= size,
           f'the test scale Q must be at least the crop model.image_size={size}')
  _require(config, 'data.pca_stddev', lambda v: v >= 0, 'must be >= 0 (0 disables)')
  _require(config, 'data.device_window', lambda v: isinstance(v, int) and (v == 0 or v >= size),
           f'must be 0 (resample on the host) or at least model.image_size={size}',
           optional=True)


def check_optimizer(config):
  _require(config, 'optimizer.schedule', lambda v: v in optim.SCHEDULES,
           f'must be one of {optim.SCHEDULES}')
  _require(config, 'optimizer.learning_rate', lambda v: v > 0, 'must be > 0')
  _require(config, 'optimizer.momentum', lambda v: 0 <= v < 1, 'must be in [0, 1)')
  _require(config, 'optimizer.weight_decay', lambda v: v >= 0, 'must be >= 0')
  _require(config, 'optimizer.plateau_factor', lambda v: 0 < v < 1, 'must be in (0, 1)')
  _require(config, 'optimizer.plateau_patience', models.positive_int, 'must be a positive integer')
  _require(config, 'optimizer.plateau_max_decays', lambda v: isinstance(v, int) and v >= 0,
           'must be an integer >= 0')
  for name in ('decay_biases', 'freeze_conv_base', 'unfreeze_last_stage'):
    _require(config, f'optimizer.{name}', lambda v: isinstance(v, bool), 'must be True or False')
  _require(config, 'optimizer.plateau_min_delta', lambda v: v >= 0, 'must be >= 0')
  _require(config, 'optimizer.step_decay_epochs', lambda v: all(e > 0 for e in v),
           'must be epochs > 0')


def check_loop(config):
  for name in ('global_batch_size', 'eval_batch_size', 'grad_accum_steps', 'log_every_steps',
               'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    _require(config, name, models.positive_int, 'must be a positive integer')
  for name in ('peer_timeout_seconds', 'shutdown_timeout_seconds'):
    _require(config, name, models.positive_int, 'must be a positive integer (seconds)')
  _require(config, 'profile_steps', lambda v: len(v) == 0 or (
      len(v) == 2 and models.positive_int(v[0]) and models.positive_int(v[1])),
           'must be () or (first step, count), both positive integers')
  if config.num_train_steps <= 0:
    _require(config, 'num_epochs', lambda v: v > 0,
             'must be > 0 (or set num_train_steps > 0)')
  if config.init_from:
    # A registered name always means the name; a directory is taken only as a path.
    _require(config, 'init_from', lambda v: v in named_weights.WEIGHTS or (
        untrusted.looks_like_path(v) and os.path.isdir(os.path.expanduser(v))),
             'must be a run or import directory, given as a path (./DIR for one here), or '
             f'named weights: {", ".join(named_weights.WEIGHTS)}')
    named = named_weights.WEIGHTS.get(config.init_from)
    if named:  # Deeper nets share their first layers' shapes: a wrong variant would copy.
      _require(config, 'model.variant', lambda v: v == named.variant,
               f'must be {named.variant!r}, the variant of init_from={config.init_from!r} '
               f'(finetune.py:HEAD,{named.variant})')
      _require(config, 'model.batch_norm', lambda v: v == named.batch_norm,
               f'must be {named.batch_norm}, as init_from={config.init_from!r} is')
    _require(config, 'init_layers', lambda v: len(v) > 0 and all(isinstance(n, str) for n in v),
             'must name the layers to copy from init_from')


def check_train_config(config):
  """Every field train_and_evaluate reads, checked before anything runs."""
  check_model(config)
  check_data(config)
  check_optimizer(config)
  check_loop(config)
