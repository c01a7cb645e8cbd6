#!/usr/bin/env bash
# Brings the control plane up on embedded defaults: bubblewrap sandboxes, SQLite state,
# the actor scripts in examples/, every port on 127.0.0.1 (WebSocket 5556, HTTP 5555,
# metrics 9090). First it runs the seed guide's example actor once through the CLI, to
# show a script executing end to end, then it serves until Ctrl-C / SIGTERM.
# Idempotent: setup skips what is installed; state persists in .run/state.db.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
mkdir -p .run
export MICROSANDBOX_STATE_SQLITE_PATH="$PWD/.run/state.db"
export MICROSANDBOX_SCRIPTS_FOLDERS="$PWD/examples"
CLI=.venv/bin/reflow-microsandbox

if [ -f examples/test_actor.py ]; then
  echo "== one run of examples/test_actor.py (its counter lives in .run/state.db)"
  "$CLI" run examples/test_actor.py --input data='"hello"'
fi

echo "== serving: ws://127.0.0.1:5556  http://127.0.0.1:5555/health  http://127.0.0.1:9090/metrics"
exec "$CLI" serve "$@"
