"""Tests for vgg_jax.pretrained.download against a file server on 127.0.0.1 (no internet)."""

import os
import time

import numpy as np
import pytest

import http_server  # tests/ is on sys.path
import run_helpers
from vgg_jax.pretrained import download
from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import untrusted

FILE = 'vgg_test-00000000.pth'


def make_entry(path, kind='sha256', url=None, **changes):
  """A table entry for a file the test made, with its true hash (sha256: an 8-hex prefix)."""
  digest = download.digest(str(path), kind)
  entry = named_weights.Weights(
      'vgg_test', 'torchvision', url or f'https://example.invalid/{os.path.basename(path)}',
      kind, digest[:8] if kind == 'sha256' else digest, 'A', False, True, 0, None, None,
      named_weights.TORCH_IMAGENET, 'test', 0.0, os.path.getsize(path))
  return entry.__class__(**{**entry.__dict__, **changes})


@pytest.fixture(name='served')
def served_fixture(tmp_path, monkeypatch):
  """(entry, bytes, server behaviour, download dir): 3 MB of random bytes behind a mirror URL."""
  root = tmp_path / 'server'
  root.mkdir()
  data = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
  (root / FILE).write_bytes(data)
  with http_server.serve(str(root)) as (url, behaviour):
    monkeypatch.setenv(named_weights.MIRROR_ENV, url)
    yield make_entry(root / FILE), data, behaviour, str(tmp_path / 'downloads')


def test_fetch_downloads_verifies_and_reports_progress(served, capsys):
  entry, data, behaviour, directory = served
  path, sha256 = download.fetch(entry, directory)
  assert open(path, 'rb').read() == data and sha256 == download.digest(path, 'sha256')
  assert os.listdir(directory) == [FILE]  # No .part left behind.
  assert behaviour.requests == [(f'/{FILE}', None)]
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert line.startswith(f'{FILE}: 3.0 / 3.0 MB') and 'MB/s' in line and 'ETA' in line


def test_wrong_bytes_are_named_and_nothing_is_kept(served):
  entry, data, _, directory = served
  wrong = entry.__class__(**{**entry.__dict__, 'hash': 'deadbeef'})
  actual = download.digest(os.path.join(served[2].directory, FILE), 'sha256')
  with pytest.raises(download.DownloadError) as error:
    download.fetch(wrong, directory)
  message = str(error.value)
  assert FILE in message and 'deadbeef' in message and actual in message
  assert os.listdir(directory) == []
  md5 = make_entry(os.path.join(served[2].directory, FILE), 'md5')
  assert download.fetch(md5, directory)[0].endswith(FILE)  # md5 checked whole, as Keras's.
  assert len(data) == os.path.getsize(os.path.join(directory, FILE))


@pytest.mark.parametrize('ranges', [True, False], ids=['resumes', 'restarts'])
def test_a_dropped_connection_is_never_used_and_the_next_fetch_succeeds(served, ranges):
  entry, data, behaviour, directory = served
  behaviour.ranges, behaviour.drops, behaviour.drop_after = ranges, 1, 1_000_000
  with pytest.raises(download.DownloadError, match='closed after 1,000,000 of 3,000,000 bytes'):
    download.fetch(entry, directory)
  assert os.listdir(directory) == [FILE + '.part']  # Kept to resume from; never read.
  path, _ = download.fetch(entry, directory)
  assert open(path, 'rb').read() == data and os.listdir(directory) == [FILE]
  assert behaviour.requests[1] == (f'/{FILE}', 'bytes=1000000-')


@pytest.mark.parametrize('via', ['url', 'mirror'])
def test_no_network_fails_fast_with_the_way_out(tmp_path, monkeypatch, via):
  port = run_helpers.free_port()  # Nobody listens on it.
  data = tmp_path / FILE
  data.write_bytes(b'x' * 1000)
  if via == 'mirror':
    monkeypatch.setenv(named_weights.MIRROR_ENV, f'http://127.0.0.1:{port}/')
    entry = make_entry(data)
  else:
    monkeypatch.delenv(named_weights.MIRROR_ENV, raising=False)
    entry = make_entry(data, url=f'http://127.0.0.1:{port}/{FILE}')
  start = time.monotonic()
  with pytest.raises(download.DownloadError) as error:
    download.fetch(entry, str(tmp_path / 'downloads'))
  assert time.monotonic() - start < 5
  message = str(error.value)
  assert f'127.0.0.1:{port}/{FILE}' in message and named_weights.MIRROR_ENV in message
  assert 'python -m vgg_jax.pretrained --source=torchvision' in message


def test_a_server_that_never_answers_times_out(served):
  entry, _, behaviour, directory = served
  behaviour.hang_seconds = 5
  start = time.monotonic()
  with pytest.raises(download.DownloadError, match='Cannot reach'):
    download.fetch(entry, directory, timeout=0.5)
  assert time.monotonic() - start < 3


def test_a_mirror_directory_is_copied_into_the_cache_then_verified(tmp_path, monkeypatch):
  mirror, downloads = tmp_path / 'mirror', tmp_path / 'downloads'
  mirror.mkdir()
  (mirror / FILE).write_bytes(b'weights' * 1000)
  entry = make_entry(mirror / FILE)
  monkeypatch.setenv(named_weights.MIRROR_ENV, str(mirror))
  path, sha256 = download.fetch(entry, str(downloads))
  # What is hashed and later parsed is the private copy, never the mirror's file again.
  assert path == str(downloads / FILE) and open(path, 'rb').read() == b'weights' * 1000
  assert sha256 == download.digest(str(mirror / FILE), 'sha256')
  (mirror / FILE).write_bytes(b'tampere' * 1000)  # As long: the hash refuses it.
  with pytest.raises(download.DownloadError, match='has the wrong bytes'):
    download.fetch(entry, str(downloads))
  assert (mirror / FILE).exists()  # A mirror's file is not ours to delete.
  assert os.listdir(downloads) == [FILE]  # The tampered copy was not kept.
  monkeypatch.setenv(named_weights.MIRROR_ENV, str(tmp_path))
  with pytest.raises(download.DownloadError, match=f'holds no {FILE}'):
    download.fetch(entry, str(downloads))
  monkeypatch.setenv(named_weights.MIRROR_ENV, str(tmp_path / 'nonexistent'))
  with pytest.raises(download.DownloadError, match='nonexistent does not exist'):
    download.fetch(entry, str(downloads))


def test_an_endless_body_stops_at_the_entrys_size_and_nothing_is_kept(served):
  entry, _, behaviour, directory = served
  behaviour.endless = True  # No Content-Length: zeros for as long as the client reads.
  start = time.monotonic()
  with pytest.raises(download.DownloadError, match='sent more than the 3,000,000 bytes'):
    download.fetch(entry, directory)
  assert time.monotonic() - start < 30
  assert os.listdir(directory) == []  # Never past the size, and not kept.


def test_a_content_length_over_the_size_is_refused_before_the_body(served):
  entry, _, behaviour, directory = served
  behaviour.content_length = str(10**12)
  with pytest.raises(download.DownloadError, match='offers 1,000,000,000,000 bytes; .* has at '
                     'most 3,000,000: refused before reading'):
    download.fetch(entry, directory)
  behaviour.content_length = 'lots'
  with pytest.raises(download.DownloadError, match="Content-Length 'lots', not a number"):
    download.fetch(entry, directory)
  # Where only the publisher's rounded size is known, it may reach that plus 1 MiB.
  rounded = entry.__class__(**{**entry.__dict__, 'size_bytes': None, 'size_mib': 1.0})
  assert download.max_bytes(rounded) == 2**20 + download.ROUNDED_SLACK
  behaviour.content_length = None
  with pytest.raises(download.DownloadError, match='has at most 2,097,152'):
    download.fetch(rounded, directory)


def test_a_trickle_stalls_with_the_url_and_the_mirror_variable(served, monkeypatch):
  entry, _, behaviour, directory = served
  monkeypatch.setattr(download, 'STALL_SECONDS', 1.0)  # 30 s in use; 1 s here.
  behaviour.trickle_seconds = 0.05  # 20 bytes a second.
  start = time.monotonic()
  with pytest.raises(download.DownloadError) as error:
    download.fetch(entry, directory)
  assert time.monotonic() - start < 10
  message = str(error.value)
  assert f'/{FILE} stalled' in message and named_weights.MIRROR_ENV in message
  assert os.listdir(directory) == [FILE + '.part']  # Kept, to resume from.


@pytest.mark.parametrize('planted', ['.part', '.lock'])
def test_a_link_planted_in_the_cache_is_refused_by_name(served, tmp_path, planted):
  entry, _, _, directory = served
  os.makedirs(directory)
  target = tmp_path / 'victim'
  target.write_bytes(b'precious')
  link = os.path.join(directory, (FILE + '.part') if planted == '.part' else '.x.lock')
  os.symlink(target, link)
  with pytest.raises(untrusted.WeightsFileError, match=f'{link} is a symbolic link'):
    if planted == '.part':
      download.fetch(entry, directory)
    else:
      with download.file_lock(link):
        pass
  assert target.read_bytes() == b'precious'
