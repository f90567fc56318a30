"""What a model gets wrong: confusion matrix, per-class table, the most confident errors.

An evaluation feeds a Collector each chunk's posteriors, labels and images; write() then
puts beside the evaluation's JSON (prefix e.g. eval_dense):
  <prefix>_classes.md, .csv  per class: support, top-1 error, the class it is most
                             often taken for (and how often)
  <prefix>_confusion.png     (up to 100 classes) counts, rows the true class, columns the
                             predicted one, coloured by the share of the row
  <prefix>_errors.png        (up to 100 classes) the k most confidently wrong images, most
                             confident first, with true and predicted class and probability
  <prefix>_confused.md       (over 100 classes) the 20 most confused (true, predicted) pairs
With several processes each collects its shard; merged() sums the counts and keeps the k
most confident errors of all. No TensorFlow here; matplotlib draws the pictures.
"""

import math
import os
import time
from typing import Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image

from vgg_jax import files

MAX_PICTURED_CLASSES = 100  # Above: the table and the most confused pairs only.
CONFUSED_PAIRS = 20
SHEET_IMAGES = 25  # k of the contact sheet.
THUMBNAIL = 96  # Pixels; each image letterboxed into a square this size.


def thumbnail(image, mean_rgb) -> np.ndarray:
  """A mean-subtracted image [h, w, 3] as uint8 RGB letterboxed into THUMBNAIL^2."""
  pixels = np.clip(np.asarray(image, np.float32) + np.asarray(mean_rgb, np.float32), 0, 255)
  picture = Image.fromarray(pixels.round().astype(np.uint8))
  scale = THUMBNAIL / max(picture.size)  # Small images (digits) grow, with sharp pixels.
  size = tuple(max(1, min(THUMBNAIL, round(side * scale))) for side in picture.size)
  picture = picture.resize(size, Image.Resampling.NEAREST if scale > 1 else
                           Image.Resampling.BILINEAR)
  square = np.full((THUMBNAIL, THUMBNAIL, 3), 255, np.uint8)
  top, left = (THUMBNAIL - picture.height) // 2, (THUMBNAIL - picture.width) // 2
  square[top:top + picture.height, left:left + picture.width] = np.asarray(picture)
  return square


class Collector:
  """Confusion counts and the k most confidently wrong images seen so far."""

  def __init__(self, num_classes: int, mean_rgb, k: int = SHEET_IMAGES):
    self.confusion = np.zeros((num_classes, num_classes), np.int64)
    self.mean_rgb, self.k, self.seen = mean_rgb, k, 0
    # Errors, most confident first: (confidence, order seen, true, predicted, thumbnail).
    self.errors: list[tuple[float, int, int, int, np.ndarray]] = []

  def add(self, probabilities, labels, images: Sequence[np.ndarray]):
    """One chunk: posteriors [n, C], true labels [n], the images the model saw (n)."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    predicted = np.argmax(probabilities, axis=1)
    np.add.at(self.confusion, (labels, predicted), 1)
    confidence = probabilities[np.arange(len(labels)), predicted]
    least = self.errors[-1][0] if len(self.errors) == self.k else -1.0
    for i in np.flatnonzero((predicted != labels) & (confidence > least)):
      self.errors.append((float(confidence[i]), self.seen + int(i), int(labels[i]),
                          int(predicted[i]), thumbnail(images[i], self.mean_rgb)))
    self.errors = sorted(self.errors, key=lambda e: (-e[0], e[1]))[:self.k]
    self.seen += len(labels)

  def merged(self) -> 'Collector':
    """All processes' counts and errors (collective: every process calls it)."""
    if jax.process_count() == 1:
      return self
    out = Collector(len(self.confusion), self.mean_rgb, self.k)
    out.confusion = np.sum(multihost_utils.process_allgather(self.confusion), axis=0)
    pad = self.k - len(self.errors)
    blank = (-1.0, 0, 0, 0, np.zeros((THUMBNAIL, THUMBNAIL, 3), np.uint8))
    fields = list(zip(*(self.errors + [blank] * pad)))
    gathered = [multihost_utils.process_allgather(np.stack(f)) for f in fields]
    rows = [(float(c), process * 2**40 + int(o), int(t), int(p), th)
            for process in range(jax.process_count())
            for c, o, t, p, th in zip(*(g[process] for g in gathered)) if c >= 0]
    out.errors = sorted(rows, key=lambda e: (-e[0], e[1]))[:self.k]
    return out


def class_rows(confusion: np.ndarray, class_names: Sequence[str]) -> list[dict]:
  """Per class: name, support, top-1 error (None without images), most confused with."""
  rows = []
  for c, name in enumerate(class_names):
    support = int(confusion[c].sum())
    others = confusion[c].copy()
    others[c] = 0
    worst = int(np.argmax(others))
    rows.append({'class': name, 'support': support,
                 'top1_error': 1.0 - confusion[c, c] / support if support else None,
                 'confused_with': class_names[worst] if others[worst] else '',
                 'confused_count': int(others[worst])})
  return rows


def confused_pairs(confusion: np.ndarray, class_names: Sequence[str],
                   k: int = CONFUSED_PAIRS) -> list[tuple[str, str, int]]:
  """The k largest off-diagonal counts as (true, predicted, count), largest first."""
  off = confusion.copy()
  np.fill_diagonal(off, 0)
  order = np.argsort(-off, axis=None, kind='stable')[:k]
  pairs = [np.unravel_index(i, off.shape) for i in order]
  return [(class_names[t], class_names[p], int(off[t, p])) for t, p in pairs if off[t, p]]


def _error_cell(row) -> str:
  return '-' if row['top1_error'] is None else f"{100 * row['top1_error']:.2f}"


def write_tables(prefix: str, rows: list[dict], title: str):
  """<prefix>_classes.md and .csv."""
  md = [f'# {title}', '', '| class | support | top-1 error % | most confused with (count) |',
        '|---|---|---|---|']
  csv = ['class,support,top1_error,confused_with,confused_count']
  for r in rows:
    confused = f"{r['confused_with']} ({r['confused_count']})" if r['confused_count'] else '-'
    md.append(f"| {r['class']} | {r['support']} | {_error_cell(r)} | {confused} |")
    error = '' if r['top1_error'] is None else f"{r['top1_error']:.6f}"
    csv.append(f"{_csv(r['class'])},{r['support']},{error},{_csv(r['confused_with'])},"
               f"{r['confused_count']}")
  files.write_file_atomically(f'{prefix}_classes.md', '\n'.join(md) + '\n')
  files.write_file_atomically(f'{prefix}_classes.csv', '\n'.join(csv) + '\n')


def _csv(text: str) -> str:
  return f'"{text}"' if any(c in text for c in ',"\n') else text


def write(output_dir: str, prefix: str, collector: Collector, class_names: Sequence[str],
          title: str) -> list[str]:
  """Writes the report's files (see the module docstring); returns their paths."""
  prefix = os.path.join(output_dir, prefix)
  names = list(class_names)
  write_tables(prefix, class_rows(collector.confusion, names), title)
  written = [f'{prefix}_classes.md', f'{prefix}_classes.csv']
  if len(names) > MAX_PICTURED_CLASSES:
    lines = [f'# {title}: the {CONFUSED_PAIRS} most confused pairs', '',
             '| true class | predicted | count |', '|---|---|---|']
    lines += [f'| {t} | {p} | {n} |' for t, p, n in confused_pairs(collector.confusion, names)]
    files.write_file_atomically(f'{prefix}_confused.md', '\n'.join(lines) + '\n')
    return written + [f'{prefix}_confused.md']
  plot_confusion(collector.confusion, names, f'{prefix}_confusion.png', title)
  plot_errors(collector.errors, names, f'{prefix}_errors.png', title)
  return written + [f'{prefix}_confusion.png', f'{prefix}_errors.png']


def write_merged(collector: Collector, output_dir: str, prefix: str,
                 class_names: Sequence[str] | None, title: str) -> list[str]:
  """Merges every process's collector (collective), then process 0 writes the report
  (write_or_warn; class names default to the class ids). Returns the paths (others: [])."""
  start, collector = time.perf_counter(), collector.merged()
  if jax.process_index() != 0:
    return []
  names = class_names or [str(i) for i in range(len(collector.confusion))]
  paths = write_or_warn(output_dir, prefix, collector, names, title)
  logging.info('Wrote the evaluation report (%.1f s): %s', time.perf_counter() - start,
               ', '.join(paths))
  return paths


def write_or_warn(*args, **kwargs) -> list[str]:
  """write(), but a failure (a full disk, a plotting error) is a warning, not a crash: the
  report must not cost a training run its final checkpoint or an evaluation its JSON."""
  try:
    return write(*args, **kwargs)
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('Could not write the evaluation report: %s: %s', type(error).__name__,
                    error)
    return []


def plot_confusion(confusion: np.ndarray, names: Sequence[str], path: str, title: str):
  """Counts in each cell (up to 30 classes), colour = share of the true class's images."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  count = len(names)
  side = max(4.0, 0.32 * count + 2.0)
  figure = Figure(figsize=(side + 1.2, side))
  axes = figure.subplots()
  shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  image = axes.imshow(shares, cmap='Blues', vmin=0, vmax=1)
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label='share of the true class')
  axes.set_xticks(range(count), names, rotation=90, fontsize=8)
  axes.set_yticks(range(count), names, fontsize=8)
  axes.set_xlabel('predicted class')
  axes.set_ylabel('true class')
  axes.set_title(title, fontsize=9)
  if count <= 30:
    for t in range(count):
      for p in range(count):
        if confusion[t, p]:
          axes.text(p, t, str(confusion[t, p]), ha='center', va='center', fontsize=7,
                    color='white' if shares[t, p] > 0.5 else 'black')
  figure.tight_layout()
  figure.savefig(path, dpi=100)


def plot_errors(errors, names: Sequence[str], path: str, title: str):
  """The errors' thumbnails in a grid, most confident first, labelled true / predicted.

  One axes spans the figure, in inches, and each thumbnail is an image placed on it: a
  subplot per thumbnail and tight_layout took about 1 s a sheet, longer than a tiny
  training run's evaluation.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  columns = max(1, min(5, len(errors)))
  rows = max(1, math.ceil(len(errors) / columns))
  cell_width, cell_height, side, top = 2.0, 2.3, 1.82, 0.4  # Inches.
  # At least 4 inches wide, so a sheet of one or two errors has room for its title.
  width, height = max(4.0, cell_width * columns), cell_height * rows + top
  margin = (width - cell_width * columns) / 2
  figure = Figure(figsize=(width, height))
  figure.suptitle(f'{title}: most confident errors', fontsize=9)
  axes = figure.add_axes((0, 0, 1, 1))
  axes.axis('off')
  for i, (confidence, _, truth, predicted, picture) in enumerate(errors):
    left = margin + cell_width * (i % columns) + (cell_width - side) / 2
    image_top = top + cell_height * (i // columns) + 0.33
    axes.imshow(picture, extent=(left, left + side, image_top + side, image_top))
    axes.text(left + side / 2, image_top - 0.04,
              f'true: {names[truth]}\npred: {names[predicted]} ({confidence:.1%})',
              ha='center', va='bottom', fontsize=7)
  axes.set_xlim(0, width)
  axes.set_ylim(height, 0)
  axes.set_aspect('auto')
  if not errors:
    figure.text(0.5, 0.5, 'no misclassified images', ha='center', va='center')
  figure.savefig(path, dpi=100)
