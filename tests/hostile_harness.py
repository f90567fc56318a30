"""Opens files with a reader in forked children and reports how each ended.

  python tests/hostile_harness.py CASES.json  # [[reader, path], ...] -> JSON lines on stdout

Each case runs in a child forked from this process once the readers are imported: its
outcome ('loaded', or the exception's type and message), whether the exception is an
untrusted.WeightsFileError, the signal that ended it if one did, its peak resident memory
(ru_maxrss, MB) and its wall time. A child still running after TIME_LIMIT seconds is
killed by SIGALRM, which the report shows. Used by hostile_files_test.py and its fuzzer.
"""

import json
import os
import resource
import signal
import sys
import time

TIME_LIMIT = 60


def readers(names):
  """reader name -> function(path), importing only what the cases need."""
  table = {}
  from vgg_jax.pretrained import torch_files  # pylint: disable=g-import-not-at-top
  table['torch'] = torch_files.read_state_dict
  if names & {'pretrained', 'lpips', 'dists', 'keras', 'safetensors'}:
    from vgg_jax import dists  # pylint: disable=g-import-not-at-top
    from vgg_jax import lpips  # pylint: disable=g-import-not-at-top
    from vgg_jax import pretrained  # pylint: disable=g-import-not-at-top
    from vgg_jax.pretrained import weight_readers  # pylint: disable=g-import-not-at-top
    table.update(pretrained=pretrained.load, lpips=lpips.read_linear_weights,
                 dists=dists.read_weights, keras=weight_readers.read_keras_h5,
                 safetensors=weight_readers.read_torch_state_dict)
  return table


def child(function, path, write_end):
  signal.alarm(TIME_LIMIT)
  from vgg_jax.pretrained import untrusted  # pylint: disable=g-import-not-at-top
  try:
    function(path)
    report = {'outcome': 'loaded'}
  except BaseException as error:  # pylint: disable=broad-except
    report = {'outcome': f'{type(error).__module__}.{type(error).__qualname__}',
              'refused': isinstance(error, untrusted.WeightsFileError),
              'message': str(error)[:1000]}
  os.write(write_end, json.dumps(report).encode())
  os._exit(0)  # pylint: disable=protected-access


def run(function, path) -> dict:
  read_end, write_end = os.pipe()
  start = time.monotonic()
  pid = os.fork()
  if pid == 0:
    os.close(read_end)
    child(function, path, write_end)
  os.close(write_end)
  chunks = []
  while chunk := os.read(read_end, 1 << 16):
    chunks.append(chunk)
  os.close(read_end)
  _, status, usage = os.wait4(pid, 0)
  report = json.loads(b''.join(chunks) or b'{"outcome": "no report"}')
  report.update(signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                peak_mb=usage.ru_maxrss / 1024, seconds=time.monotonic() - start)
  return report


def main():
  with open(sys.argv[1]) as f:
    cases = json.load(f)
  table = readers({reader for reader, _ in cases})
  base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  for reader, path in cases:
    report = run(table[reader], path)
    report.update(reader=reader, path=path, base_mb=base_mb)
    print(json.dumps(report), flush=True)


if __name__ == '__main__':
  main()
