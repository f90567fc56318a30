"""What the tests against a PyTorch reference package share: layouts and gradients.

Importing it skips the importing test module where torch is not installed.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='the reference is PyTorch')


def nchw(x, dtype=None):
  """An NHWC numpy batch as an NCHW torch tensor (in dtype, when given)."""
  out = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  return out if dtype is None else out.to(dtype)


def reference_gradients(reference, x0, x1, dtype, **options):
  """d(sum of reference(x0, x1, **options))/d(x0, x1), NHWC, computed in dtype."""
  net = copy.deepcopy(reference).to(dtype)
  a, b = (nchw(x, dtype).requires_grad_() for x in (x0, x1))
  net(a, b, **options).sum().backward()
  return [v.grad.numpy().transpose(0, 2, 3, 1) for v in (a, b)]


def assert_gradients_close(got, expected, rtol):
  """Each of our gradients (x0's, x1's) within rtol of the reference's largest value."""
  for name, g, e in zip(('x0', 'x1'), got, expected):
    scale = np.abs(e).max()
    assert scale > 0, name
    np.testing.assert_allclose(np.asarray(g), e, rtol=0, atol=rtol * scale, err_msg=name)
