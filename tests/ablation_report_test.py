"""The ablation's report says what was run: the budget used, each run once, readable curves.

Rows and metrics.jsonl files are made here, so no net is trained: the study's flow itself
is tested in ablation_test.py.
"""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import ablation_report  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = ('A', 'A-LRN', 'B', 'C', 'D', 'E')


def make_run(root, variant, init, errors, steps=(35, 70, 105), seed=0, budget=1.0):
  """A row as experiments.ablation writes it, and the run's eval curve on disk."""
  workdir = root / f'{variant}_{init or "once"}_{seed}'
  workdir.mkdir()
  with open(workdir / 'metrics.jsonl', 'w') as f:
    for step, error in zip(steps, errors):
      f.write(json.dumps({'step': step, 'train/loss': 1.0}) + '\n')
      f.write(json.dumps({'step': step, 'eval/top1_error': error}) + '\n')
  final = errors[-1]
  return {'variant': variant, 'init': init, 'budget': budget, 'train_scale': '',
          'seed': seed, 'steps': steps[-1], 'single_top1': final, 'single_top5': final / 4,
          'multi_top1': final * 0.9, 'multi_top5': final / 5, 'workdir': str(workdir)}


@pytest.fixture(name='rows')
def fixture_rows(tmp_path):
  # A and A-LRN trained once and at chance together (one covers the other); E twice.
  return [make_run(tmp_path, 'A', '', [0.9, 0.9, 0.9]),
          make_run(tmp_path, 'A-LRN', '', [0.9, 0.9, 0.9]),
          make_run(tmp_path, 'E', 'warm', [0.5, 0.05, 0.012]),
          make_run(tmp_path, 'E', 'glorot', [0.8, 0.2, 0.03])]


def test_budget_used_is_read_from_the_runs(rows):
  rows.append(dict(rows[2], seed=1))
  line = ablation_report.budget_used(rows)
  assert line == ('Budget used: 5 runs, 2 seeds per configuration. A, A-LRN from scratch: '
                  '105 steps; E with warm start from A (Sec. 3.1): 105 steps; E with Glorot, '
                  'no pre-training: 105 steps.')
  rows[3] = dict(rows[3], budget=2.0, steps=210)
  assert 'E with Glorot, no pre-training: 210 steps (2x A)' in ablation_report.budget_used(rows)


def test_a_net_trained_once_is_shown_once(rows):
  table = ablation_report.depth_table(rows, VARIANTS, 'single')
  assert table[0] == ('| config | weight layers | warm start from A (Sec. 3.1), 105 steps | '
                      'Glorot, no pre-training, 105 steps |')
  by_variant = {line.split('|')[1].strip(): line.split('|')[3:5] for line in table[2:]}
  assert [c.strip() for c in by_variant['A']] == ['90.00 / 22.50', '-']
  assert [c.strip() for c in by_variant['A-LRN']] == ['90.00 / 22.50', '-']
  assert [c.strip() for c in by_variant['E']] == ['1.20 / 0.30', '3.00 / 0.75']


def test_markdown_states_the_budget_used_and_the_presets_rule(rows, tmp_path):
  preset = type('Preset', (), dict(
      scale_name='', single_scales=(32,), multi_scales=(32, 36), multi_protocol='dense',
      variants=VARIANTS, paper=False, flip=False, extra_scales=(), fusion_examples=0,
      eval_max_examples=0))()
  header = {'preset': 'digits', 'command': 'python -m experiments.ablation --quick',
            'seconds': 60.0, 'budget_rule': 'every net gets 315 steps.',
            'quick': True}
  path = tmp_path / 'ablation.md'
  ablation_report.write_markdown(path, rows, preset, header, {}, [])
  text = path.read_text()
  assert 'Budget used: 4 runs, 1 seed per configuration.' in text
  assert ("The preset's own budget, which --quick replaces with a few steps at a tiny "
          'width: every net gets 315 steps.') in text
  assert 'first column only' in text
  header['quick'] = False
  ablation_report.write_markdown(path, rows, preset, header, {}, [])
  assert "The preset's budget rule: every net gets 315 steps." in path.read_text()


def test_curves_have_integer_steps_plain_log_ticks_and_every_line_visible(rows, tmp_path):
  fig = ablation_report.write_curves(tmp_path / 'curves.png', rows, VARIANTS, 'title')
  assert (tmp_path / 'curves.png').stat().st_size > 10_000
  ax = fig.axes[0]
  fig.canvas.draw()
  assert ax.get_yscale() == 'log'  # 90% down to 1.2%: more than 3x.
  steps = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
  assert steps and all(float(t).is_integer() for t in steps)
  labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
  assert labels and all(float(label) > 0 for label in labels), labels  # 1, 2, 5, 10, ...
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert sorted(lines) == ['A', 'A-LRN', 'E glorot', 'E warm']
  looks = {(line.get_color(), line.get_linestyle(), line.get_marker())
           for line in lines.values()}
  assert len(looks) == 4
  assert lines['E warm'].get_linestyle() != lines['E glorot'].get_linestyle()
  assert lines['E warm'].get_marker() != lines['E glorot'].get_marker()
  # A lies exactly under A-LRN: it is drawn first and wider, so it shows around it.
  assert lines['A'].get_zorder() < lines['A-LRN'].get_zorder()
  assert lines['A'].get_linewidth() > lines['A-LRN'].get_linewidth()
  assert lines['E warm'].get_linewidth() == lines['E glorot'].get_linewidth()


def test_curves_over_a_narrow_range_stay_linear(tmp_path):
  rows = [make_run(tmp_path, 'A', '', [0.9, 0.89, 0.88], steps=(2, 4, 6)),
          make_run(tmp_path, 'E', 'warm', [0.9, 0.895, 0.897], steps=(2, 4, 6))]
  fig = ablation_report.write_curves(tmp_path / 'curves.png', rows, VARIANTS, 'title')
  ax = fig.axes[0]
  fig.canvas.draw()
  assert ax.get_yscale() == 'linear' and 'log' not in ax.get_ylabel()
  labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
  assert all(np.isfinite(float(label)) for label in labels)  # 88.5, 89, ...: no 10^x.
  assert all(float(t).is_integer() for t in ax.get_xticks())
