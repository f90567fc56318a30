"""launch.py with a fault injected: FAULT=VICTIM:MOMENT:WAY:STEP in the environment.

Without FAULT it is launch.py. Either way every process writes JAX's persistent
compilation cache (see cache_on_every_process).

The process whose jax.process_index() is VICTIM signals itself (WAY: KILL or STOP) at
MOMENT: 'compile' (as the train step starts compiling), 'step' (just after training step
STEP was dispatched, its collectives in flight), 'eval' (as the evaluation after step
STEP starts) or 'save' (just after the asynchronous save of step STEP started). The
other processes run launch.py unchanged. Used by tests/fault_injection_test.py.
"""

import os
import signal
import sys

from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import launch  # pylint: disable=g-import-not-at-top,wrong-import-position
from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position
from vgg_jax.training import train  # pylint: disable=g-import-not-at-top,wrong-import-position

VICTIM, MOMENT, WAY, STEP = os.environ.get('FAULT', '-1:none:KILL:0').split(':')
VICTIM, STEP = int(VICTIM), int(STEP)


def inject(moment: str, step: int = 0):
  import jax  # pylint: disable=g-import-not-at-top  (launch imports it after its set-up)
  if moment == MOMENT and step >= STEP and jax.process_index() == VICTIM:
    sys.stdout.write(f'FAULT: process {VICTIM} {WAY} at {moment} {step}\n')
    sys.stdout.flush()
    os.kill(os.getpid(), getattr(signal, f'SIG{WAY}'))


def patch():
  compile_train_step, evaluate = train.compile_train_step, train.evaluate
  save = checkpointing.save

  def compile_with_fault(*args, **kwargs):
    inject('compile')
    compiled, seconds, flops = compile_train_step(*args, **kwargs)
    calls = [0]

    def step_with_fault(*step_args):
      out = compiled(*step_args)
      calls[0] += 1
      inject('step', calls[0])
      return out
    return step_with_fault, seconds, flops

  def evaluate_with_fault(loop, step, *args, **kwargs):
    inject('eval', step)
    return evaluate(loop, step, *args, **kwargs)

  def save_with_fault(manager, step, *args, **kwargs):
    save(manager, step, *args, **kwargs)
    inject('save', step)

  train.compile_train_step = compile_with_fault
  train.evaluate = evaluate_with_fault
  checkpointing.save = save_with_fault


def cache_on_every_process():
  """JAX writes its persistent compilation cache from process 0 only, and process 1's
  programs have keys of their own: without this, process 1 of every launch compiles
  everything again while process 0 waits for it at the first collective (~10 s a launch).
  Test speed only; if JAX's private function changes, the launch just compiles."""
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  from jax._src import compiler  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  write = compiler._cache_write  # pylint: disable=protected-access

  def write_on_any_process(cache_key, compile_time_secs, module_name, backend, executable,
                           host_callbacks):
    if distributed.global_state.process_id == 0 or host_callbacks:
      return write(cache_key, compile_time_secs, module_name, backend, executable,
                   host_callbacks)
    compilation_cache.put_executable_and_time(cache_key, module_name, executable, backend,
                                              int(compile_time_secs))
  compiler._cache_write = write_on_any_process  # pylint: disable=protected-access


if __name__ == '__main__':
  cache_on_every_process()
  patch()
  app.run(launch.main)
