#!/usr/bin/env bash
# The real-programs suite's load loops, timed with and without libkmemleak.so (no daemon: the shim's
# own cost on the program). Not a test: figures go to BENCHMARKS.md by hand.
#   Benchmarks/RealPrograms/run.sh SHIM_SO MANY_LEAKS [REPS]
# Every server listens on 127.0.0.1 only, every loop is bounded, every process is ended by its pid.
set -euo pipefail
shim=$(realpath "$1"); many_leaks=$(realpath "$2"); reps=${3:-5}
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
load="$py $here/load.py"
work=$(mktemp -d /tmp/kml-bench-real.XXXXXX)
mkdir -p "$work/run"
pids=()
# An interrupted run ends each server it started (nginx: its workers too, they would outlive a killed
# master). Each *_once runs in a command substitution, a subshell with its own `pids` and EXIT trap.
stop_servers() {
  for p in "${pids[@]}"; do
    for c in $(cat "/proc/$p/task/$p/children" 2>/dev/null); do kill -9 "$c" 2>/dev/null; rm -f "/$c.client"; done
    kill -9 "$p" 2>/dev/null || true
  done
}
cleanup() { stop_servers; rm -rf "$work"; }
trap cleanup EXIT

free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# run_with MODE CMD...: MODE is plain or shim
run_with() {
  local mode=$1; shift
  if [ "$mode" = shim ]; then LD_PRELOAD=$shim KMEMLEAK_RUN_DIR=$work/run "$@"; else "$@"; fi
}
# the argv prefix that puts a background server under the shim (env execs it: $! is the server's pid)
env_for() { if [ "$1" = shim ]; then echo "env LD_PRELOAD=$shim KMEMLEAK_RUN_DIR=$work/run"; else echo env; fi; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

python_once() {  # the client thread's 200 requests inside python-server.py
  printf 'load 200\nexit\n' | run_with "$1" $py "$here/../../Tests/clients/python-server.py" | awk '/^LOADED/ {print $3}'
}

nginx_once() {
  local port; port=$(free_port)
  local prefix=$work/nginx-$1; mkdir -p "$prefix"
  cat > "$prefix/nginx.conf" <<CONF
master_process on; worker_processes 2; daemon off; pid $prefix/nginx.pid; error_log stderr error;
events { worker_connections 64; }
http { access_log off; client_body_temp_path $prefix/body; proxy_temp_path $prefix/proxy;
  fastcgi_temp_path $prefix/fastcgi; uwsgi_temp_path $prefix/uwsgi; scgi_temp_path $prefix/scgi;
  server { listen 127.0.0.1:$port; location / { return 200 "hello\n"; } } }
CONF
  $(env_for "$1") /usr/sbin/nginx -p "$prefix" -c "$prefix/nginx.conf" -e stderr >>"$work/nginx.log" 2>&1 &
  local master=$!; pids+=("$master"); trap stop_servers EXIT
  $load wait "$port" >&2; $load http "$port" 200
  local workers; workers=$(cat "/proc/$master/task/$master/children" 2>/dev/null || true)
  kill -QUIT "$master"; wait "$master" || true
  # workers that lost KMEMLEAK_RUN_DIR to setproctitle announce themselves in /: leave nothing there
  for w in $workers; do rm -f "/$w.client"; done
}

redis_once() {
  local port; port=$(free_port)
  $(env_for "$1") /usr/bin/redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --dir "$work" >>"$work/redis.log" 2>&1 &
  local server=$!; pids+=("$server"); trap stop_servers EXIT
  if $load wait "$port" >&2 2>/dev/null; then $load redis "$port" 200; else echo "crashed"; fi
  kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
}

sqlite_once() {
  local start end
  start=$(date +%s.%N)
  run_with "$1" /usr/bin/sqlite3 -batch ":memory:" >/dev/null <<'SQL'
CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c BLOB);
CREATE INDEX t_b ON t(b);
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000)
INSERT INTO t SELECT x, 'row ' || x, randomblob(x % 200) FROM n;
SELECT count(*), sum(a), count(DISTINCT b) FROM t;
SELECT count(*) FROM t WHERE b LIKE 'row 9%' AND length(c) > 10;
SQL
  end=$(date +%s.%N); echo "$end - $start" | bc
}

many_leaks_once() {
  local start end
  start=$(date +%s.%N); echo exit | run_with "$1" "$many_leaks" >/dev/null; end=$(date +%s.%N)
  echo "$end - $start" | bc
}

printf '%-12s %12s %12s %9s\n' program plain_s shim_s slowdown
for program in python nginx redis sqlite many_leaks; do
  plain=(); shimmed=()
  for _ in $(seq "$reps"); do   # interleaved, so that machine load hits both alike
    plain+=("$(${program}_once plain)"); shimmed+=("$(${program}_once shim)")
  done
  p=$(printf '%s\n' "${plain[@]}" | median)
  if printf '%s\n' "${shimmed[@]}" | grep -q crashed; then
    printf '%-12s %12s %12s %9s\n' "$program" "$p" crashed -
  else
    s=$(printf '%s\n' "${shimmed[@]}" | median)
    printf '%-12s %12s %12s %8.2fx\n' "$program" "$p" "$s" "$(echo "$s / $p" | bc -l)"
  fi
done
