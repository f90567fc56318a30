"""ImageNet-1k's 1000 classes in model order: WordNet ids and readable names.

imagenet_classes.tsv (package data) holds one 'wnid<TAB>name' line per class: the ids in
the order tensorflow-datasets' imagenet2012 labels them, the names torchvision's
pretrained models print, in the same order (tests/imagenet_classes_test.py checks both
against the installed packages).
"""

import functools
import importlib.resources

import numpy as np


@functools.cache
def classes() -> tuple[tuple[str, str], ...]:
  """((wnid, name), ...) for the 1000 classes, in model order."""
  text = (importlib.resources.files('vgg_jax.data') / 'imagenet_classes.tsv').read_text()
  return tuple(tuple(line.split('\t')) for line in text.splitlines() if line)


def wnids() -> list[str]:
  return [wnid for wnid, _ in classes()]


@functools.cache
def names_by_wnid() -> dict[str, str]:
  return dict(classes())


def describe(label: str) -> str:
  """'golden retriever (n02099601)' for an ImageNet WordNet id; other labels unchanged."""
  names = names_by_wnid()
  return f'{names[label]} ({label})' if label in names else label


def decode(probabilities, k: int = 5) -> list[list[tuple[str, str, float]]]:
  """The top-k (wnid, name, p) rows of each image's 1000 ImageNet class probabilities.

  probabilities: [B, 1000] (or [1000], read as one image); returns B lists of k rows,
  most probable first, as Keras's decode_predictions does.
  """
  probabilities = np.asarray(probabilities, np.float32)
  if probabilities.ndim == 1:
    probabilities = probabilities[None]
  if probabilities.ndim != 2 or probabilities.shape[1] != len(classes()):
    raise ValueError(f'decode takes ImageNet probabilities [B, {len(classes())}], got shape '
                     f'{probabilities.shape}.')
  if not 1 <= k <= probabilities.shape[1]:
    raise ValueError(f'k={k} must be in 1..{probabilities.shape[1]}.')
  table = classes()
  rows = []
  for p in probabilities:
    best = np.argsort(-p, kind='stable')[:k]
    rows.append([(*table[i], float(p[i])) for i in best])
  return rows
