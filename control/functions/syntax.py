"""Syntax checks of deployed scripts: compiled inside a sandbox, never run (sans-I/O part).

A deploy must refuse a script that does not compile, with the interpreter's own
message, file and line, without running any of the script. The check runs in a
sandbox of the script's language (the same interpreter its calls will use), through
the runner's ordinary ``load``: what is loaded is not the script but a small *checker*
that holds the script as a string literal and only compiles it:

- Python: ``compile(source, filename, "exec")``, the compiler alone; the message is
  what ``traceback.format_exception_only`` prints (``File "x.py", line 3``, the line,
  the caret, ``SyntaxError: ...``).
- JavaScript: ``vm.compileFunction`` over the source exactly as the Node runner wraps
  it (a function of ``module, exports, require``); V8's message carries the same
  ``x.js:3`` header, source line and caret that ``node --check`` prints.

A checker also refuses a script that compiles but defines no actor, which the runner
would refuse at its first call (``load_error``), with the runner's own words:

- Python, statically (nothing runs): the runner takes the ``@actor`` function or a
  ``process`` callable from the module's namespace; the checker refuses a module in
  which no identifier, attribute, import or string is ``process`` or ``actor`` and
  nothing could bind names at run time (``exec``, ``globals``, ``setattr``,
  ``import *``, ...). It never refuses a script the runner would load.
- JavaScript: ``module.exports`` is only known once the module body ran, so the
  checker runs the compiled body (in the sandbox, as the runner's ``load`` does, for
  at most 2 s: a body still running then is let through) and
  looks for the runner's forms (an exported function, ``exports.process``/``run``, a
  top-level ``process``/``run``). Skipped when the function has npm dependencies
  (not installed yet when the check runs); such a script fails at its first call.

A checker whose load fails reports the problem as its load error's message; one that
loads has found nothing wrong. :func:`problem_from_load_error` extracts the text.
"""

from __future__ import annotations

import json

from ..vocabulary import Language

CHECKER_FILENAME = "<msb-syntax-check>"

NO_ACTOR = "the script defines no actor"
"""How a checker's complaint about a script without an actor begins."""

_PYTHON_CHECKER = """\
import ast as _ast
import traceback as _traceback
try:
    compile({source}, {filename}, "exec")
except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as _error:
    raise RuntimeError(
        "".join(_traceback.format_exception_only(type(_error), _error)).rstrip()
    ) from None


def _could_define_actor(tree):
    # Conservative: any trace of the names, or anything that binds names at run time.
    wanted = {{"process", "actor", "exec", "eval", "compile", "globals", "locals", "vars",
              "setattr", "getattr", "__import__", "importlib", "__dict__", "__builtins__",
              "builtins", "modules"}}
    for node in _ast.walk(tree):
        names = []
        if isinstance(node, _ast.Name):
            names.append(node.id)
        elif isinstance(node, _ast.Attribute):
            names.append(node.attr)
        elif isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef, _ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, _ast.alias):
            names += [node.name, node.asname or "", *node.name.split(".")]
        elif isinstance(node, _ast.keyword):
            names.append(node.arg or "")
        elif isinstance(node, _ast.Constant) and isinstance(node.value, str):
            names.append(node.value)
        if "*" in names or wanted.intersection(names):
            return True
    return False


try:
    _tree = _ast.parse({source}, {filename})
except RecursionError:
    _tree = None
if _tree is not None and not _could_define_actor(_tree):
    raise RuntimeError(
        {no_actor} + ": no @actor function and no process(context) "
        "(write @actor async def process(context): ... or def process(context): ...)"
    )


def process(context):
    return {{}}
"""

# The runner compiles a script as `${source}\\n;return {...}` in a function of
# (module, exports, require): the same wrapping here gives the same verdict.
_NODE_CHECKER = """\
const checkerVm = require('vm');
try {{
  checkerVm.compileFunction({source} + '\\n;return {{}};', ['module', 'exports', 'require'],
    {{ filename: {filename} }});
}} catch (error) {{
  const head = [];
  for (const line of String((error && error.stack) || error).split('\\n')) {{
    if (/^\\s+at /.test(line)) break;
    head.push(line);
  }}
  throw new Error(head.join('\\n').trim());
}}
if ({run}) {{
  // Run the body as the runner's load does (bounded: a body that does not finish in
  // 2 s gets the benefit of the doubt), then look for the runner's forms.
  const checked = {{ exports: {{}} }};
  globalThis.msbChecked = [checked, require];
  let found = null;
  try {{
    found = new checkerVm.Script('(function (module, exports, require) {{' + {source} +
      '\\n;return {{named: typeof process === "function" ? process : undefined,' +
      ' run: typeof run === "function" ? run : undefined}};\\n}}).call(' +
      'msbChecked[0].exports, msbChecked[0], msbChecked[0].exports, msbChecked[1])',
      {{ filename: {filename} }}).runInThisContext({{ timeout: 2000 }});
  }} catch (error) {{
    if (!(error && error.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT')) throw error;
  }}
  const exported = checked.exports;
  const callable = (value) => typeof value === 'function';
  if (found !== null && !(callable(exported) || callable(found.named) || callable(found.run) ||
      (exported && (callable(exported.process) || callable(exported.run))))) {{
    throw new Error({no_actor} + ': it exports no process(context) function and defines ' +
      'none (module.exports = {{ process: async (context) => ... }}, or async function ' +
      'run(context))');
  }}
}}
module.exports = {{ process() {{ return {{}}; }} }};
"""


def checker_source(language: Language, source: str, filename: str, *, run: bool = True) -> str:
    """A script that compiles ``source`` as ``filename`` and fails with the compiler's
    message when it does not compile, or with a message starting :data:`NO_ACTOR` when
    it defines no actor. Python: runs none of ``source``. JavaScript: runs its module
    body (in the sandbox the checker is loaded in) when ``run`` is true."""
    if language == "python":
        return _PYTHON_CHECKER.format(
            source=repr(source), filename=repr(filename), no_actor=repr(NO_ACTOR)
        )
    # JSON string literals are valid JavaScript string literals (U+2028/2029 included
    # since ES2019).
    return _NODE_CHECKER.format(
        source=json.dumps(source),
        filename=json.dumps(filename),
        no_actor=json.dumps(NO_ACTOR),
        run="true" if run else "false",
    )


def problem_from_load_error(message: str, details: dict[str, object]) -> str:
    """The compiler's text from a checker's load error (its ``details.message``)."""
    text = details.get("message")
    if isinstance(text, str) and text.strip():
        return text.strip()
    return message
