"""The ablation's --quick flow: three files, six configurations, finished runs skipped."""

import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ablation(workdir):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return subprocess.run([sys.executable, '-m', 'experiments.ablation', '--preset=digits',
                         '--quick', f'--workdir={workdir}'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


def test_quick_ablation_writes_tables_and_plot_then_skips(tmp_path):
  first = run_ablation(tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / 'ablation.csv')))
  assert [r['variant'] for r in rows] == ['A', 'A-LRN', 'B', 'C', 'D', 'E']
  assert [int(r['weight_layers']) for r in rows] == [11, 11, 13, 16, 16, 19]
  assert all(0.0 <= float(r['single_top1']) <= 1.0 for r in rows)
  assert all(int(r['eval_images']) == 450 for r in rows)
  markdown = open(tmp_path / 'ablation.md').read()
  assert 'Table 3 shape' in markdown and 'Table 4 shape' in markdown
  for variant in ('| A |', '| A-LRN |', '| B |', '| C |', '| D |', '| E |'):
    assert markdown.count(variant) == 2
  assert open(tmp_path / 'ablation.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  steps_before = sorted(os.listdir(tmp_path / 'E_seed0' / 'checkpoints'))

  second = run_ablation(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count('is finished: skipped') == 6
  assert 'Compiled the train step' not in second.stderr
  assert sorted(os.listdir(tmp_path / 'E_seed0' / 'checkpoints')) == steps_before
