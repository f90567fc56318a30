"""The A -> E depth ablation (Tables 3 and 4) as one command.

  python -m experiments.ablation --preset=digits --workdir=workdirs/ablation [--quick]

Trains A, A-LRN, B, C, D, E (seeds x configurations; the deeper nets warm-started from
A or Glorot-initialised, as the preset says), skips runs already finished and resumes
interrupted ones, evaluates each with the single-scale and the multi-scale protocols,
and writes DIR/ablation.md, DIR/ablation.csv and DIR/ablation.png.
"""

import csv
import dataclasses
import datetime
import json
import os
import platform
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

from experiments.configs import base
from experiments.configs import cifar10
from experiments.configs import digits
from experiments.configs import imagenet
from vgg_jax import checkpointing
from vgg_jax import host_memory
from vgg_jax import models
from vgg_jax import monitoring

_PRESET = flags.DEFINE_enum('preset', 'digits', ['digits', 'cifar10', 'imagenet'],
                            'Which study to run.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where runs and results go.', required=True)
_QUICK = flags.DEFINE_bool('quick', False, 'Tiny settings: the whole flow in minutes.')
_SEEDS = flags.DEFINE_integer('seeds', None, 'Seeds per configuration (preset default).')
_REUSE_HOST_MEMORY = flags.DEFINE_bool(
    'reuse_host_memory', True, 'Keep freed host memory for reuse (vgg_jax/host_memory.py).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (cifar10, imagenet).')

VARIANTS = tuple(models.CONFIGS)
SCALE_VARIANTS = ('C', 'D', 'E')  # Trained at the further scales of Tables 3 and 4.
# PAPER.md Tables 3 and 4: top-1 / top-5 error (%), ImageNet validation.
PAPER_TABLE3 = {'A': (29.6, 10.4), 'A-LRN': (29.7, 10.5), 'B': (28.7, 9.9),
                'C': (28.1, 9.4), 'D': (27.0, 8.8), 'E': (27.3, 9.0)}
PAPER_TABLE4 = {'B': (28.2, 9.6), 'C': (27.7, 9.2), 'D': (26.6, 8.6), 'E': (26.9, 8.7)}
# Tables 3 and 4, the further training-scale columns: {scale: {variant: (single, multi)}}.
PAPER_SCALES = {
    '384': {'C': ((28.1, 9.3), (27.8, 9.2)), 'D': ((26.8, 8.7), (26.5, 8.6)),
            'E': ((26.9, 8.7), (26.7, 8.6))},
    '256-512': {'C': ((27.3, 8.8), (26.3, 8.2)), 'D': ((25.6, 8.1), (24.8, 7.5)),
                'E': ((25.5, 8.0), (24.8, 7.5))},
}


@dataclasses.dataclass
class TrainingScale:
  """A further training-scale column of Tables 3 and 4, for C, D and E (Sec. 3.1)."""
  name: str  # '384' or '256-512'.
  scale_min: int  # S, pixels.
  scale_max: int
  single_scales: tuple[int, ...]  # Q of the single-scale test.
  multi_scales: tuple[int, ...]  # Q of the multi-scale test.
  start_from: str  # Column whose finished run of the same variant initialises this one.
  learning_rate: float


@dataclasses.dataclass
class Preset:
  """What one study trains and how it tests (Sec. 3.1, 3.2)."""
  make_config: object  # variant -> ConfigDict.
  seeds: int
  single_scales: tuple[int, ...]  # Q for Table 3's single-scale test.
  multi_scales: tuple[int, ...]  # Q for Table 4's multi-scale test.
  multi_protocol: str  # The protocol of the multi-scale column.
  flip: bool  # Average with horizontal flips at test time (not for digits).
  warm_start: bool  # Deeper nets from a trained A (Sec. 3.1) rather than Glorot.
  paper: bool  # Print the paper's ImageNet numbers beside ours.
  scale_name: str = ''  # The main column's training scale, for the tables.
  extra_scales: tuple[TrainingScale, ...] = ()  # Further columns for C, D, E.


def digits_config(variant: str, quick: bool) -> ml_collections.ConfigDict:
  config = digits.get_config()
  config.model.variant = variant
  config.model.width = 0.125  # 8..64 channels, so the 18 runs fit a CPU budget.
  config.model.fc_width = 128
  config.num_epochs = 15.0
  config.eval_every_steps = 105
  config.checkpoint_every_steps = 105
  config.log_every_steps = 105
  if quick:
    config.model.width = 0.0625
    config.model.fc_width = 32
    config.num_train_steps = 12
    config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 12
  return config


def get_preset(name: str, quick: bool) -> Preset:
  if name == 'digits':
    return Preset(lambda v: digits_config(v, quick), 1 if quick else 3, (32,),
                  (32, 36) if quick else (32, 36, 40), 'dense', flip=False, warm_start=False,
                  paper=False)
  if name == 'cifar10':
    def make(variant):
      config = cifar10.get_config(variant)
      config.data.data_dir = _DATA_DIR.value
      return config
    return Preset(make, 2, (32,), (32, 36, 40), 'dense', flip=True, warm_start=False,
                  paper=False)
  def make_imagenet(variant):  # Sec. 3.1: A from N(0, 0.01^2); the rest warm-started.
    config = imagenet.get_config(variant)
    config.data.data_dir = _DATA_DIR.value
    config.model.kernel_init = 'paper' if variant in ('A', 'A-LRN') else 'glorot'
    return config
  return Preset(make_imagenet, 1, (256,), (224, 256, 288), 'dense', flip=True, warm_start=True,
                paper=True, scale_name='256', extra_scales=(
                    # S=384 from the S=256 net at lr 1e-3; jittered S from the S=384 net.
                    TrainingScale('384', 384, 384, (384,), (352, 384, 416), '256', 1e-3),
                    TrainingScale('256-512', 256, 512, (384,), (256, 384, 512), '384', 1e-3)))


def run_name(variant: str, seed: int, scale: str = '') -> str:
  return f'{variant}_S{scale}_seed{seed}' if scale else f'{variant}_seed{seed}'


def plan_runs(preset: Preset, root: str, seed: int):
  """[(variant, scale column, workdir, config, single Q, multi Q)] in training order."""
  runs = []
  for variant in VARIANTS:
    config = preset.make_config(variant)
    config.seed = seed
    if preset.warm_start and variant not in ('A', 'A-LRN'):
      config.init_from = os.path.join(root, run_name('A', seed))
    runs.append((variant, preset.scale_name, os.path.join(root, run_name(variant, seed)),
                 config, preset.single_scales, preset.multi_scales))
  for extra in preset.extra_scales:
    for variant in SCALE_VARIANTS:
      config = preset.make_config(variant)
      config.seed = seed
      source = '' if extra.start_from == preset.scale_name else extra.start_from
      config.init_from = os.path.join(root, run_name(variant, seed, source))
      config.init_layers = models.layer_names(variant)  # The whole net.
      config.learning_rate = extra.learning_rate
      config.data.scale_min, config.data.scale_max = extra.scale_min, extra.scale_max
      config.data.eval_scale = extra.single_scales[0]
      runs.append((variant, extra.name, os.path.join(root, run_name(variant, seed, extra.name)),
                   config, extra.single_scales, extra.multi_scales))
  return runs


def train_run(config, workdir: str) -> None:
  """Trains (or resumes, or skips when finished) one configuration."""
  # Imported here, after main() set up host memory: TensorFlow starts threads on import.
  from vgg_jax import train  # pylint: disable=g-import-not-at-top
  done = os.path.join(workdir, 'done.json')
  if os.path.exists(done):
    logging.info('%s is finished: skipped.', workdir)
    return
  result = train.train_and_evaluate(config, workdir)
  if result.get('preempted'):
    raise SystemExit(143)
  monitoring.write_file_atomically(done, json.dumps(
      {k: v for k, v in result.items() if isinstance(v, (int, float, bool))}))


def evaluate_run(workdir: str, protocol: str, scales, flip: bool) -> dict:
  """Cached evaluation of a run's best checkpoint with a protocol at scales."""
  # Imported here, after main() set up host memory: TensorFlow starts threads on import.
  from vgg_jax import evaluate  # pylint: disable=g-import-not-at-top
  key = (f"eval_{protocol.replace('+', '_')}_{'_'.join(map(str, scales))}"
         f"{'' if flip else '_noflip'}.json")
  path = os.path.join(workdir, key)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  config = base.eval_config()
  config.protocol, config.scales, config.flip, config.batch_size = (protocol, tuple(scales),
                                                                    flip, 256)
  result = evaluate.run(config, [workdir])
  monitoring.write_file_atomically(path, json.dumps(result))
  return result


def summarize(rows, variants):
  """Mean and standard deviation over seeds, per variant and column, in %."""
  table = {}
  for variant in variants:
    mine = [r for r in rows if r['variant'] == variant]
    table[variant] = {}
    for column in ('single_top1', 'single_top5', 'multi_top1', 'multi_top5'):
      values = 100 * np.asarray([r[column] for r in mine])
      table[variant][column] = (values.mean(), values.std(), len(values))
  return table


def write_markdown(path, table, preset: Preset, name: str, seconds: float,
                   extra_tables=None):
  extra_tables = extra_tables or {}

  def cell(stats):
    mean, std, n = stats
    return f'{mean:.2f} ± {std:.2f}' if n > 1 else f'{mean:.2f}'
  lines = [f'# A -> E depth ablation: preset `{name}`', '',
           f'Command: `python -m experiments.ablation --preset={name} --workdir=DIR'
           f'{" --quick" if _QUICK.value else ""}`  ',
           f'Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, '
           f'{os.cpu_count()} CPU cores ({platform.platform()}); '
           f'wall time {seconds / 60:.1f} min (this invocation).  ',
           f'Seeds per configuration: {preset.seeds}; mean ± std over seeds; errors in %.',
           '', f'## Table 3 shape: single test scale, centre crop, Q = '
           f'{",".join(map(str, preset.single_scales))}', '']
  header = '| config | weight layers | top-1 err | top-5 err |'
  if preset.paper:
    header += ' paper top-1 | paper top-5 |'

  def table_lines(column, paper_table):
    out = [header, '|' + '---|' * (header.count('|') - 1)]
    for variant, columns in table.items():
      row = (f'| {variant} | {len(models.layer_names(variant))} | '
             f'{cell(columns[column + "_top1"])} | {cell(columns[column + "_top5"])} |')
      if preset.paper:
        paper = paper_table.get(variant, ('', ''))
        row += f' {paper[0]} | {paper[1]} |'
      out.append(row)
    return out

  lines += table_lines('single', PAPER_TABLE3)
  lines += ['', f'## Table 4 shape: multi-scale test, {preset.multi_protocol} evaluation'
            f'{"" if preset.flip else " without flips"}, '
            f'Q = {{{",".join(map(str, preset.multi_scales))}}}', '']
  lines += table_lines('multi', PAPER_TABLE4)
  if preset.extra_scales:
    lines += ['', '## Training-scale columns (C, D, E): top-1 / top-5 error', '',
              '| config | train S | single Q | top-1 / top-5 | multi Q | top-1 / top-5 |'
              + (' paper single | paper multi |' if preset.paper else ''),
              '|---|---|---|---|---|---|' + ('---|---|' if preset.paper else '')]
    for extra in preset.extra_scales:
      for variant, columns in extra_tables.get(extra.name, {}).items():
        row = (f'| {variant} | {extra.name} | {extra.single_scales[0]} | '
               f'{cell(columns["single_top1"])} / {cell(columns["single_top5"])} | '
               f'{",".join(map(str, extra.multi_scales))} | '
               f'{cell(columns["multi_top1"])} / {cell(columns["multi_top5"])} |')
        if preset.paper:
          single, multi = PAPER_SCALES.get(extra.name, {}).get(variant, (('', ''),) * 2)
          row += f' {single[0]} / {single[1]} | {multi[0]} / {multi[1]} |'
        lines.append(row)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def write_plot(path, rows, table, title: str):
  import matplotlib  # pylint: disable=g-import-not-at-top  (optional: the ablation extra)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, metric, label in ((axes[0], 'top1', 'top-1 error (%)'),
                            (axes[1], 'top5', 'top-5 error (%)')):
    for column, marker, name in (('single', 'o', 'single scale'), ('multi', 's', 'multi-scale')):
      for i, variant in enumerate(table):
        layers = len(models.layer_names(variant)) + (0.25 if variant == 'A-LRN' else 0)
        seeds = [100 * r[f'{column}_{metric}'] for r in rows if r['variant'] == variant]
        offset = -0.12 if column == 'single' else 0.12
        ax.scatter([layers + offset] * len(seeds), seeds, marker=marker, s=14, alpha=0.35,
                   color=f'C{i}')
        mean, std, _ = table[variant][f'{column}_{metric}']
        ax.errorbar(layers + offset, mean, yerr=std, fmt=marker, color=f'C{i}', capsize=3,
                    label=f'{variant} ({name})' if metric == 'top1' else None)
    ax.set_xlabel('weight layers (A-LRN drawn at 11.25)')
    ax.set_ylabel(label)
    ax.set_xticks([11, 13, 16, 19])
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=6, ncol=2)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  if _REUSE_HOST_MEMORY.value:
    host_memory.reuse_freed_memory()  # Faster CPU steps, before JAX starts its threads.
  checkpointing.quiet_orbax_logs()
  start = time.time()
  name = _PRESET.value
  preset = get_preset(name, _QUICK.value)
  seeds = _SEEDS.value or preset.seeds
  root = os.path.abspath(_WORKDIR.value)
  os.makedirs(root, exist_ok=True)
  rows = []
  for seed in range(seeds):
    for variant, scale, workdir, config, single_q, multi_q in plan_runs(preset, root, seed):
      logging.info('=== %s S=%s seed %d (%s) ===', variant, scale or '-', seed, workdir)
      train_run(config, workdir)
      single = evaluate_run(workdir, 'single', single_q, preset.flip)
      multi = evaluate_run(workdir, preset.multi_protocol, multi_q, preset.flip)
      rows.append({'variant': variant, 'train_scale': scale, 'seed': seed,
                   'weight_layers': len(models.layer_names(variant)),
                   'single_top1': single['top1_error'], 'single_top5': single['top5_error'],
                   'multi_top1': multi['top1_error'], 'multi_top5': multi['top5_error'],
                   'eval_images': single['num_images']})
  with open(os.path.join(root, 'ablation.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  main_rows = [r for r in rows if r['train_scale'] == preset.scale_name]
  table = summarize(main_rows, VARIANTS)
  extra_tables = {e.name: summarize([r for r in rows if r['train_scale'] == e.name],
                                    SCALE_VARIANTS) for e in preset.extra_scales}
  seconds = time.time() - start
  write_markdown(os.path.join(root, 'ablation.md'), table, preset, name, seconds, extra_tables)
  write_plot(os.path.join(root, 'ablation.png'), main_rows, table,
             f'VGG depth ablation, preset {name}: {seeds} seed(s) per configuration')
  print(open(os.path.join(root, 'ablation.md')).read())
  print(f'Wrote {root}/ablation.md, ablation.csv, ablation.png in {seconds / 60:.1f} min.')


if __name__ == '__main__':
  app.run(main)
