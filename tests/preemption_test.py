"""preemption.Notice: SIGTERM sets the flag the loop reads; close restores the old handler."""

import os
import signal

from vgg_jax.training import preemption


def test_sigterm_asks_to_save_and_stop_and_close_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  notice = preemption.Notice()
  try:
    assert not notice.check(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert notice.check(2)
  finally:
    notice.close()
  assert signal.getsignal(signal.SIGTERM) == before
