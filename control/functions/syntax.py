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

A checker whose load fails reports the problem as its load error's message; one that
loads has found nothing wrong. :func:`problem_from_load_error` extracts the text.
"""

from __future__ import annotations

import json

from ..config import Language

CHECKER_FILENAME = "<msb-syntax-check>"

_PYTHON_CHECKER = """\
import traceback as _traceback
try:
    compile({source}, {filename}, "exec")
except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as _error:
    raise RuntimeError(
        "".join(_traceback.format_exception_only(type(_error), _error)).rstrip()
    ) from None


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
module.exports = {{ process() {{ return {{}}; }} }};
"""


def checker_source(language: Language, source: str, filename: str) -> str:
    """A script that compiles ``source`` as ``filename`` and fails with the compiler's
    message when it does not compile; it runs none of ``source``."""
    if language == "python":
        return _PYTHON_CHECKER.format(source=repr(source), filename=repr(filename))
    # JSON string literals are valid JavaScript string literals (U+2028/2029 included
    # since ES2019).
    return _NODE_CHECKER.format(source=json.dumps(source), filename=json.dumps(filename))


def problem_from_load_error(message: str, details: dict[str, object]) -> str:
    """The compiler's text from a checker's load error (its ``details.message``)."""
    text = details.get("message")
    if isinstance(text, str) and text.strip():
        return text.strip()
    return message
