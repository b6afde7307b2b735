#!/usr/bin/env bash
# W1: root → N plugin steps → join, each step a real process (the sample plugin), every step
# durable — run by stella and, where they are installed, by Prefect, Dagster and Airflow the
# same way (each task runs bundles/sample-plugin/run.sh with the same request on stdin), so
# that the ratio can be measured again on any machine. Prints each wall time and its ratio to
# stella's, from the same run.
#
#   appliance/bench/w1.sh [N]        (N = 1000; run from the checkout, after cargo build --release)
#
# Nothing is installed: a peer whose Python package is missing is reported as skipped.
set -euo pipefail
N="${1:-1000}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${STELLA_BIN:-$ROOT/target/release/stella}"
PLUGIN="$ROOT/bundles/sample-plugin/run.sh"
WORK="$(mktemp -d)"
DAEMON=""
cleanup() { [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
[ -x "$BIN" ] || { echo "w1: no $BIN (cargo build --release first)" >&2; exit 2; }
now() { python3 -c 'import time; print(time.monotonic())'; }

# ---- stella: a dev appliance on a fresh state dir, its in-process executor, default slots
{
  echo 'name = "w1"'
  echo '[steps.root]'; echo 'plugin = "sample-plugin"'
  for i in $(seq 0 $((N - 1))); do
    echo "[steps.s$i]"; echo 'plugin = "sample-plugin"'; echo 'needs = ["root"]'
  done
  echo '[steps.join]'; echo 'plugin = "sample-plugin"'
  printf 'needs = [%s]\n' "$(seq 0 $((N - 1)) | sed 's/.*/"s&"/' | paste -sd, -)"
} >"$WORK/w1.dag.toml"
S=(env STELLA_LOG=warn "$BIN" --state-dir "$WORK/stella")
"${S[@]}" serve --dev --listen '' >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 1 600); do [ -S "$WORK/stella/run/stella/orchestrator.sock" ] && break; sleep 0.1; done
for _ in $(seq 1 100); do "${S[@]}" bundle list 2>/dev/null | grep -q sample-plugin && break; sleep 0.1; done
"${S[@]}" orch dag register "$WORK/w1.dag.toml" >/dev/null
t0=$(now)
"${S[@]}" orch run start w1 >/dev/null
"${S[@]}" orch run stream run-1 --after 0 --until-done >/dev/null
t1=$(now)
read -r state inside < <("${S[@]}" orch run status run-1 --format json | python3 -c '
import json, sys, datetime
r = json.load(sys.stdin)
t = lambda k: datetime.datetime.fromisoformat(r[k].replace("Z", "+00:00"))
print(r["status"], round((t("finishedAt") - t("createdAt")).total_seconds(), 2))')
[ "$state" = succeeded ] || { echo "w1: stella's run ended $state" >&2; exit 1; }
STELLA_S=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
echo "stella      $STELLA_S s  (root → $N sample-plugin steps → join, $(nproc) cores; the run's own createdAt → finishedAt: $inside s)"

# ---- the peers, each task one process of the same plugin with the same request
peer() { # name, python module, script
  local name=$1 module=$2 script=$3
  if ! python3 -c "import $module" 2>/dev/null; then
    echo "$name  skipped (python3 -c 'import $module' fails: not installed)"
    return
  fi
  local t0 t1
  t0=$(now)
  (cd "$WORK" && W1_N="$N" W1_PLUGIN="$PLUGIN" python3 -c "$script") >"$WORK/$name.log" 2>&1 ||
    { echo "$name  failed (see its log: run again with the script kept)"; return; }
  t1=$(now)
  python3 -c "t=$t1-$t0; print(f'$name  {t:.2f} s  ({t/$STELLA_S:.1f}x stella)')"
}

TASK='
import os, subprocess, json
def run_step(step):
    env = dict(os.environ, STELLA_STEP=step, STELLA_ATTEMPT="1")
    subprocess.run([os.environ["W1_PLUGIN"]], input=json.dumps({"step": step}).encode(), env=env, check=True, capture_output=True)
N = int(os.environ["W1_N"])
'

peer "prefect    " prefect "$TASK
from prefect import flow, task
t = task(run_step)
@flow
def w1():
    root = t.submit('root'); root.result()
    fan = [t.submit(f's{i}', wait_for=[root]) for i in range(N)]
    t.submit('join', wait_for=fan).result()
w1()"

# Dagster in process, on a SQLite-backed temporary instance (durable, as stella's steps are).
peer "dagster    " dagster "$TASK
from dagster import job, op, In, Nothing, DagsterInstance
def make(name, ins):
    @op(name=name, ins={k: In(Nothing) for k in ins})
    def _op():
        run_step(name)
    return _op
root = make('root', [])
mids = [make(f's{i}', ['start']) for i in range(N)]
join = make('join', [f'i{i}' for i in range(N)])
@job
def w1():
    r = root()
    join(**{f'i{i}': m(start=r) for i, m in enumerate(mids)})
w1.execute_in_process(instance=DagsterInstance.local_temp())"

peer "airflow    " airflow "$TASK
import subprocess, sys
os.makedirs('dags', exist_ok=True)
open('dags/w1.py', 'w').write('''
import os, datetime
from airflow import DAG
from airflow.operators.bash import BashOperator
N = int(os.environ[\"W1_N\"])
cmd = 'echo {} | STELLA_STEP={{{{ task.task_id }}}} STELLA_ATTEMPT=1 ' + os.environ['W1_PLUGIN']
with DAG('w1', start_date=datetime.datetime(2026, 1, 1), schedule=None) as dag:
    root = BashOperator(task_id='root', bash_command=cmd)
    join = BashOperator(task_id='join', bash_command=cmd)
    for i in range(N):
        root >> BashOperator(task_id=f's{i}', bash_command=cmd) >> join
''')
env = dict(os.environ, AIRFLOW_HOME=os.getcwd(), AIRFLOW__CORE__DAGS_FOLDER=os.path.join(os.getcwd(), 'dags'), AIRFLOW__CORE__LOAD_EXAMPLES='False')
subprocess.run(['airflow', 'db', 'migrate'], env=env, check=True, capture_output=True)
subprocess.run(['airflow', 'dags', 'test', 'w1'], env=env, check=True)"
