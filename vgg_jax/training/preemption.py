"""SIGTERM -> a checkpoint after the current step, then a clean stop."""

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils


class Notice:
  """Whether a preemption asks the run to save and stop; no host round trip per step.

  One process: our SIGTERM handler sets a flag the loop reads. Several processes: JAX's
  preemption sync manager (started by jax.distributed.initialize, which watches SIGTERM
  on every process) agrees on one safe step in the background, and
  multihost_utils.reached_preemption_sync_point(step) is True on every process at that
  same step. It must be asked at every step, from the same start step on all processes.
  """

  def __init__(self):
    self.requested = False
    self.multi_process = jax.process_count() > 1
    self._previous = None
    if not self.multi_process:  # Several: JAX's own SIGTERM handler must stay in place.
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after this step.')
    self.requested = True

  def check(self, step: int) -> bool:
    """Whether to save and stop after `step` (the same answer on every process)."""
    if self.multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
