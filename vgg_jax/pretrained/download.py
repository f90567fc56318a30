"""Fetches a named weights file once: bounded resumable download, hash check, a lock.

fetch(entry, directory) returns the path of a verified private copy of entry's file in
directory (the user's cache): from VGG_JAX_MIRROR when set (a base URL, or a local
directory whose file is copied in first), else from the publisher's URL. Whatever the
source, the bytes that are hashed are the bytes later parsed: the copy in the cache.
A download goes to <file>.part (opened without following links) and resumes with an
HTTP Range request when a previous one broke off. It never grows past the entry's size
(the publisher's rounded size plus 1 MiB where only that is known), and it stops when
fewer than STALL_BYTES arrive in STALL_SECONDS. The hash is checked on the whole file
before anything reads it; a file with the wrong bytes is deleted. A progress line (MB,
MB/s, ETA) goes to stderr. Every failure is a DownloadError, an
untrusted.WeightsFileError.
"""

import contextlib
import fcntl
import hashlib
import math
import os
import sys
import time
import urllib.error
import urllib.request

from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import untrusted

TIMEOUT_SECONDS = 10.0  # Per connect and per read: no network fails in well under 30 s.
STALL_SECONDS, STALL_BYTES = 30.0, 4096  # Fewer bytes than this in that long: stalled.
ROUNDED_SLACK = 1 << 20  # Over a publisher's rounded size, what a download may reach.
CHUNK_BYTES = 1 << 20
# What fetch reads of an entry: url, file_name, hash_kind, hash, size_bytes.
Entry = named_weights.Weights | named_weights.MetricWeights


class DownloadError(untrusted.WeightsFileError):
  """The file could not be had, or was refused: no network, a dropped or stalled
  connection, more bytes than the entry holds, the wrong bytes."""


def digest(path: str, kind: str) -> str:
  """The hex sha256 or md5 of a file, read in chunks."""
  hasher = hashlib.new(kind)
  with open(path, 'rb') as f:
    while block := f.read(CHUNK_BYTES):
      hasher.update(block)
  return hasher.hexdigest()


def max_bytes(entry: Entry) -> int:
  """The most bytes entry's file may have: its exact size, else the rounded one + 1 MiB."""
  if entry.size_bytes:
    return entry.size_bytes
  return math.ceil(entry.size_mib * 2**20) + ROUNDED_SLACK


def check_hash(entry: Entry, path: str, origin: str, pinned: str | None = None) -> str:
  """The file's whole sha256, once path is known to hold entry's bytes (and the pinned
  sha256 of an earlier verified download, where one is recorded); else DownloadError."""
  sha256 = digest(path, 'sha256')
  actual = sha256 if entry.hash_kind == 'sha256' else digest(path, entry.hash_kind)
  if not actual.startswith(entry.hash):  # sha256: a prefix, as torch.hub checks; md5: all.
    raise DownloadError(f'{entry.file_name} from {origin} has the wrong bytes: {entry.hash_kind} '
                        f'{actual}, expected {entry.hash}{"..." if len(entry.hash) < 32 else ""}.')
  if pinned and sha256 != pinned:
    raise DownloadError(f'{entry.file_name} from {origin} has the wrong bytes: sha256 {sha256}, '
                        f'but the verified download of this entry had {pinned}.')
  return sha256


def manual_hint(entry: Entry) -> str:
  if isinstance(entry, named_weights.MetricWeights):
    return (f'Or download {entry.url} yourself (or take {entry.wheel_file} from the '
            f'{entry.package} wheel) and pass its path as {entry.argument} (--{entry.argument}).')
  return (f'Or download {entry.url} yourself and run: python -m vgg_jax.pretrained '
          f'--source={entry.layout} --weights={entry.file_name} --variant={entry.variant}'
          f'{"" if entry.include_top else " --notop"} --out=DIR, then load DIR.')


def fetch(entry: Entry, directory: str, timeout: float = TIMEOUT_SECONDS,
          pinned: str | None = None) -> tuple[str, str]:
  """(path of a verified copy of entry's file in directory, its whole sha256).

  pinned: the sha256 an earlier verified download of the entry had; the new one must
  equal it (trust on first use, for entries whose publisher gives a hash prefix only).
  """
  mirror = os.environ.get(named_weights.MIRROR_ENV, '')
  os.makedirs(directory, exist_ok=True)
  part = os.path.join(directory, entry.file_name + '.part')
  if mirror and '://' not in mirror:  # A local directory: copied in, then verified.
    origin = os.path.join(mirror, entry.file_name)
    copy_from_directory(mirror, origin, part, entry)
  else:
    origin = f'{mirror.rstrip("/")}/{entry.file_name}' if mirror else entry.url
    download(origin, part, entry, timeout)
  try:
    sha256 = check_hash(entry, part, origin, pinned)
  except DownloadError as error:
    os.remove(part)
    raise DownloadError(f'{error} The download was deleted.') from None
  path = part.removesuffix('.part')
  os.replace(part, path)
  return path, sha256


def cached_bytes(entry: Entry, directory: str) -> bytes:
  """The bytes of entry's file kept in directory (fetched once), verified at every use.

  For small files that are kept rather than converted (a metric's learned weights): the
  bytes hashed are the bytes returned for parsing. A cached file with the wrong bytes is
  deleted and fetched again.
  """
  path = os.path.join(directory, entry.file_name)
  with file_lock(os.path.join(directory, f'.{entry.name}.lock')):
    data = _read_verified(entry, path) if os.path.isfile(path) else None
    if data is None:  # Not cached yet, or changed since: fetched (and verified) again.
      fetch(entry, directory)
      data = _read_verified(entry, path)
    if data is None:
      raise DownloadError(f'{path} changed right after it was fetched and verified.')
    return data


def _read_verified(entry: Entry, path: str) -> bytes | None:
  """path's bytes if they are entry's (read once, at most its size + 1), else None."""
  with open(path, 'rb') as f:
    data = f.read(max_bytes(entry) + 1)
  actual = hashlib.new(entry.hash_kind, data).hexdigest()
  return data if len(data) <= max_bytes(entry) and actual.startswith(entry.hash) else None


def open_part(part: str, append: bool):
  """The .part file for writing, refusing a planted link (O_NOFOLLOW)."""
  flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
  return os.fdopen(untrusted.open_no_follow(part, flags), 'ab' if append else 'wb')


def copy_from_directory(mirror: str, origin: str, part: str, entry: Entry):
  """Copies a mirror directory's file into part, at most max_bytes(entry) of it."""
  if not os.path.isdir(mirror):
    raise DownloadError(f'{named_weights.MIRROR_ENV}={mirror} does not exist (or is not a '
                        'directory): set it to a directory or base URL holding '
                        f'{entry.file_name}.')
  if not os.path.isfile(origin):
    raise DownloadError(f'{named_weights.MIRROR_ENV}={mirror} holds no {entry.file_name}: '
                        f'copy {entry.url} into it, or unset {named_weights.MIRROR_ENV} to '
                        f'download from there. {manual_hint(entry)}')
  limit = max_bytes(entry)
  with open(origin, 'rb') as source, open_part(part, append=False) as target:
    copied = 0
    while block := source.read(min(CHUNK_BYTES, limit + 1 - copied)):
      copied += len(block)
      if copied > limit:
        break
      target.write(block)
  if copied > limit:
    os.remove(part)
    raise DownloadError(f'{origin} holds more than the {limit:,} bytes of {entry.file_name}: '
                        'refused (nothing was kept).')


def content_length(response, url: str) -> int | None:
  """The response's Content-Length, or None; a malformed one raises naming url."""
  length = response.headers.get('Content-Length')
  if length is None:
    return None
  if not length.strip().isdigit():
    raise DownloadError(f'{url}: the server sent Content-Length {untrusted.short(length)!r}, '
                        'not a number of bytes.')
  return int(length)


def download(url: str, part: str, entry: Entry, timeout: float):
  """Appends url's bytes to part (resuming where it stops) until it is whole."""
  have = os.path.getsize(part) if os.path.lexists(part) and not os.path.islink(part) else 0
  request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
  try:
    response = urllib.request.urlopen(request, timeout=timeout)
  except urllib.error.HTTPError as error:
    if error.code == 416 and have:  # The part is already whole; the hash check decides.
      return
    raise DownloadError(f'{url}: HTTP {error.code} {error.reason}.') from None
  except OSError as error:  # URLError, refused, timed out, no route.
    raise DownloadError(
        f'Cannot reach {url} ({getattr(error, "reason", error)}). Without internet, set '
        f'{named_weights.MIRROR_ENV} to a directory or base URL holding {entry.file_name}. '
        f'{manual_hint(entry)}') from None
  with response:
    if have and response.status != 206:  # The server ignored the Range: start again.
      have = 0
    limit, length = max_bytes(entry), content_length(response, url)
    total = have + length if length is not None else entry.size_bytes
    if total is not None and total > limit:
      raise DownloadError(f'{url} offers {total:,} bytes; {entry.file_name} has at most '
                          f'{limit:,}: refused before reading.')
    progress = Progress(entry.file_name, total, have)
    with open_part(part, append=bool(have)) as f:
      whole = receive(response, f, progress, url, limit)
  progress.finish()
  if not whole:
    os.remove(part)
    raise DownloadError(f'{url} sent more than the {limit:,} bytes of {entry.file_name}: '
                        'refused, and the partial download deleted.')
  if total is not None and progress.done != total:
    raise DownloadError(f'{url}: the connection closed after {progress.done:,} of {total:,} '
                        'bytes; the next load resumes from there.')


def receive(response, f, progress, url: str, limit: int) -> bool:
  """Writes the body to f, never past limit bytes (False when it would go past them),
  and stops when the body stalls."""
  window_start, window_bytes = time.monotonic(), 0
  try:
    while block := response.read1(CHUNK_BYTES):
      if progress.done + len(block) > limit:
        return False
      f.write(block)
      progress.update(len(block))
      window_bytes += len(block)
      if time.monotonic() - window_start >= STALL_SECONDS:
        if window_bytes < STALL_BYTES:
          raise DownloadError(
              f'{url} stalled: {window_bytes} bytes in the last {STALL_SECONDS:g} s, after '
              f'{progress.done:,} bytes (kept; the next load resumes). Set '
              f'{named_weights.MIRROR_ENV} to a faster mirror (a base URL or a directory).')
        window_start, window_bytes = time.monotonic(), 0
  except OSError as error:  # Reset or timed out mid-file (http.client errors included).
    raise DownloadError(f'{url}: the connection dropped after {progress.done:,} bytes '
                        f'({error}); the next load resumes from there, or set '
                        f'{named_weights.MIRROR_ENV} to another mirror.') from None
  return True


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
  with os.fdopen(untrusted.open_no_follow(path, os.O_WRONLY | os.O_CREAT), 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      sys.stderr.write(f'Waiting for another process holding {path}...\n')
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
