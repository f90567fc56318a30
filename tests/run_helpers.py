"""The tests' tiny training run: its config, its launch.py command line, its checkpoints,
and for runs in subprocesses, ports, polling and what a failed process printed."""

import functools
import os
import socket
import subprocess
import sys
import time

# Imported by test modules, so after conftest has set up JAX's environment.
import jax
import numpy as np

import data_helpers
from experiments.configs import digits
from vgg_jax import checkpointing
from vgg_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.partial(jax.jit, static_argnames=('model', 'train', 'dense'))
def apply(model, variables, images, train=False, dense=False, rngs=None):
  """model.apply compiled whole: run op by op, every primitive would compile on its own."""
  if dense:
    return model.apply(variables, images, method=models.VGG.dense, rngs=rngs)
  return model.apply(variables, images, train=train, rngs=rngs)

# A tiny net A on digits: the default config shrunk so a run takes seconds.
TINY_OVERRIDES = {
    'model.variant': 'A', 'model.width': 0.0625, 'model.fc_width': 32,
    'data.mean_rgb': (40.0, 40.0, 40.0), 'data.scale_max': 32, 'global_batch_size': 16,
    'eval_batch_size': 64, 'num_train_steps': 8, 'log_every_steps': 4,
    'eval_every_steps': 4, 'checkpoint_every_steps': 4, 'optimizer.schedule': 'step',
    'optimizer.step_decay_epochs': (0.5,),
}


def tiny_config(**overrides):
  """digits.get_config() with TINY_OVERRIDES, then overrides ('model.width': ...)."""
  config = digits.get_config()
  config.unlock()
  config.update_from_flattened_dict({**TINY_OVERRIDES, **overrides})
  return config


def launch_args(workdir, **overrides):
  """The launch.py command line of tiny_config(**overrides) in workdir."""
  args = [sys.executable, os.path.join(ROOT, 'launch.py'), f'--workdir={workdir}']
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    if isinstance(value, tuple):
      value = '(' + ','.join(map(str, value)) + ',)'
    args.append(f'--config.{key}={value}')
  return args


def params_and_meta(workdir):
  """(parameters as numpy arrays, meta) of a workdir's latest checkpoint."""
  variables, meta = checkpointing.load_variables(str(workdir))
  return variables['params'], meta


def final_params(workdir):
  """The parameters (numpy) of a workdir's latest checkpoint."""
  return params_and_meta(workdir)[0]


def assert_trees_equal(a, b):
  """Asserts two pytrees of arrays are bitwise equal."""
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def free_port() -> int:
  """A TCP port free on loopback now (for jax.distributed's coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_for(predicate, timeout: float = 120.0) -> bool:
  """Polls predicate until it is true (True) or timeout seconds pass (False)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.02)
  return False


def finished_steps(workdir) -> list[int]:
  """The steps with a finished checkpoint in workdir, ascending."""
  return checkpointing.finished_steps(str(workdir))


def failure_text(output: str, chars: int = 4000) -> str:
  """A process's output, for a failed assertion, without gloo's connection lines.

  After a fatal error (an abort), what led to it and the error's first lines: the thread
  stacks and extension modules Python dumps next would fill the usual tail.
  """
  text = '\n'.join(l for l in output.splitlines() if not l.startswith('[Gloo]'))
  fatal = text.find('Fatal Python error')
  if fatal < 0:
    return text[-chars:]
  return text[max(0, fatal - chars // 2):fatal + chars // 2]


def start_two_processes(workdir, overrides, fault=None):
  """Two gloo processes of launch.py (4 fake devices each), through fault_launch.py (which
  caches compiled programs on both); fault: its FAULT, or none."""
  port = free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4 ' +
             data_helpers.FAST_COMPILE_FLAGS)
  args = launch_args(workdir, **overrides)
  args[1] = os.path.join(os.path.dirname(__file__), 'fault_launch.py')
  if fault:
    env['FAULT'] = fault
  return [subprocess.Popen(
      args + ['--distributed=explicit', f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2', f'--process_id={i}', '--cpu_collectives=gloo'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
