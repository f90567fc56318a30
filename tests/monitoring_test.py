"""monitoring: metrics.jsonl and TensorBoard, the NaN check, FLOPs/MFU, log filters."""

import json

import numpy as np
import pytest

from vgg_jax.training import monitoring


def test_writer_keeps_rows_up_to_the_resumed_step_and_writes_tensorboard(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': 4, 'train/loss': 2.0}, {'step': 8, 'train/loss': 1.5}]
  path.write_text(''.join(json.dumps(row) + '\n' for row in rows) + '{"step": 12, "tr')
  writer = monitoring.MetricWriter(str(tmp_path), resume_step=4)
  writer.write(6, {'train/loss': 1.75})
  assert monitoring.read_metrics(str(path)) == [rows[0], {'step': 6, 'train/loss': 1.75}]
  assert list((tmp_path / 'tensorboard').iterdir())


def test_read_metrics_drops_a_torn_last_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\n\n{"step": 2')
  assert monitoring.read_metrics(str(path)) == [{'step': 1}]


def test_check_finite_raises_at_the_first_bad_step_and_clears_good_ones():
  pending = [(1, np.float32(2.0)), (2, np.float32(1.0))]
  monitoring.check_finite(pending)
  assert not pending
  with pytest.raises(FloatingPointError, match='nan at step 4'):
    monitoring.check_finite([(3, np.float32(1.0)), (4, np.float32('nan'))])


def test_flops_and_peak():
  class Compiled:
    def cost_analysis(self):
      return [{'flops': 6.0}]
  assert monitoring.step_flops(Compiled()) == 6.0
  assert monitoring.step_flops(object()) is None
  assert monitoring.peak_flops('NVIDIA H200') == monitoring.PEAK_FLOPS['H200']
  assert monitoring.peak_flops('cpu') is None


def test_format_duration():
  assert monitoring.format_duration(3725.9) == '1:02:05'
  assert monitoring.format_duration(-3) == '0:00:00'
