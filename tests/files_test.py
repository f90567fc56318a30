"""files.write_file_atomically: all or nothing."""

import os

import pytest

from vgg_jax import files


def test_writes_and_replaces_leaving_no_temporary_file(tmp_path):
  path = tmp_path / 'out.json'
  files.write_file_atomically(str(path), 'first')
  files.write_file_atomically(str(path), 'second')
  assert path.read_text() == 'second'
  assert os.listdir(tmp_path) == ['out.json']


def test_a_failed_write_keeps_the_old_contents(tmp_path, monkeypatch):
  path = tmp_path / 'out.json'
  path.write_text('old')
  def full_disk(src, dst):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(os, 'replace', full_disk)
  with pytest.raises(OSError, match='No space left'):
    files.write_file_atomically(str(path), 'new')
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['out.json']  # The temporary file is gone too.
