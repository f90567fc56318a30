"""Helpers of the tests that run launch.py in subprocesses: ports, polling, checkpoints,
and what a failed process printed."""

import socket
import time

from vgg_jax import checkpointing  # After conftest has set up JAX's environment.


def free_port() -> int:
  """A TCP port free on loopback now (for jax.distributed's coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_for(predicate, timeout: float = 120.0) -> bool:
  """Polls predicate until it is true (True) or timeout seconds pass (False)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.02)
  return False


def finished_steps(workdir) -> list[int]:
  """The steps with a finished checkpoint in workdir, ascending."""
  return checkpointing.finished_steps(str(workdir))


def failure_text(output: str, chars: int = 4000) -> str:
  """A process's output, for a failed assertion, without gloo's connection lines.

  After a fatal error (an abort), what led to it and the error's first lines: the thread
  stacks and extension modules Python dumps next would fill the usual tail.
  """
  text = '\n'.join(l for l in output.splitlines() if not l.startswith('[Gloo]'))
  fatal = text.find('Fatal Python error')
  if fatal < 0:
    return text[-chars:]
  return text[max(0, fatal - chars // 2):fatal + chars // 2]
