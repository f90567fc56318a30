"""A multi-process run that loses a process stops cleanly: one line, exit 75, no abort.

A process is lost when it dies (SIGKILL, OOM, a node failure) or hangs (SIGSTOP, a stuck
host). Three things notice, whichever comes first, and each ends the survivor the same
way (exit_lost_peer):
- JAX's runtime client, when the coordinator (process 0, which hosts JAX's coordination
  service) dies: it aborts the process at once (SIGABRT). initialize() installs a
  SIGABRT handler that, while the coordinator refuses connections, exits cleanly instead.
- PeerWatchdog: every process bumps a counter in the coordinator's key-value store each
  second; a peer whose counter stands still for timeout_seconds is lost, and so is the
  coordinator when a bump gets no answer that long.
- A collective that fails (gloo: 'Connection reset by peer') raises in the training
  loop; PeerWatchdog.explain then waits for the watchdog's verdict rather than letting
  the error unwind into jax.distributed.shutdown's barrier, which the dead can never
  reach.
The line names the lost process(es), the step a rerun resumes from (the newest finished
checkpoint on disk) and what to rerun. os._exit: no clean-up that waits on a peer runs.
"""

import ctypes
import os
import signal
import socket
import sys
import threading
import time

from absl import logging
import jax
from jax._src import distributed  # The runtime client: JAX has no public handle to it.

from vgg_jax import checkpointing

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: rerun the same command.


def exit_lost_peer(lost: str, workdir: str | None, in_signal_handler: bool = False):
  """Logs the one lost-peer line and ends this process with EXIT_PEER_LOST.

  in_signal_handler: write the line straight to stderr (logging's locks may be held).
  """
  steps = checkpointing.finished_steps(workdir) if workdir else []
  where = f'step {steps[-1]}' if steps else 'the start'
  count = jax.process_count()  # Known since initialize: no call into the runtime.
  line = (f'Lost peer process(es) {lost} of {count}: stopping. Rerun all {count} processes '
          f'with the same command to resume from {where} (the last checkpoint).')
  if in_signal_handler:
    os.write(2, f'E peers.py] {line}\n'.encode())
  else:
    logging.error(line)
    logging.flush()
    sys.stderr.flush()
    sys.stdout.flush()
  os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access  (no clean-up can finish)


def initialize(workdir: str | None, coordinator_address=None, num_processes=None,
               process_id=None, **timeouts):
  """jax.distributed.initialize, with a runtime that exits 75 on a lost peer, not aborts.

  With no address, JAX detects the cluster (TPU, SLURM, ...). timeouts: the heartbeat and
  shutdown timeouts jax.distributed.initialize takes.
  """
  jax.distributed.initialize(coordinator_address, num_processes, process_id, **timeouts)
  return exit_on_coordinator_abort(workdir)


def exit_on_coordinator_abort(workdir: str | None):
  """Turns the runtime's abort on a lost coordinator into the lost-peer exit.

  When process 0 (which hosts JAX's coordination service) dies, the runtime client of
  every other process aborts at once (SIGABRT). A SIGABRT while the coordinator refuses
  connections becomes the lost-peer line and exit 75; any other abort stays an abort.
  Returns the handler, which the caller keeps alive for as long as the run.
  """
  address = distributed.global_state.coordinator_address
  if jax.process_index() == 0 or not address:
    return None
  libc = ctypes.CDLL(None)
  host, port = address.rsplit(':', 1)

  def on_abort(signum):
    if sys.is_finalizing():  # Too late for Python: let the abort be.
      libc.signal(signum, 0)
      return
    try:
      socket.create_connection((host.strip('[]'), int(port)), timeout=1.0).close()
    except OSError:  # Nobody listens: the coordinator is gone.
      exit_lost_peer('[0]', workdir, in_signal_handler=True)
    libc.signal(signum, 0)  # SIG_DFL: returning lets abort() end the process as it would.

  handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(on_abort)
  libc.signal(signal.SIGABRT, handler)
  return handler


class PeerWatchdog:
  """Exits this process with the lost-peer line when another process is lost (see above).

  Start it before anything collective (restore, compile, the loop) and close it after.
  Give jax.distributed.initialize a longer heartbeat timeout than timeout_seconds.
  """

  def __init__(self, workdir: str, timeout_seconds: float, poll_seconds: float = 1.0):
    self._workdir, self._timeout, self._poll = workdir, timeout_seconds, poll_seconds
    self._stop = threading.Event()
    self._last_answer = time.monotonic()  # When the coordinator last answered a round.
    self._seen = {}  # Peer -> (its last counter, when that changed); from its first beat.
    self.active = jax.process_count() > 1 and distributed.global_state.client is not None
    if self.active:
      threading.Thread(target=self._beat, daemon=True, name='peer-beat').start()
      threading.Thread(target=self._watch, daemon=True, name='peer-watchdog').start()

  def _beat(self):
    """Each poll: bumps this process's counter, reads the peers'. The only thread that
    calls the coordinator, so a call that hangs (a stopped coordinator) stalls only it."""
    client, me, beat = distributed.global_state.client, jax.process_index(), 0
    peers = [p for p in range(jax.process_count()) if p != me]
    while not self._stop.wait(self._poll):
      beat += 1
      try:
        client.key_value_set(f'vgg_jax/alive/{me}', str(beat), allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except  (the coordinator is gone)
        exit_lost_peer('[0]', self._workdir)
      now = time.monotonic()
      for p in peers:
        try:
          value = client.key_value_try_get(f'vgg_jax/alive/{p}')
        except Exception:  # pylint: disable=broad-except  (no beat from p yet)
          continue
        if p not in self._seen or value != self._seen[p][0]:
          self._seen[p] = (value, now)
      self._last_answer = now

  def _watch(self):
    """Each poll, without calling anyone: has a peer or the coordinator gone quiet?"""
    while not self._stop.wait(self._poll):
      now = time.monotonic()
      if now - self._last_answer > self._timeout:
        exit_lost_peer('[0]', self._workdir)
      lost = [p for p, (_, changed) in list(self._seen.items()) if now - changed > self._timeout]
      if lost and not self._stop.is_set():
        exit_lost_peer(str(lost), self._workdir)

  def explain(self, error: BaseException):
    """In a multi-process run, waits for the watchdog's verdict on a failed collective.

    If a peer was lost, the watchdog (or the runtime's callback) ends the process within
    timeout_seconds; otherwise this returns and the caller re-raises `error`.
    """
    if not self.active or self._stop.is_set():
      return
    logging.warning('%s in a multi-process run: checking for a lost peer for up to %.0f s.',
                    type(error).__name__, self._timeout + 2 * self._poll)
    time.sleep(self._timeout + 2 * self._poll)

  def close(self):
    self._stop.set()
