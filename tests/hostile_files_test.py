"""Hostile weights files (#31): refused, or loaded harmlessly, never code, crash or bloat.

Each crafted file of hostile_files.py is opened by the readers a user reaches it through,
each in a child process forked by hostile_harness.py. Every case asserts the error type
(untrusted.WeightsFileError, with what was wrong in its message), that no payload ran
(its marker file never appears), peak memory under MEMORY_MB and time under SECONDS.
"""

import hashlib
import io
import json
import os
import pickletools
import random
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import hostile_files  # tests/ is on sys.path
import http_server
from vgg_jax import lpips
from vgg_jax.pretrained import download
from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import torch_files
from vgg_jax.pretrained import untrusted

HERE = os.path.dirname(os.path.abspath(__file__))
MEMORY_MB, SECONDS = 600, 30
REFUSED_AS = 'names os\\.system, which is not a tensor'
# case -> what the refusal says, or None: the file loads (harmlessly).
TORCH_CASES = {
    'valid_zip': None, 'valid_legacy': None,
    'code_in_magic': REFUSED_AS, 'code_in_protocol': REFUSED_AS,
    'code_in_system_info': REFUSED_AS, 'code_in_storage_keys': REFUSED_AS,
    'code_in_state_dict': REFUSED_AS, 'code_in_zip_state_dict': REFUSED_AS,
    'code_as_a_value': REFUSED_AS,
    'offset_past_storage': 'reaches element 200,011 of a storage of 12',
    'shape_past_storage': 'has 200,000 elements, more than its storage holds',
    'stride_2_pow_40': 'reaches element 1,099,511,627,779 of a storage of 12',
    'stride_0_expansion': 'has 268,435,456 elements, more than its storage holds',
    'negative_offset': 'negative or non-integer', 'negative_stride': 'negative or non-integer',
    'huge_dimension': 'dimension of 2\\*\\*31 or more',
    'view_past_root': 'a view of storage 0 ends at element 108, past its 12',
    'storage_larger_than_declared': 'holds 48 bytes but the state dict declares 4,398,',
    'unreferenced_bomb': None,
    'referenced_bomb': 'inflate past 64 times the file .* refused as a zip bomb',
    'storage_type_called': "'str' object is not callable",
    'short_persistent_id': 'a persistent id is not a storage',
    'shape_not_a_tuple': 'malformed shape or strides',
    'deeply_nested': None,
    'bytes8_claims_2_pow_50': 'truncated or malformed',
    'set_bomb': 'opcode EMPTY_SET, which a state dict never needs',
    'pickle_over_limit': 'over the 2,097,152 allowed',
    'memo_index_bomb': 'memo index 2,147,483,648 at byte',  # Found by the fuzzer.
    'truncated_storage': 'ends inside storage 0',
    'count_2_pow_60': 'holds 1,152,921,504,606,846,976 elements but the state dict declares 12',
    'safetensors_past_end': 'not a readable safetensors file',
}
KERAS_CASES = {
    'external_storage': 'keeps its data outside the file',
    'external_link': r'is a link \(ExternalLink\), not an object of the file',
    'soft_link': r'is a link \(SoftLink\), not an object of the file',
    'virtual_dataset': 'keeps its data outside the file',
    'huge_declared_shape': r'holds arrays of shapes \[\(3, 3, 3, 1099511627776\), \(64,\)\]',
    'never_written': 'declares 1,179,648 bytes but stores 0 .never written',
    'gzip_bomb': 'declares 1,179,648 bytes but stores .* compressed past 16x',
    'not_float': 'not a float weight array',
}
CODE_CASES = [c for c in TORCH_CASES if c.startswith('code_')]
# Each case through every reader a user reaches it by.
RUNS = ([('torch', c) for c in TORCH_CASES if c != 'safetensors_past_end']
        + [('safetensors', 'safetensors_past_end')]
        + [(reader, c) for reader in ('pretrained', 'lpips', 'dists') for c in CODE_CASES]
        + [(reader, c) for reader in ('keras', 'pretrained') for c in KERAS_CASES])


def run_harness(cases, directory) -> list[dict]:
  """hostile_harness.py over [(reader, path)]: one report per case."""
  listing = os.path.join(directory, 'cases.json')
  with open(listing, 'w') as f:
    json.dump(cases, f)
  result = subprocess.run(
      [sys.executable, os.path.join(HERE, 'hostile_harness.py'), listing],
      capture_output=True, text=True, timeout=1800, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.path.dirname(HERE)),
      cwd=os.path.dirname(HERE))
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(name='reports', scope='module')
def reports_fixture(tmp_path_factory):
  """(reader, case) -> the harness's report, and the marker every payload would create."""
  directory = str(tmp_path_factory.mktemp('hostile'))
  marker = os.path.join(directory, 'PAYLOAD_RAN')
  outside = os.path.join(directory, 'outside_secret')
  with open(outside, 'wb') as f:  # What an .h5 file's external storage would read.
    f.write(np.full(10_000, 7.0, np.float32).tobytes())
  paths = hostile_files.torch_cases(directory, marker)
  paths['safetensors_past_end'] = os.path.join(directory, 'past_end.safetensors')
  header = json.dumps({'w': {'dtype': 'F32', 'shape': [10**9],
                             'data_offsets': [0, 4 * 10**9]}}).encode()
  with open(paths['safetensors_past_end'], 'wb') as f:
    f.write(len(header).to_bytes(8, 'little') + header + b'\0' * 64)
  paths.update(hostile_files.keras_cases(directory, outside))
  found = run_harness([(reader, paths[case]) for reader, case in RUNS], directory)
  return {run: report for run, report in zip(RUNS, found)}, marker


@pytest.mark.parametrize('reader,case', RUNS, ids=[f'{r}-{c}' for r, c in RUNS])
def test_each_hostile_file_is_refused_in_bounded_memory_and_time(reports, reader, case):
  found, marker = reports
  report = found[(reader, case)]
  assert report['signal'] is None, report
  assert not os.path.exists(marker), f'the payload ran: {report}'
  assert report['peak_mb'] < MEMORY_MB and report['seconds'] < SECONDS, report
  expected = {**TORCH_CASES, **KERAS_CASES}[case]
  if expected is None:
    assert report['outcome'] == 'loaded', report
  else:
    assert report.get('refused'), report
    assert report['outcome'] in ('vgg_jax.pretrained.untrusted.WeightsFileError',
                                 'vgg_jax.pretrained.download.DownloadError'), report
    assert re.search(expected, report['message']), report['message']
    assert os.path.basename(report['path']) in report['message']  # It names the file.


def test_the_valid_crafted_files_hold_what_they_say(tmp_path):
  """The cases change one thing each of these: the builders write real torch files."""
  for legacy in (False, True):
    path = str(tmp_path / f'valid{legacy}.pth')
    hostile_files.write_valid(path, legacy)
    state = torch_files.read_state_dict(path)
    np.testing.assert_array_equal(state['weight'], hostile_files.VALUES.reshape(3, 4))
    np.testing.assert_array_equal(state['bias'], hostile_files.VALUES[4:8])


def lin_file(path: str, code_marker: str | None = None) -> bytes:
  """An LPIPS lin-weights .pth (all ones), with a payload in its pickle when code_marker."""
  items, storages = {}, {}
  for k, channels in enumerate(lpips.CHANNELS):
    pid = hostile_files.storage_pid(str(k), channels)
    items[f'lin{k}.model.1.weight'] = hostile_files.op_tensor(pid, 0, (1, channels, 1, 1),
                                                              (channels, 1, 1, 1))
    storages[str(k)] = np.ones(channels, np.float32).tobytes()
  extra = hostile_files.payload(code_marker) if code_marker else b''
  hostile_files.write_torch_zip(path, hostile_files.state_pickle(items, extra), storages)
  return open(path, 'rb').read()


def test_a_file_swapped_after_its_hash_check_is_never_parsed(tmp_path, monkeypatch):
  """A mirror directory's file is swapped for a payload right after the hash check: what
  is parsed is the verified private copy in the cache."""
  mirror, marker = tmp_path / 'mirror', str(tmp_path / 'PAYLOAD_RAN')
  mirror.mkdir()
  good = lin_file(str(mirror / 'good.pth'))
  evil = lin_file(str(tmp_path / 'evil.pth'), marker)
  entry = named_weights.lpips_weights('lpips_test', '0.1', len(good),
                                      hashlib.sha256(good).hexdigest())
  (mirror / entry.file_name).write_bytes(good)
  monkeypatch.setitem(named_weights.LPIPS_WEIGHTS, entry.name, entry)
  monkeypatch.setenv(named_weights.MIRROR_ENV, str(mirror))
  monkeypatch.setenv(named_weights.CACHE_ENV, str(tmp_path / 'cache'))
  check = download.check_hash

  def check_then_swap(*args, **kwargs):
    result = check(*args, **kwargs)
    (mirror / entry.file_name).write_bytes(evil)  # The attacker wins the race.
    return result

  monkeypatch.setattr(download, 'check_hash', check_then_swap)
  weights = lpips.linear_weights(entry.name)
  assert [w.tolist() for w in weights] == [[1.0] * c for c in lpips.CHANNELS]
  assert not os.path.exists(marker)
  # Parsing by path would have run it: the swapped file is hostile indeed.
  with pytest.raises(untrusted.WeightsFileError, match=REFUSED_AS):
    lpips.read_linear_weights(str(mirror / entry.file_name))
  assert not os.path.exists(marker)


def test_registered_names_are_never_taken_from_the_working_directory(tmp_path, monkeypatch):
  """A hostile ./lpips_vgg_v0.1 file, or a ./vgg16 directory, never stands in for the name."""
  marker = str(tmp_path / 'PAYLOAD_RAN')
  served = tmp_path / 'server'
  served.mkdir()
  good = lin_file(str(served / 'good.pth'))
  entry = named_weights.lpips_weights('lpips_test', '0.1', len(good),
                                      hashlib.sha256(good).hexdigest())
  (served / entry.file_name).write_bytes(good)
  monkeypatch.setitem(named_weights.LPIPS_WEIGHTS, entry.name, entry)
  monkeypatch.setenv(named_weights.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.chdir(tmp_path)
  lin_file(entry.name, marker)  # ./lpips_test, hostile.
  with http_server.serve(str(served)) as (url, behaviour):
    monkeypatch.setenv(named_weights.MIRROR_ENV, url)
    weights = lpips.linear_weights(entry.name)
    assert behaviour.requests == [(f'/{entry.file_name}', None)]  # The name was fetched.
  assert [float(w.sum()) for w in weights] == [float(c) for c in lpips.CHANNELS]
  assert not os.path.exists(marker)
  # As a path it is read (and refused): ./NAME, or any separator, means a path.
  with pytest.raises(untrusted.WeightsFileError, match=REFUSED_AS):
    lpips.linear_weights(f'./{entry.name}')
  assert not os.path.exists(marker)
  from vgg_jax import pretrained  # pylint: disable=g-import-not-at-top
  os.makedirs(tmp_path / 'myrun')
  with pytest.raises(ValueError, match=r"'myrun' is no registered name.*pass it as \./myrun"):
    pretrained.resolve('myrun')
  assert pretrained.resolve('./myrun') == './myrun'
  assert untrusted.looks_like_path('~/w') and untrusted.looks_like_path('w.h5')
  assert not untrusted.looks_like_path('vgg16') and not untrusted.looks_like_path('lpips_vgg_v0.1')


def mutations(seed: int, count: int):
  """(name, bytes) of `count` mutants of the valid zip and legacy files: byte flips and
  opcode swaps, insertions and deletions in their pickles (zip entries rebuilt so the
  archive itself stays valid)."""
  rng = random.Random(seed)
  opcodes = [bytes([op.code.encode('latin-1')[0]]) for op in pickletools.opcodes]
  main = hostile_files.state_pickle(hostile_files.valid_items())
  legacy = hostile_files.legacy_bytes(hostile_files.state_pickle(
      hostile_files.valid_items(legacy=True)), ['0'],
                                      {'0': (12, hostile_files.VALUES.tobytes())})
  for i in range(count):
    target = bytearray(main if i % 2 else legacy)
    for _ in range(rng.randint(1, 4)):
      position, kind = rng.randrange(len(target)), rng.random()
      if kind < 0.4:
        target[position] ^= 1 << rng.randrange(8)  # A bit flip.
      elif kind < 0.8:
        target[position] = rng.choice(opcodes)[0]  # An opcode swap.
      elif kind < 0.9:
        target[position:position] = rng.choice(opcodes)  # An opcode inserted.
      else:
        del target[position]
    if i % 2:
      buffer = io.BytesIO()
      with zipfile.ZipFile(buffer, 'w') as archive:
        archive.writestr('archive/data.pkl', bytes(target))
        archive.writestr('archive/data/0', hostile_files.VALUES.tobytes())
      yield f'zip{i}', buffer.getvalue()
    else:
      yield f'legacy{i}', bytes(target)


@pytest.mark.slow
def test_mutation_fuzzer_never_crashes_runs_code_or_bloats(tmp_path):
  """4,000 seeded mutants: each loads or is refused, with no signal, within the bounds.

  Its first run found the memo-index bomb (a BINPUT index of 779,440,756 made the
  unpickler allocate 12 GB), now refused before unpickling.
  """
  cases = []
  for name, data in mutations(seed=0, count=4000):
    path = tmp_path / f'{name}.pth'
    path.write_bytes(data)
    cases.append(('torch', str(path)))
  found = run_harness(cases, str(tmp_path))
  assert len(found) == len(cases)
  outcomes = {}
  for report in found:
    assert report['signal'] is None, report
    assert report['outcome'] == 'loaded' or report.get('refused'), report
    assert report['peak_mb'] < MEMORY_MB and report['seconds'] < SECONDS, report
    outcomes[report['outcome']] = outcomes.get(report['outcome'], 0) + 1
  # The mutants reach both ends: some still load, most are refused.
  print(outcomes, 'peak MB', max(r['peak_mb'] for r in found),
        'slowest s', max(r['seconds'] for r in found))
  assert outcomes.get('loaded', 0) > 50 and outcomes['vgg_jax.pretrained.untrusted.WeightsFileError'] > 2000
