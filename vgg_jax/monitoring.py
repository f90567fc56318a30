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

# Dense bf16 peak FLOP/s per chip, for MFU; matched as substrings of device_kind.
PEAK_FLOPS = {
    'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L4': 121e12, 'A10G': 125e12,
    'TPU v6': 918e12, 'TPU v5p': 459e12, 'TPU v5': 197e12, 'TPU v4': 275e12,
}


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard, on process 0."""

  def __init__(self, workdir: str, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.summary = None
    if not self.active:
      return
    if os.path.exists(self.path):  # Drop lines a crash left beyond the checkpoint.
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
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
  """Turns SIGTERM into a flag the loop checks after each step (all processes agree)."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after this step.')
    self.requested = True

  def check(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray(self.requested))
    return bool(np.any(flags))

  def close(self):
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
