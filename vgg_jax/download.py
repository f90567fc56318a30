"""Fetches a named weights file once: resumable download, hash check, a lock between processes.

fetch(entry, directory) returns the path of a verified copy of entry's file: from
VGG_JAX_MIRROR when set (a base URL, or a local directory read in place), else from the
publisher's URL. A download goes to <file>.part and resumes with an HTTP Range request
when a previous one broke off; the hash is checked on the whole file before anything
reads it, and a file with the wrong bytes is deleted. A progress line (MB, MB/s, ETA) goes
to stderr.
"""

import contextlib
import fcntl
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request

from vgg_jax import named_weights

TIMEOUT_SECONDS = 10.0  # Per connect and per read: no network fails in well under 30 s.
CHUNK_BYTES = 1 << 20
# What fetch reads of an entry: url, file_name, hash_kind, hash, size_bytes.
Entry = named_weights.Weights | named_weights.LinearWeights


class DownloadError(RuntimeError):
  """The file could not be had: no network, a dropped connection, the wrong bytes."""


def digest(path: str, kind: str) -> str:
  """The hex sha256 or md5 of a file, read in chunks."""
  hasher = hashlib.new(kind)
  with open(path, 'rb') as f:
    while block := f.read(CHUNK_BYTES):
      hasher.update(block)
  return hasher.hexdigest()


def check_hash(entry: Entry, path: str, origin: str):
  """Raises DownloadError naming the file and both hashes unless path holds entry's bytes."""
  actual = digest(path, entry.hash_kind)
  if not actual.startswith(entry.hash):  # sha256: a prefix, as torch.hub checks; md5: all.
    raise DownloadError(f'{entry.file_name} from {origin} has the wrong bytes: {entry.hash_kind} '
                        f'{actual}, expected {entry.hash}{"..." if len(entry.hash) < 32 else ""}.')


def manual_hint(entry: Entry) -> str:
  if isinstance(entry, named_weights.LinearWeights):
    return (f'Or download {entry.url} yourself (or take lpips/weights/v{entry.version}/vgg.pth '
            f'from the lpips wheel) and pass its path as lin_weights (--lin_weights).')
  return (f'Or download {entry.url} yourself and run: python -m vgg_jax.pretrained '
          f'--source={entry.layout} --weights={entry.file_name} --variant={entry.variant}'
          f'{"" if entry.include_top else " --notop"} --out=DIR, then load DIR.')


def fetch(entry: Entry, directory: str,
          timeout: float = TIMEOUT_SECONDS) -> tuple[str, bool]:
  """(path of a verified copy of entry's file, whether it is ours to delete after use)."""
  mirror = os.environ.get(named_weights.MIRROR_ENV, '')
  if mirror and '://' not in mirror:  # A local directory: read in place, never copied.
    path = os.path.join(mirror, entry.file_name)
    if not os.path.isfile(path):
      raise DownloadError(f'{named_weights.MIRROR_ENV}={mirror} holds no {entry.file_name}.')
    check_hash(entry, path, path)
    return path, False
  url = f'{mirror.rstrip("/")}/{entry.file_name}' if mirror else entry.url
  os.makedirs(directory, exist_ok=True)
  part = os.path.join(directory, entry.file_name + '.part')
  download(url, part, entry, timeout)
  try:
    check_hash(entry, part, url)
  except DownloadError as error:
    os.remove(part)
    raise DownloadError(f'{error} The download was deleted.') from None
  path = part.removesuffix('.part')
  os.replace(part, path)
  return path, True


def download(url: str, part: str, entry: Entry, timeout: float):
  """Appends url's bytes to part (resuming where it stops) until it is whole."""
  have = os.path.getsize(part) if os.path.exists(part) else 0
  request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
  try:
    response = urllib.request.urlopen(request, timeout=timeout)
  except urllib.error.HTTPError as error:
    if error.code == 416 and have:  # The part is already whole; the hash check decides.
      return
    raise DownloadError(f'{url}: HTTP {error.code} {error.reason}.') from error
  except OSError as error:  # URLError, refused, timed out, no route.
    raise DownloadError(
        f'Cannot reach {url} ({getattr(error, "reason", error)}). Without internet, set '
        f'{named_weights.MIRROR_ENV} to a directory or base URL holding {entry.file_name}. '
        f'{manual_hint(entry)}') from error
  with response:
    if have and response.status != 206:  # The server ignored the Range: start again.
      have = 0
    length = response.headers.get('Content-Length')
    total = have + int(length) if length is not None else entry.size_bytes
    progress = Progress(entry.file_name, total, have)
    with open(part, 'ab' if have else 'wb') as f:
      try:
        while block := response.read(CHUNK_BYTES):
          f.write(block)
          progress.update(len(block))
      except OSError as error:  # Reset or timed out mid-file (http.client errors included).
        raise DownloadError(f'{url}: the connection dropped after {progress.done:,} bytes '
                            f'({error}); the next load resumes from there.') from error
  progress.finish()
  if total is not None and progress.done != total:
    raise DownloadError(f'{url}: the connection closed after {progress.done:,} of {total:,} '
                        'bytes; the next load resumes from there.')


class Progress:
  """A progress line on stderr (MB, MB/s, ETA), at most every half second."""

  def __init__(self, name: str, total: int | None, done: int):
    self.name, self.total, self.done, self.start_bytes = name, total, done, done
    self.start = self.last = time.monotonic()

  def update(self, count: int):
    self.done += count
    if time.monotonic() - self.last >= 0.5:
      self.last = time.monotonic()
      self.show('\r' if sys.stderr.isatty() else '\n')

  def show(self, end: str):
    elapsed = max(time.monotonic() - self.start, 1e-9)
    rate = (self.done - self.start_bytes) / elapsed
    line = f'{self.name}: {self.done / 1e6:.1f}'
    if self.total:
      eta = (self.total - self.done) / rate if rate > 0 else float('inf')
      line += f' / {self.total / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s, ETA {eta:.0f} s'
    else:
      line += f' MB, {rate / 1e6:.1f} MB/s'
    sys.stderr.write(line + end)
    sys.stderr.flush()

  def finish(self):
    self.show('\n')


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive lock on path between processes of this host; says so when it waits."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      sys.stderr.write(f'Waiting for another process holding {path}...\n')
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
