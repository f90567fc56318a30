"""Tests for vgg_jax.training.optim: weight decay, the plateau rule, learning-rate setting."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import base
from vgg_jax.training import optim


def optimizer(**overrides) -> optim.OptimizerConfig:
  """base.optimizer_config(), typed, with overrides."""
  return dataclasses.replace(optim.OptimizerConfig.from_config(base.optimizer_config()),
                             **overrides)


def test_weight_decay_skips_biases_unless_asked():
  params = {'conv1_1': {'kernel': jnp.ones((3, 3, 3, 4)), 'bias': jnp.ones((4,))}}
  grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  for decay_biases, bias_update in ((False, 0.0), (True, -5e-4)):
    config = optimizer(decay_biases=decay_biases, schedule='plateau', learning_rate=1.0)
    tx = optim.create_optimizer(config, 10, 100)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates['conv1_1']['kernel'], -5e-4)
    np.testing.assert_allclose(updates['conv1_1']['bias'], bias_update)


def test_plateau_divides_by_ten_on_stall_at_most_three_times():
  config = optimizer(plateau_patience=2)
  plateau = optim.Plateau()
  decays = []
  for error in [0.5, 0.4, 0.4, 0.45, 0.3, 0.3, 0.3] + [0.3] * 8:
    plateau, decayed = optim.update_plateau(plateau, error, config)
    decays.append(decayed)
  assert [i for i, d in enumerate(decays) if d] == [3, 6, 8]
  assert plateau.decays == 3


def test_set_learning_rate_changes_only_the_rate():
  config = optimizer(schedule='plateau')
  params = {'conv1_1': {'kernel': jnp.ones((3, 3, 3, 4)), 'bias': jnp.ones((4,))}}
  tx = optim.create_optimizer(config, 10, 100)
  state = tx.init(params)
  lowered = optim.set_learning_rate(state, 1e-3)
  assert float(optim.current_learning_rate(lowered)) == np.float32(1e-3)
  assert float(optim.current_learning_rate(state)) == np.float32(1e-2)
  plateau = optim.Plateau(decays=2)
  assert optim.plateau_learning_rate(plateau, 1e-2, 0.1) == 1e-2 * 0.1**2


def test_frozen_conv_base_gets_no_updates_unless_the_last_stage_is_unfrozen():
  params = {name: {'kernel': jnp.ones((2, 2))} for name in ('conv1_1', 'conv5_1', 'fc8')}
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  for unfreeze, trained in ((False, {'fc8'}), (True, {'conv5_1', 'fc8'})):
    config = optimizer(freeze_conv_base=True, unfreeze_last_stage=unfreeze)
    tx = optim.create_optimizer(config, 10, 100)
    updates, _ = tx.update(grads, tx.init(params), params)
    moved = {name for name, u in updates.items() if np.any(np.asarray(u['kernel']) != 0)}
    assert moved == trained
