"""The ablation's report: Tables 3-6 in the paper's shapes, the scatter plot and the curves.

experiments.ablation trains and evaluates; this module only turns its rows (one per run)
and the runs' metrics.jsonl into DIR/ablation.md, DIR/ablation.png and
DIR/ablation_curves.png.
"""

import datetime
import os
import platform

import numpy as np

from vgg_jax import files
from vgg_jax import models
from vgg_jax.training import monitoring

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
# Table 5 (S jittered, Q = {256, 384, 512}): dense, multi-crop, both.
PROTOCOLS_TABLE5 = ('dense', 'multicrop', 'dense+multicrop')
PAPER_TABLE5 = {'D': {'dense': (24.8, 7.5), 'multicrop': (24.6, 7.5),
                      'dense+multicrop': (24.4, 7.2)},
                'E': {'dense': (24.8, 7.5), 'multicrop': (24.6, 7.4),
                      'dense+multicrop': (24.4, 7.1)}}
PAPER_TABLE6 = {'best two': ('D+E, dense+multicrop', (23.7, 6.8))}
INIT_NAMES = {'warm': 'warm start from A (Sec. 3.1)', 'glorot': 'Glorot, no pre-training',
              'paper': 'N(0, 0.01^2)'}


def column_key(row) -> tuple[str, float]:
  return row['init'], row['budget']


def column_order(key) -> tuple[float, int, str]:
  """Columns by budget, the shallow nets' runs, then the warm start (the paper's way)."""
  init, budget = key
  return budget, {'': -1, 'warm': 0}.get(init, 1), init


def column_name(init: str, budget: float, steps: int) -> str:
  return f'{INIT_NAMES.get(init, init)}, {steps} steps' + (f' ({budget:g}x A)'
                                                          if budget != 1 else '')


def stats(values) -> tuple[float, float, int]:
  values = 100 * np.asarray(values, np.float64)
  return values.mean(), values.std(), len(values)


def cell(values) -> str:
  mean, std, n = stats(values)
  return f'{mean:.2f} ± {std:.2f}' if n > 1 else f'{mean:.2f}'


def plural(count: int, noun: str) -> str:
  return f'{count} {noun}' + ('' if count == 1 else 's')


def budget_used(rows) -> str:
  """What the runs were given, from the runs themselves: one part per group of runs."""
  groups = {}  # (train scale, init, budget) -> (variants, steps), in training order.
  for row in rows:
    variants, steps = groups.setdefault((row['train_scale'], row['init'], row['budget']),
                                        ([], set()))
    if row['variant'] not in variants:
      variants.append(row['variant'])
    steps.add(int(row['steps']))
  parts = []
  for (scale, init, budget), (variants, steps) in groups.items():
    how = f'with {INIT_NAMES.get(init, init)}' if init else 'from scratch'
    span = f'{min(steps)}' if len(steps) == 1 else f'{min(steps)}-{max(steps)}'
    parts.append(f'{", ".join(variants)}{f" at S = {scale}" if scale else ""} {how}: '
                 f'{span} steps' + (f' ({budget:g}x A)' if init and budget != 1 else ''))
  seeds = len({row['seed'] for row in rows})
  return (f'Budget used: {plural(len(rows), "run")}, {plural(seeds, "seed")} per '
          f'configuration. ' + '; '.join(parts) + '.')


def depth_table(rows, variants, metric: str, paper=None) -> list[str]:
  """Table 3/4 shape: one row per configuration, one column per (init, budget).

  The shallow nets (A, A-LRN: init '' in the rows) are trained once: their figures stand
  in the first column only (the others show '-'), as each run is shown once.
  """
  deep = sorted({column_key(r) for r in rows if r['init']}, key=column_order)
  columns = deep or [('', 1.0)]
  names = [column_name(init, budget, next(r['steps'] for r in rows
                                           if column_key(r) == (init, budget)))
           for init, budget in columns] if deep else ['top-1 / top-5 err']
  header = '| config | weight layers | ' + ' | '.join(names) + ' |'
  if paper:
    header += ' paper top-1 / top-5 |'
  lines = [header, '|' + '---|' * (header.count('|') - 1)]
  for variant in variants:
    mine = [r for r in rows if r['variant'] == variant]
    if not mine:
      continue
    cells = []
    for c, column in enumerate(columns):
      chosen = [r for r in mine if (not r['init'] and c == 0) or column_key(r) == column]
      cells.append(f'{cell([r[metric + "_top1"] for r in chosen])} / '
                   f'{cell([r[metric + "_top5"] for r in chosen])}' if chosen else '-')
    line = (f'| {variant} | {len(models.layer_names(variant))} | ' + ' | '.join(cells) + ' |')
    if paper:
      figures = paper.get(variant)
      line += f' {figures[0]} / {figures[1]} |' if figures else ' |'
    lines.append(line)
  return lines


def scale_table(rows, preset) -> list[str]:
  """The further training-scale columns of Tables 3 and 4 (C, D, E)."""
  lines = ['| config | train S | single Q | top-1 / top-5 | multi Q | top-1 / top-5 |'
           + (' paper single | paper multi |' if preset.paper else ''),
           '|---|---|---|---|---|---|' + ('---|---|' if preset.paper else '')]
  for extra in preset.extra_scales:
    for variant in ('C', 'D', 'E'):
      mine = [r for r in rows if r['train_scale'] == extra.name and r['variant'] == variant]
      if not mine:
        continue
      line = (f'| {variant} | {extra.name} | {extra.single_scales[0]} | '
              f'{cell([r["single_top1"] for r in mine])} / '
              f'{cell([r["single_top5"] for r in mine])} | '
              f'{",".join(map(str, extra.multi_scales))} | '
              f'{cell([r["multi_top1"] for r in mine])} / '
              f'{cell([r["multi_top5"] for r in mine])} |')
      if preset.paper:
        single, multi = PAPER_SCALES.get(extra.name, {}).get(variant, (('', ''),) * 2)
        line += f' {single[0]} / {single[1]} | {multi[0]} / {multi[1]} |'
      lines.append(line)
  return lines


def table5(results, preset) -> list[str]:
  """Dense vs multi-crop vs both: results {variant: {protocol: [eval results over seeds]}}."""
  header = '| config | ' + ' | '.join(f'{p} top-1 / top-5' for p in PROTOCOLS_TABLE5) + ' |'
  if preset.paper:
    header += ' paper dense | paper multi-crop | paper both |'
  lines = [header, '|' + '---|' * (header.count('|') - 1)]
  for variant, by_protocol in results.items():
    cells = [f'{cell([r["top1_error"] for r in by_protocol[p]])} / '
             f'{cell([r["top5_error"] for r in by_protocol[p]])}' for p in PROTOCOLS_TABLE5]
    line = f'| {variant} | ' + ' | '.join(cells) + ' |'
    if preset.paper:
      paper = PAPER_TABLE5.get(variant, {})
      line += ''.join(f' {paper[p][0]} / {paper[p][1]} |' if p in paper else ' |'
                      for p in PROTOCOLS_TABLE5)
    lines.append(line)
  return lines


def table6(fusions, preset) -> list[str]:
  """Fusion rows: [(name, runs, eval result)] of posteriors averaged over the runs."""
  header = '| models | runs | protocol | views/image | top-1 err | top-5 err |'
  if preset.paper:
    header += ' paper |'
  lines = [header, '|' + '---|' * (header.count('|') - 1)]
  for name, runs, result in fusions:
    line = (f'| {name} | {", ".join(runs) if len(runs) <= 3 else f"{len(runs)} runs"} | '
            f'{result["protocol"]} | {result["views_per_image"]} | '
            f'{100 * result["top1_error"]:.2f} | '
            f'{100 * result["top5_error"]:.2f} |')
    if preset.paper:
      paper = PAPER_TABLE6.get(name)
      line += f' {paper[0]}: {paper[1][0]} / {paper[1][1]} |' if paper else ' |'
    lines.append(line)
  return lines


def write_markdown(path, rows, preset, header: dict, table5_results, fusions):
  """DIR/ablation.md: the run's provenance, then Tables 3-6 in the paper's shapes."""
  main = [r for r in rows if r['train_scale'] == preset.scale_name]
  flips = '' if preset.flip else ' without flips'
  lines = [f'# A -> E depth ablation: preset `{header["preset"]}`', '',
           f'Command: `{header["command"]}`  ',
           f'Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, '
           f'{os.cpu_count()} CPU cores ({platform.platform()}); '
           f'wall time {header["seconds"] / 60:.1f} min (this invocation).  ',
           'Errors in %, top-1 / top-5; with several seeds, mean ± std over them.  ',
           budget_used(rows) + '  ',
           ('The preset\'s own budget, which --quick replaces with a few steps at a tiny '
            'width: ' if header.get('quick') else 'The preset\'s budget rule: ')
           + header['budget_rule'], '',
           f'## Table 3 shape: single test scale, centre crop, Q = '
           f'{",".join(map(str, preset.single_scales))}', '']
  lines += depth_table(main, preset.variants, 'single', PAPER_TABLE3 if preset.paper else None)
  if len({column_key(r) for r in main if r['init']}) > 1 and any(not r['init'] for r in main):
    lines += ['', 'A and A-LRN are trained once, from scratch: their figures stand in the '
              'first column only, here and in Table 4.']
  lines += ['', f'## Table 4 shape: multi-scale test, {preset.multi_protocol} evaluation'
            f'{flips}, Q = {{{",".join(map(str, preset.multi_scales))}}}', '']
  lines += depth_table(main, preset.variants, 'multi', PAPER_TABLE4 if preset.paper else None)
  if preset.extra_scales:
    lines += ['', '## Training-scale columns (C, D, E)', ''] + scale_table(rows, preset)
  subset = (f', the first {preset.fusion_examples} test images' if preset.fusion_examples
            and preset.fusion_examples != preset.eval_max_examples else '')
  if table5_results:
    lines += ['', f'## Table 5 shape: dense vs multi-crop vs both{flips}, '
              f'Q = {{{",".join(map(str, preset.fusion_scales))}}} ({preset.table5_note})'
              f'{subset}', '']
    lines += table5(table5_results, preset)
  if fusions:
    lines += ['', f'## Table 6 shape: fusion (softmax posteriors averaged){flips}, '
              f'Q = {{{",".join(map(str, preset.fusion_scales))}}}{subset}', '']
    lines += table6(fusions, preset)
  files.write_file_atomically(path, '\n'.join(lines) + '\n')


# Configurations that share a depth with another, drawn beside it: A-LRN (A's 11), C (D's 16).
DEPTH_SHIFT = {'A-LRN': 0.25, 'C': -0.4}


def write_plot(path, rows, variants, title: str):
  """Single- and multi-scale top-1/top-5 error against depth, one colour per column."""
  # Optional: the ablation extra. A bare Figure (no pyplot) renders with Agg, no display.
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  columns = sorted({column_key(r) for r in rows}, key=column_order)
  fig = figure.Figure(figsize=(11, 5))
  axes = fig.subplots(1, 2)
  for ax, metric in ((axes[0], 'top1'), (axes[1], 'top5')):
    for c, column in enumerate(columns):
      for test, marker in (('single', 'o'), ('multi', 's')):
        xs, means, stds = [], [], []
        for variant in variants:
          mine = [100 * r[f'{test}_{metric}'] for r in rows
                  if r['variant'] == variant and column_key(r) == column]
          if mine:
            depth = len(models.layer_names(variant)) + DEPTH_SHIFT.get(variant, 0)
            xs.append(depth + (0.1 * c) + (-0.05 if test == 'single' else 0.05))
            means.append(np.mean(mine))
            stds.append(np.std(mine))
        if xs:
          label = (f'{INIT_NAMES.get(column[0], "A, A-LRN, trained once")}'
                   f'{f" {column[1]:g}x" if column[1] != 1 else ""} ({test})')
          ax.errorbar(xs, means, yerr=stds, fmt=marker, color=f'C{c}', capsize=3,
                      alpha=1.0 if test == 'single' else 0.55, label=label)
    ax.set_xlabel('weight layers (A-LRN drawn at 11.25, C at 15.6: they share a depth)')
    ax.set_ylabel(f'{metric[:3]}-{metric[3]} error (%)')
    ax.set_xticks([11, 13, 16, 19])
    ax.grid(alpha=0.3)
  # Below both panels, where it covers no point.
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', ncol=3, fontsize=8, frameon=False)
  fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.06 * ((len(labels) + 2) // 3), 1, 1))
  fig.savefig(path, dpi=120)


def eval_curve(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, eval top-1 error %) from a run's metrics.jsonl."""
  path = os.path.join(workdir, 'metrics.jsonl')
  points = {row['step']: row['eval/top1_error'] for row in monitoring.read_metrics(path)
            if 'eval/top1_error' in row}
  steps = np.asarray(sorted(points))
  return steps, np.asarray([100 * points[s] for s in steps])


# Per initialisation, a line style and a marker of its own (colour is the configuration).
CURVE_STYLES = {'': ('-', 'o'), 'warm': ('-', 's'), 'glorot': ('--', '^'),
                'paper': (':', 'D')}


def write_curves(path, rows, variants, title: str):
  """Eval top-1 error against the step, mean over seeds, per configuration and column.

  Colour is the configuration, line style and marker the initialisation. A line that a
  later one covers exactly (two nets at chance, say) is drawn wider, once per line over
  it, so it still shows around them. The y axis is logarithmic only where the errors span
  more than 3x.
  Returns the figure, for tests to read.
  """
  # Optional: the ablation extra. A bare Figure (no pyplot) renders with Agg, no display.
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(8.5, 5))
  ax = fig.subplots()
  curves = []
  for v, variant in enumerate(variants):
    for init, budget in sorted({column_key(r) for r in rows if r['variant'] == variant},
                               key=column_order):
      runs = [r for r in rows if r['variant'] == variant and column_key(r) == (init, budget)]
      read = [eval_curve(r['workdir']) for r in runs]
      common = sorted(set.intersection(*(set(s.tolist()) for s, _ in read)))
      if common:
        mean = np.mean([[dict(zip(s.tolist(), e))[t] for t in common] for s, e in read], 0)
        label = (f'{variant}{f" {init}" if init else ""}'
                 f'{f" {budget:g}x" if budget != 1 else ""}')
        curves.append((v, init, budget, common, mean, label))
  for i, (v, init, budget, steps, mean, label) in enumerate(curves):
    style, marker = CURVE_STYLES.get(init, ('-.', 'v'))
    covered = sum(later[3] == steps and np.allclose(later[4], mean, atol=0.05)
                  for later in curves[i + 1:])
    ax.plot(steps, mean, linestyle=style, marker=marker, color=f'C{v % 10}',
            linewidth=1.5 + 2.5 * covered, markersize=5 + 4 * covered,
            alpha=1.0 if budget == 1 else 0.55, label=label, zorder=2 + i)
  values = np.concatenate([c[4] for c in curves]) if curves else np.ones(1)
  positive = values[values > 0]
  logarithmic = positive.size and positive.max() > 3 * positive.min()
  if logarithmic:  # Plain numbers at 1-2-5 steps, not powers of ten.
    ax.set_yscale('log')
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
  ax.set_xlabel('training step')
  ax.set_ylabel('eval top-1 error (%), mean over seeds'
                + (' (log scale)' if logarithmic else ''))
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8, ncol=2, title='configuration, initialisation', title_fontsize=8)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return fig
