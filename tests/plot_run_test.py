"""experiments/plot_run.py: merged series, the PNG, the CLI line, clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from experiments import plot_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_row(step, lr=1e-2):
  """A row as train.log_progress writes it."""
  return {'step': step, 'train/loss': 2.0 / step, 'train/top1_error': 0.5 / step,
          'train/learning_rate': lr, 'train/images_per_second': 100.0}


def eval_row(step):
  """A row as train.evaluate writes it."""
  return {'step': step, 'eval/loss': 3.0 / step, 'eval/top1_error': 0.8 / step,
          'eval/top5_error': 0.1 / step, 'eval/num_examples': 64}


def write_run(workdir, rows, tail='', config=None):
  """workdir/metrics.jsonl of rows, then tail (a torn line); config.json if given."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(row) + '\n' for row in rows) + tail)
  if config is not None:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(config, f)
  return str(workdir)


def split_run(workdir):
  """Train rows at 2, 4, 6, 8 (step 4 split over two lines), eval at 4 and 8, torn end."""
  step4 = train_row(4)
  rows = [train_row(2), {'step': 4, 'train/loss': step4.pop('train/loss')}, eval_row(4),
          step4, train_row(6), train_row(8, lr=1e-3), eval_row(8)]
  config = {'model': {'variant': 'A', 'width': 0.0625}, 'global_batch_size': 16}
  return write_run(workdir, rows, tail='{"step": 10, "train/lo', config=config)


def test_load_series_merges_rows_by_step_and_drops_a_torn_line(tmp_path):
  series = plot_run.load_series(split_run(tmp_path / 'run'))
  np.testing.assert_array_equal(series['step'], [2, 4, 6, 8])
  np.testing.assert_allclose(series['train/loss'], [1.0, 0.5, 2 / 6, 0.25])
  np.testing.assert_allclose(series['train/learning_rate'], [1e-2] * 3 + [1e-3])
  np.testing.assert_allclose(series['eval/top1_error'], [np.nan, 0.2, np.nan, 0.1])
  assert plot_run.count_points(series, 'train/') == 4
  assert plot_run.count_points(series, 'eval/') == 2


def test_plot_run_writes_a_png_and_says_what_it_drew(tmp_path, capsys):
  workdir = split_run(tmp_path / 'my_run')
  path = plot_run.plot_run(workdir)
  assert path == os.path.join(workdir, 'curves.png')
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert 1000 <= image.width <= 2500 and 300 <= image.height <= 1000
  out = capsys.readouterr().out
  assert out.count('\n') == 1
  assert f'Wrote {path}: 4 train and 2 eval points, steps 2-8.' in out
  assert plot_run.run_title(workdir) == 'my_run: VGG-A, width 0.0625, batch 16'


@pytest.mark.parametrize('kind', ['train', 'eval'])
def test_a_run_with_only_train_or_only_eval_rows(tmp_path, capsys, kind):
  make_row = train_row if kind == 'train' else eval_row
  workdir = write_run(tmp_path / 'run', [make_row(s) for s in (5, 10, 15)])
  out = str(tmp_path / 'elsewhere.png')
  assert plot_run.plot_run(workdir, out) == out
  with Image.open(out) as image:
    image.verify()
  counts = (3, 0) if kind == 'train' else (0, 3)
  assert f'{counts[0]} train and {counts[1]} eval points' in capsys.readouterr().out
  assert plot_run.run_title(workdir) == 'run'  # No config.json: the name alone.


def test_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='No such run directory: .*missing'):
    plot_run.load_series(str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match=f'{tmp_path}/metrics.jsonl does not exist'):
    plot_run.load_series(str(tmp_path))
  for text in ('', '\n', '{"step": 2, "train/lo'):  # Empty, blank, only a torn line.
    write_run(tmp_path, [], tail=text)
    with pytest.raises(ValueError, match=f'{tmp_path}/metrics.jsonl has no metric rows'):
      plot_run.plot_run(str(tmp_path))
  assert not os.path.exists(tmp_path / 'curves.png')


def test_command_line(tmp_path):
  workdir = split_run(tmp_path / 'run')
  out = str(tmp_path / 'curves_cli.png')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.plot_run', f'--workdir={workdir}', f'--out={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == f'Wrote {out}: 4 train and 2 eval points, steps 2-8.\n'
  assert 'is torn' in result.stderr  # read_metrics's warning for the last line.
  with Image.open(out) as image:
    assert image.format == 'PNG'
