"""Training curves of one run: loss, top-1 error and learning rate against the step.

  python -m experiments.plot_run --workdir=DIR [--out=PATH]

Reads DIR/metrics.jsonl (train rows at logging steps, eval rows at eval steps; the rows
of one step may be split across lines and are merged) and DIR/config.json if present,
and writes DIR/curves.png (or PATH).
"""

import json
import os

from absl import flags
import numpy as np

from vgg_jax import cli
from vgg_jax.training import monitoring

# Series shown in percent.
PERCENT_KEYS = ('train/top1_error', 'eval/top1_error', 'eval/top5_error')


def load_series(workdir: str) -> dict[str, np.ndarray]:
  """{'step': [N] int, name: [N] float (NaN where that step has no value)}, by step."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'No such run directory: {workdir}')
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'No metrics.jsonl in {workdir}: {path} does not exist.')
  by_step = {}
  for row in monitoring.read_metrics(path):
    if isinstance(row, dict) and 'step' in row:
      values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != 'step'}
      by_step.setdefault(int(row['step']), {}).update(values)  # A later line wins.
  if not by_step:
    raise ValueError(f'{path} has no metric rows.')
  steps = sorted(by_step)
  names = sorted({name for values in by_step.values() for name in values})
  series = {'step': np.array(steps, dtype=np.int64)}
  for name in names:
    series[name] = np.array([by_step[s].get(name, np.nan) for s in steps], dtype=np.float64)
  return series


def count_points(series: dict[str, np.ndarray], prefix: str) -> int:
  """Steps with at least one value whose name starts with prefix ('train/', 'eval/')."""
  present = np.zeros(len(series['step']), dtype=bool)
  for name, values in series.items():
    if name.startswith(prefix):
      present |= ~np.isnan(values)
  return int(present.sum())


def run_title(workdir: str) -> str:
  """The run directory's name, plus variant, width and batch from config.json if present."""
  name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return name
  with open(path) as f:
    config = json.load(f)
  model = config.get('model', {})  # Older runs may lack a field: show what is there.
  parts = [f'VGG-{model["variant"]}' if 'variant' in model else None,
           f'width {model["width"]:g}' if 'width' in model else None,
           f'batch {config["global_batch_size"]}' if 'global_batch_size' in config else None]
  parts = [part for part in parts if part]
  return f'{name}: {", ".join(parts)}' if parts else name


def draw(ax, series, name: str, label: str, style: dict):
  """One series against the step, NaNs skipped; False if it has no points."""
  if name not in series:
    return False
  steps, values = series['step'], series[name]
  keep = ~np.isnan(values)
  if not keep.any():
    return False
  scale = 100.0 if name in PERCENT_KEYS else 1.0
  ax.plot(steps[keep], scale * values[keep], label=label, **style)
  return True


def write_curves(series: dict[str, np.ndarray], title: str, out: str):
  """The three panels (loss, top-1 error, learning rate) as a PNG at out."""
  # Optional: the ablation extra. A bare Figure (no pyplot) renders with Agg, no display.
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  few = len(series['step']) <= 60  # Markers while single points can still be told apart.
  train = {'color': 'C0', 'marker': '.' if few else None, 'linewidth': 1.2}
  evals = {'color': 'C3', 'marker': 'o', 'markersize': 4, 'linewidth': 1.5}
  fig = figure.Figure(figsize=(14, 4.2))
  axes = fig.subplots(1, 3)
  panels = (
      (axes[0], 'loss', (('train/loss', 'train', train), ('eval/loss', 'eval', evals))),
      (axes[1], 'top-1 error (%)',
       (('train/top1_error', 'train', train), ('eval/top1_error', 'eval', evals))),
      (axes[2], 'learning rate', (('train/learning_rate', 'train', train),)))
  for ax, ylabel, lines in panels:
    drawn = [draw(ax, series, name, label, style) for name, label, style in lines]
    if not any(drawn):
      ax.text(0.5, 0.5, f'no {ylabel} in this run', ha='center', va='center',
              transform=ax.transAxes, color='gray')
      ax.set_xticks([])
      ax.set_yticks([])
    elif len(lines) > 1:
      ax.legend()  # Also when one line is drawn: a run with only eval rows says so.
    ax.set_xlabel('step')
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  rates = series.get('train/learning_rate', np.array([]))
  rates = rates[~np.isnan(rates) & (rates > 0)]
  if rates.size and rates.max() > 10 * rates.min():  # Step decays read best on a log axis.
    axes[2].set_yscale('log')
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out, dpi=110)


def plot_run(workdir: str, out: str | None = None) -> str:
  """Writes the run's curves to out (default workdir/curves.png); returns the path."""
  series = load_series(workdir)
  out = out or os.path.join(workdir, 'curves.png')
  write_curves(series, run_title(workdir), out)
  first, last = series['step'][0], series['step'][-1]
  print(f'Wrote {out}: {count_points(series, "train/")} train and '
        f'{count_points(series, "eval/")} eval points, steps {first}-{last}.')
  return out


def main(argv):
  del argv
  plot_run(flags.FLAGS.workdir, flags.FLAGS.out)


if __name__ == '__main__':
  # Defined here, not at import: experiments.ablation and style_transfer define --workdir
  # and --out too, and the tests import those modules and this one into one process.
  flags.DEFINE_string('workdir', None, 'The run directory (holds metrics.jsonl).',
                      required=True)
  flags.DEFINE_string('out', None, 'Output PNG; default WORKDIR/curves.png.')
  cli.run(main)
