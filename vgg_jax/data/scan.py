"""Image folders checked once before training: every file decoded, the result cached.

Each file is decoded with TensorFlow's decoder (the one training uses) on a thread pool,
and its EXIF orientation read with PIL. The result is cached as JSON in the work dir,
keyed by the folder, the split and every file's size and mtime: a rerun reads the cache,
and only new or changed files are decoded again.
"""

import concurrent.futures
import hashlib
import json
import os
import re
import time

from absl import logging
from PIL import Image
import tensorflow as tf

from vgg_jax import errors
from vgg_jax import stderr
from vgg_jax.data import preprocessing
from vgg_jax import files

PROGRESS_EVERY_S = 5.0  # Seconds between progress lines while checking a folder.
MAX_LISTED = 20  # Bad files named in the error; the rest are counted.
EXIF_ORIENTATION = 0x0112
# What libjpeg and tf.data print for a file that does not decode; the check names it itself.
DECODER_NOISE = ('Improper call to JPEG library', 'Premature end of JPEG data',
                 'Corrupt JPEG data', 'Local rendezvous is aborting')


def read_orientation(path: str) -> int:
  """The EXIF orientation (1..8) of an image file, as PIL reads it; 1 if none."""
  try:
    with Image.open(path) as image:
      orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
  except Exception:  # pylint: disable=broad-except  (PIL cannot open it: TF decides.)
    return 1
  return orientation if 1 <= orientation <= 8 else 1


def reason(error: tf.errors.OpError) -> str:
  """TensorFlow's error message without the op and function names around it."""
  message = (error.message or type(error).__name__).splitlines()[0]
  message = re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', message)
  return re.sub(r'\s*\[Op:\w+\].*$', '', message)


def check_file(path: str) -> dict:
  """{'error': None or why TF cannot decode it, 'orientation': EXIF 1..8} of one file."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
    preprocessing.decode_image(tf.constant(data), True)
  except tf.errors.OpError as error:
    return {'error': reason(error), 'orientation': 1}
  except OSError as error:
    return {'error': str(error), 'orientation': 1}
  return {'error': None, 'orientation': read_orientation(path)}


def check_files(paths: list[str], what: str) -> list[dict]:
  """check_file of every path on os.cpu_count() threads, with a progress log line."""
  if not paths:
    return []
  start = last = time.perf_counter()
  results = []
  threads = max(1, os.cpu_count() or 1)
  with (stderr.dropping(DECODER_NOISE),
        concurrent.futures.ThreadPoolExecutor(threads) as pool):
    for result in pool.map(check_file, paths):
      results.append(result)
      now = time.perf_counter()
      if now - last >= PROGRESS_EVERY_S:
        last = now
        logging.info('Checking %s: %d/%d images decoded (%.0f images/s).', what,
                     len(results), len(paths), len(results) / (now - start))
  seconds = time.perf_counter() - start
  logging.info('Checked %d images of %s in %.1fs (%.0f images/s).', len(paths), what,
               seconds, len(paths) / max(seconds, 1e-9))
  return results


def _stamp(path: str) -> list[int]:
  stat = os.stat(path)
  return [stat.st_size, stat.st_mtime_ns]


def cache_path(cache_dir: str, root: str, split: str) -> str:
  """The JSON cache of one folder split's check in cache_dir."""
  digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
  name = os.path.basename(os.path.normpath(root)) or 'folder'
  return os.path.join(cache_dir, f'folder_check_{name}_{split}_{digest}.json')


def _load_cache(path: str, key: dict) -> tuple[dict, bool]:
  """Cached per-file results still valid for the files as they are now; stale or not."""
  if not path or not os.path.exists(path):
    return {}, True
  with open(path) as f:
    cached = json.load(f)
  if cached.get('root') != key['root'] or cached.get('split') != key['split']:
    return {}, True
  old, now = cached.get('files', {}), key['files']
  valid = {rel: entry for rel, entry in old.items()
           if rel in now and [entry['size'], entry['mtime_ns']] == now[rel]}
  changed = sum(rel in now for rel in old) - len(valid)
  added, removed = sum(rel not in old for rel in now), sum(rel not in now for rel in old)
  if changed or added or removed:
    logging.info('The folder check cache %s is out of date (%d files changed, %d added, '
                 '%d removed): checking those again.', path, changed, added, removed)
  return valid, bool(changed or added or removed)


def check_folder(root: str, split: str, paths: list[str], cache_dir: str | None = None,
                 skip_corrupt: bool = False) -> list[dict]:
  """check_file of every path (files under root/split), read from or added to the cache.

  Returns one {'error', 'orientation'} per path. Undecodable files raise one ValueError
  naming them all, before anything is written, unless skip_corrupt (then a warning).
  """
  split_dir = os.path.join(os.path.abspath(root), split)
  rels = [os.path.relpath(p, split_dir) for p in paths]
  key = {'root': os.path.abspath(root), 'split': split,
         'files': {rel: _stamp(p) for rel, p in zip(rels, paths)}}
  cache = cache_path(cache_dir, root, split) if cache_dir else ''
  entries, stale = _load_cache(cache, key)
  todo = [i for i, rel in enumerate(rels) if rel not in entries]
  for i, result in zip(todo, check_files([paths[i] for i in todo], split_dir)):
    size, mtime_ns = key['files'][rels[i]]
    entries[rels[i]] = {'size': size, 'mtime_ns': mtime_ns, **result}
  results = [entries[rel] for rel in rels]
  bad = [(p, r['error']) for p, r in zip(paths, results) if r['error']]
  if bad and not skip_corrupt:
    raise bad_files_error(bad, split_dir)
  if bad:
    logging.warning('Leaving out %d undecodable image file(s) of %s (skip_corrupt): %s',
                    len(bad), split_dir, ', '.join(p for p, _ in bad))
  if cache and stale:
    _write_json(cache, {**key, 'files': {rel: entries[rel] for rel in rels}})
  return results


def _write_json(path: str, contents: dict):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_file_atomically(path, json.dumps(contents))


def bad_files_error(bad: list[tuple[str, str]], where: str) -> ValueError:
  """One error listing the undecodable files and how to go on without them."""
  lines = [f'  {path}: {why}' for path, why in bad[:MAX_LISTED]]
  if len(bad) > MAX_LISTED:
    lines.append(f'  ... and {len(bad) - MAX_LISTED} more')
  return errors.InvalidInput(
      f'{len(bad)} image file(s) in {where} cannot be decoded:\n' + '\n'.join(lines) +
      '\nRemove or replace them, or rerun with --config.data.skip_corrupt=True to train '
      'on the rest (they are then left out with a warning).')
