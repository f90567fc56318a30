"""A file server on 127.0.0.1 for the download tests: it can drop, ignore ranges or hang."""

import contextlib
import dataclasses
import http.server
import os
import threading
import time


@dataclasses.dataclass
class Behaviour:
  """What the server does; the tests change it between requests."""
  directory: str
  ranges: bool = True  # Honour 'Range: bytes=N-' with a 206.
  drops: int = 0  # The next `drops` GETs send the full length but close after drop_after.
  drop_after: int = 0
  hang_seconds: float = 0.0  # Wait this long before answering at all.
  content_length: str | None = None  # Sent instead of the true length, when set.
  endless: bool = False  # No Content-Length; zeros until the client hangs up (or 60 s).
  trickle_seconds: float = 0.0  # Send the body a byte at a time, this far apart (<= 60 s).
  sent: int = 0  # Body bytes sent, over all requests.
  requests: list = dataclasses.field(default_factory=list)  # (path, Range header or None).


def make_handler(behaviour: Behaviour):
  class Handler(http.server.BaseHTTPRequestHandler):

    def log_message(self, *args):  # Quiet.
      pass

    def handle(self):
      try:
        super().handle()
      except ConnectionError:  # The client hung up early (a refused body): expected.
        pass

    def do_GET(self):  # pylint: disable=invalid-name
      behaviour.requests.append((self.path, self.headers.get('Range')))
      if behaviour.hang_seconds:
        time.sleep(behaviour.hang_seconds)
      path = os.path.join(behaviour.directory, self.path.lstrip('/'))
      if not os.path.isfile(path):
        self.send_error(404)
        return
      data = open(path, 'rb').read()
      start = 0
      if behaviour.ranges and self.headers.get('Range'):
        start = int(self.headers['Range'].split('=')[1].rstrip('-'))
        if start >= len(data):
          self.send_error(416)
          return
        self.send_response(206)
        self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
      else:
        self.send_response(200)
      body = data[start:]
      if not behaviour.endless:
        self.send_header('Content-Length', behaviour.content_length or str(len(body)))
      self.end_headers()
      if behaviour.endless or behaviour.trickle_seconds:
        self.stream(body)
        return
      if behaviour.drops:
        behaviour.drops -= 1
        self.wfile.write(body[:behaviour.drop_after])
        self.wfile.flush()
        self.close_connection = True
        return
      self.wfile.write(body)
      behaviour.sent += len(body)

    def stream(self, body):
      """Zeros without end, or body a byte at a time; stops when the client goes (<= 60 s)."""
      deadline = time.monotonic() + 60
      block = bytes(1 << 16) if behaviour.endless else None
      position = 0
      try:
        while time.monotonic() < deadline and (block or position < len(body)):
          chunk = block or body[position:position + 1]
          self.wfile.write(chunk)
          self.wfile.flush()
          behaviour.sent += len(chunk)
          position += len(chunk)
          if behaviour.trickle_seconds:
            time.sleep(behaviour.trickle_seconds)
      except OSError:  # The client hung up: what the test wanted.
        pass
      self.close_connection = True

  return Handler


@contextlib.contextmanager
def serve(directory: str):
  """(base URL, Behaviour) of a threaded server over directory; stopped on exit."""
  behaviour = Behaviour(directory)
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), make_handler(behaviour))
  server.daemon_threads = True
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}', behaviour
  finally:
    server.shutdown()
    server.server_close()
