"""What a training run shows and watches: metrics files, preemption, NaNs, FLOPs/MFU."""

import json
import os
import signal
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from vgg_jax import files

# Dense bf16 peak FLOP/s per chip, for MFU; matched as substrings of device_kind.
PEAK_FLOPS = {
    'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L4': 121e12, 'A10G': 125e12,
    'TPU v6': 918e12, 'TPU v5p': 459e12, 'TPU v5': 197e12, 'TPU v4': 275e12,
}


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl; a line a crash left half-written is dropped, with a warning."""
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning('%s line %d is torn (a crash while it was written): dropped.',
                        path, number)
  return rows


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard, on process 0."""

  def __init__(self, workdir: str, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.summary = None
    if not self.active:
      return
    if os.path.exists(self.path):  # Drop rows a crash left beyond the checkpoint.
      kept = [row for row in read_metrics(self.path) if row['step'] <= resume_step]
      files.write_file_atomically(self.path, ''.join(json.dumps(row) + '\n' for row in kept))
    try:  # TensorFlow is optional here: the benchmark path runs without it.
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self.summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))
    except ImportError:
      logging.warning('TensorFlow is not installed: no TensorBoard event files.')

  def write(self, step: int, metrics: dict[str, float]):
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    if self.summary is not None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top  (loaded in __init__)
      with self.summary.as_default(step=step):
        for name, value in metrics.items():
          tf.summary.scalar(name, value)
      self.summary.flush()


class Preemption:
  """SIGTERM -> a checkpoint after a step, then a clean stop; no host round trip per step.

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


def check_finite(pending: list[tuple[int, Any]]):
  """Raises on the first non-finite loss among pending (step, device loss) pairs."""
  if not pending:
    return
  losses = jax.device_get([loss for _, loss in pending])
  for (step, _), loss in zip(pending, losses):
    if not np.isfinite(loss):
      raise FloatingPointError(f'Loss is {float(loss)} at step {step}: training stopped. '
                               'The last checkpoint before it is intact.')
  pending.clear()


def peak_flops(device_kind: str) -> float | None:
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return flops
  return None


def step_flops(compiled) -> float | None:
  """FLOPs of one compiled step per device, from XLA's cost analysis."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Throughput:
  """Steps and wall time since the last log line, with eval time kept out."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.start, self.steps = time.perf_counter(), 0

  def exclude(self, seconds: float):
    self.start += seconds

  def step_seconds(self) -> float:
    return (time.perf_counter() - self.start) / max(self.steps, 1)
