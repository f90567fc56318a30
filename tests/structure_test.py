"""The codebase's shape: short modules and functions, arrows that run one way."""

import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = sorted(glob.glob(os.path.join(ROOT, 'vgg_jax', '**', '*.py'), recursive=True))
SCRIPTS = [os.path.join(ROOT, 'launch.py')] + sorted(
    glob.glob(os.path.join(ROOT, 'experiments', '**', '*.py'), recursive=True))


def parse(path):
  with open(path) as f:
    return ast.parse(f.read(), path)


def module_name(path):
  return os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')


MODULES = {module_name(p) for p in LIBRARY}


def imported_modules(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [f'{node.module}.{alias.name}' for alias in node.names]
      # `from package import submodule` depends on the submodule, not on the package's
      # own __init__ (which may re-export that very submodule's names).
      if not all(name in MODULES for name in names):
        yield node.module
      yield from names


def test_library_modules_are_under_400_lines():
  long = {module_name(p): n for p in LIBRARY if (n := len(open(p).readlines())) > 400}
  assert not long


def parameter_count(node) -> int:
  args = node.args
  names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
  names += [a.arg for a in (args.vararg, args.kwarg) if a]
  return len([n for n in names if n not in ('self', 'cls')])


@pytest.mark.parametrize('path', LIBRARY, ids=module_name)
def test_library_functions_are_under_60_lines_and_8_parameters(path):
  functions = [node for node in ast.walk(parse(path))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
  long = [f'{f.name}: {f.end_lineno - f.lineno + 1} lines' for f in functions
          if f.end_lineno - f.lineno + 1 > 60]
  wide = [f'{f.name}: {parameter_count(f)} parameters' for f in functions
          if parameter_count(f) > 8]
  assert not long and not wide


def test_every_package_says_its_job():
  packages = [p for p in LIBRARY if p.endswith('__init__.py')]
  assert len(packages) >= 6  # vgg_jax, models, data, training, evaluation, pretrained.
  for path in packages:
    assert len(ast.get_docstring(parse(path)) or '') > 40, path


def test_import_vgg_jax_imports_neither_tensorflow_nor_jax_until_used():
  code = ('import sys, vgg_jax; assert "tensorflow" not in sys.modules and "jax" not in '
          'sys.modules; vgg_jax.VGG, vgg_jax.load, vgg_jax.extract, vgg_jax.lpips, vgg_jax.dists; '
          'assert "tensorflow" not in sys.modules; print("ok")')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
  assert result.stdout.strip() == 'ok', result.stderr[-2000:]


@pytest.mark.parametrize('path', SCRIPTS, ids=module_name)
def test_functions_are_under_80_lines(path):
  long = [f'{node.name}: {node.end_lineno - node.lineno + 1} lines'
          for node in ast.walk(parse(path))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > 80]
  assert not long


def test_library_never_imports_experiments_and_has_no_cycles():
  graph = {}
  for path in LIBRARY:
    name = module_name(path)
    imports = set(imported_modules(parse(path)))
    assert not [m for m in imports if m.split('.')[0] == 'experiments'], name
    graph[name] = {m for m in imports if m in {module_name(p) for p in LIBRARY}} - {name}

  def visit(name, stack):
    assert name not in stack, ' -> '.join(stack + [name])
    for dep in graph[name]:
      visit(dep, stack + [name])

  for name in graph:
    visit(name, [])


def test_data_modules_never_import_the_model():
  for path in glob.glob(os.path.join(ROOT, 'vgg_jax', 'data', '*.py')):
    imports = set(imported_modules(parse(path)))
    assert not imports & {'vgg_jax.models', 'vgg_jax.training.train', 'vgg_jax.evaluation.protocols'}, path
