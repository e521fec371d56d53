#!/usr/bin/env bash
# The team MLflow server: PostgreSQL 15 holds runs, params and metrics; artifacts go to a shared folder
# that clients write straight into (--no-serve-artifacts), as compute nodes on an HPC filesystem do.
#
#   bash scripts/mlflow-server.sh start|stop|status [--home DIR] [--port N] [--host H] [--artifacts DIR]
#                                                   [--workers N] [--allowed-hosts LIST]
#
#   --home DIR        everything the server keeps: pg/ (the database), run/ (its socket), logs, pid files,
#                     server.env (the settings of the running server); default $MEDWEAVE_MLFLOW_HOME or
#                     ./mlflow-server
#   --port N          MLflow's port (default 5000); PostgreSQL takes a free port of its own, on 127.0.0.1 only
#   --host H          interface MLflow binds (default 127.0.0.1); 0.0.0.0 lets compute nodes reach it
#   --artifacts DIR   artifact root for new experiments (default DIR/artifacts): put it on a filesystem the
#                     compute nodes mount at the same path. Existing experiments keep the root they got.
#   --workers N       MLflow worker processes (default 4)
#   --allowed-hosts   Host headers MLflow accepts; with a non-local --host it defaults to this machine's
#                     names plus localhost and private IPs
#
# `start` prints the tracking URI on stdout (messages go to stderr), so
#   export MEDWEAVE_MLFLOW_URI=$(bash scripts/mlflow-server.sh start --host 0.0.0.0)
# works; it is a no-op that prints the URI when the server already runs. `stop` ends exactly the
# processes `start` started (by their pid files). `status` exits 0 when both run, 3 otherwise.
# PostgreSQL refuses to run as root: as root, the database runs as the user medweave-pg (created when
# missing; MEDWEAVE_PG_USER overrides), which must be able to reach DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_BIN="${MEDWEAVE_PG_BIN:-/usr/lib/postgresql/15/bin}"
START_TIMEOUT="${MEDWEAVE_MLFLOW_START_TIMEOUT:-120}"

say() { echo "mlflow-server: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

usage() {
  sed -n '5,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
ACTION="$1"
shift
HOME_DIR="${MEDWEAVE_MLFLOW_HOME:-$PWD/mlflow-server}"
PORT="" HOST="" ARTIFACTS="" WORKERS="" ALLOWED_HOSTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --home) HOME_DIR="${2:?--home needs a folder}" ;;
    --port) PORT="${2:?--port needs a number}" ;;
    --host) HOST="${2:?--host needs an address}" ;;
    --artifacts) ARTIFACTS="${2:?--artifacts needs a folder}" ;;
    --workers) WORKERS="${2:?--workers needs a number}" ;;
    --allowed-hosts) ALLOWED_HOSTS="${2:?--allowed-hosts needs a list}" ;;
    -h | --help) usage ;;
    *) say "unknown option: $1" && usage ;;
  esac
  shift 2
done
case "$ACTION" in start | stop | status) ;; *) usage ;; esac

if [ "$ACTION" != start ] && [ ! -d "$HOME_DIR" ]; then
  say "nothing runs from $HOME_DIR (no such folder)"
  [ "$ACTION" = stop ] && exit 0 || exit 3
fi
mkdir -p "$HOME_DIR"
DIR="$(cd "$HOME_DIR" && pwd)"
PGDATA="$DIR/pg"
SOCKDIR="$DIR/run"
ENV_FILE="$DIR/server.env"
MLFLOW_PID="$DIR/mlflow.pid"
PG_PID="$DIR/postgres.pid"

# Settings of the server that runs (or ran) from DIR: stop/status need no options, and start reuses them.
SAVED_PORT="" SAVED_HOST="" SAVED_ARTIFACTS="" SAVED_PG_PORT="" SAVED_URI=""
if [ -f "$ENV_FILE" ]; then
  while IFS='=' read -r key value; do
    case "$key" in
      PORT) SAVED_PORT="$value" ;; HOST) SAVED_HOST="$value" ;; ARTIFACTS) SAVED_ARTIFACTS="$value" ;;
      PG_PORT) SAVED_PG_PORT="$value" ;; URI) SAVED_URI="$value" ;;
    esac
  done <"$ENV_FILE"
fi

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
read_pid() { [ -f "$1" ] && head -n1 "$1" | tr -dc '0-9' || true; }

# The pid in mlflow.pid, only while that process still is our `mlflow server` (pids get reused).
mlflow_pid() {
  local pid
  pid="$(read_pid "$MLFLOW_PID")"
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "mlflow.* server" && echo "$pid" || true
}

# The postmaster's pid, from PostgreSQL's own postmaster.pid, while it runs on our data folder.
postgres_pid() {
  local pid
  pid="$(read_pid "$PGDATA/postmaster.pid")"
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "postgres" && echo "$pid" || true
}

healthy() { curl -fsS -m 3 "http://$1/health" >/dev/null 2>&1; }
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Where this machine reaches the server ("127.0.0.1:5000"); 0.0.0.0 is not an address to connect to.
local_addr() { [ "$1" = 0.0.0.0 ] && echo "127.0.0.1:$2" || echo "$1:$2"; }

# PostgreSQL will not run as root; as root we run it as an unprivileged user that owns DIR/pg.
PG_USER=""
if [ "$(id -u)" -eq 0 ]; then
  if [ -n "${MEDWEAVE_PG_USER:-}" ]; then
    PG_USER="$MEDWEAVE_PG_USER"
  elif [ -d "$PGDATA" ] && [ "$(stat -c %U "$PGDATA")" != root ]; then
    PG_USER="$(stat -c %U "$PGDATA")"
  elif id -u medweave-pg >/dev/null 2>&1; then
    PG_USER=medweave-pg
  elif [ "$ACTION" != start ]; then
    PG_USER=nobody # nothing was set up here: stop and status have nothing to run as anyone
  elif useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin medweave-pg \
    >/dev/null 2>&1; then
    PG_USER=medweave-pg
  else
    PG_USER=nobody
  fi
fi

# Run a PostgreSQL program as the database's user, from a folder that user may enter.
as_pg() {
  if [ -z "$PG_USER" ]; then
    (cd "$DIR" && "$@")
  elif command -v runuser >/dev/null 2>&1; then
    (cd "$SOCKDIR" && runuser -u "$PG_USER" -- "$@")
  else
    (cd "$SOCKDIR" && su -s /bin/sh "$PG_USER" -c "$(printf '%q ' "$@")")
  fi
}

stop_mlflow() {
  local pid
  pid="$(mlflow_pid)"
  if [ -n "$pid" ]; then
    # start ran it with setsid: its process group holds uvicorn and the workers, and nothing else.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    say "stopped MLflow (pid $pid)"
  fi
  rm -f "$MLFLOW_PID"
}

stop_postgres() {
  if [ -n "$(postgres_pid)" ]; then
    as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 30 >/dev/null
    say "stopped PostgreSQL"
  fi
  rm -f "$PG_PID"
}

do_status() {
  local mpid ppid rc=0
  mpid="$(mlflow_pid)"
  ppid="$(postgres_pid)"
  if [ -n "$mpid" ]; then
    if healthy "$(local_addr "$SAVED_HOST" "$SAVED_PORT")"; then
      echo "mlflow: running (pid $mpid) at $SAVED_URI, healthy"
    else
      echo "mlflow: running (pid $mpid) at $SAVED_URI, but /health does not answer (see $DIR/mlflow.log)"
      rc=3
    fi
  else
    echo "mlflow: not running"
    rc=3
  fi
  if [ -n "$ppid" ]; then
    echo "postgres: running (pid $ppid) on 127.0.0.1:$SAVED_PG_PORT, data in $PGDATA${PG_USER:+ (as $PG_USER)}"
  else
    echo "postgres: not running"
    rc=3
  fi
  echo "artifacts: ${SAVED_ARTIFACTS:-none yet}"
  return $rc
}

find_mlflow() {
  if [ -x "$ROOT/.venv/bin/mlflow" ]; then
    echo "$ROOT/.venv/bin/mlflow"
  elif command -v mlflow >/dev/null 2>&1; then
    command -v mlflow
  else
    die "no mlflow: install medweave with its server extra (pip install -e '.[server]')"
  fi
}

start_postgres() {
  for tool in initdb pg_ctl postgres psql; do
    [ -x "$PG_BIN/$tool" ] || die "PostgreSQL 15 is missing ($PG_BIN/$tool): run scripts/test-deps.sh"
  done
  mkdir -p "$SOCKDIR"
  chmod 700 "$SOCKDIR"
  if [ -n "$PG_USER" ]; then
    chown "$PG_USER" "$SOCKDIR"
    if [ -d "$PGDATA" ] && [ "$(stat -c %U "$PGDATA")" != "$PG_USER" ]; then chown -R "$PG_USER" "$PGDATA"; fi
    as_pg test -w "$SOCKDIR" 2>/dev/null ||
      die "PostgreSQL runs as $PG_USER (it refuses root) and $PG_USER cannot reach $DIR:" \
        "make its parent folders traversable (chmod o+x) or choose another --home"
  fi
  local secret="$DIR/pg.secret"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    say "creating the database cluster in $PGDATA${PG_USER:+ (owned by $PG_USER)}"
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret")
    local pwfile="$SOCKDIR/initdb.pw"
    (umask 077 && cat "$secret" >"$pwfile")
    [ -z "$PG_USER" ] || chown "$PG_USER" "$pwfile"
    mkdir -p "$PGDATA"
    [ -z "$PG_USER" ] || chown "$PG_USER" "$PGDATA"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U mlflow --pwfile="$pwfile" --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --no-locale --no-instructions >"$DIR/initdb.log" 2>&1 || {
      rm -f "$pwfile"
      die "initdb failed: $(tail -n 5 "$DIR/initdb.log")"
    }
    rm -f "$pwfile"
    # The socket lives in DIR/run (0700: only the database's user reaches it); unix sockets paths
    # are capped near 107 bytes, so a deep DIR gets TCP on 127.0.0.1 only.
    local sockets="'$SOCKDIR'"
    [ ${#SOCKDIR} -le 90 ] || sockets="''"
    printf "\n# scripts/mlflow-server.sh\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = %s\n" \
      "$sockets" >>"$PGDATA/postgresql.conf"
  fi
  [ -f "$secret" ] || die "$secret is missing: the database password; remove $PGDATA to start afresh"
  PG_PASSWORD="$(cat "$secret")"

  if [ -n "$(postgres_pid)" ]; then
    PG_PORT="$SAVED_PG_PORT"
  else
    PG_PORT="$SAVED_PG_PORT"
    if [ -z "$PG_PORT" ] || port_taken "$PG_PORT"; then
      PG_PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
      [[ "$PG_PORT" =~ ^[0-9]+$ ]] || die "found no free port for PostgreSQL"
    fi
    local pglog="$DIR/postgres.log"
    touch "$pglog"
    [ -z "$PG_USER" ] || chown "$PG_USER" "$pglog"
    as_pg "$PG_BIN/pg_ctl" start -D "$PGDATA" -l "$pglog" -o "-p $PG_PORT" -w -t 30 >/dev/null ||
      die "PostgreSQL did not start; the end of $pglog:
$(tail -n 15 "$pglog")"
    STARTED_PG=1
    say "PostgreSQL runs on 127.0.0.1:$PG_PORT"
  fi
  postgres_pid >"$PG_PID"
  local exists
  exists="$(PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U mlflow -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")"
  if [ "$exists" != 1 ]; then
    PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U mlflow -d postgres -qc \
      "CREATE DATABASE mlflow" >/dev/null
    say "created the database mlflow"
  fi
}

start_mlflow() {
  local mlflow="$1" addr allowed=()
  if [ -z "$ALLOWED_HOSTS" ] && [ "$HOST" != 127.0.0.1 ] && [ "$HOST" != localhost ]; then
    local names="localhost,127.0.0.1,$HOST,$(hostname)" name
    name="$(hostname -f 2>/dev/null || true)"
    [ -z "$name" ] || names="$names,$name"
    ALLOWED_HOSTS="$(echo "$names" | tr ',' '\n' | sort -u | sed 's/.*/&,&:*/' | paste -sd,)"
    ALLOWED_HOSTS="$ALLOWED_HOSTS,10.*,192.168.*$(printf ',172.%s.*' $(seq 16 31))"
  fi
  [ -z "$ALLOWED_HOSTS" ] || allowed=(--allowed-hosts "$ALLOWED_HOSTS")
  mkdir -p "$ARTIFACTS"
  : >>"$DIR/mlflow.log"
  echo "--- $(date -Is) start on $HOST:$PORT" >>"$DIR/mlflow.log"
  # The database password travels in the environment, not on a command line that ps shows.
  MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow" \
    setsid "$mlflow" server --default-artifact-root "$ARTIFACTS" --no-serve-artifacts \
    --host "$HOST" --port "$PORT" --workers "$WORKERS" ${allowed[@]+"${allowed[@]}"} \
    >>"$DIR/mlflow.log" 2>&1 </dev/null &
  echo $! >"$MLFLOW_PID"
  local pid=$! t0=$SECONDS
  addr="$(local_addr "$HOST" "$PORT")"
  until healthy "$addr"; do
    if ! alive "$pid"; then
      rm -f "$MLFLOW_PID"
      fail_start "MLflow exited while starting"
    fi
    if [ $((SECONDS - t0)) -ge "$START_TIMEOUT" ]; then
      stop_mlflow
      fail_start "MLflow did not answer http://$addr/health within ${START_TIMEOUT}s"
    fi
    sleep 0.5
  done
  say "MLflow answers on $addr after $((SECONDS - t0))s"
}

# The log tail tells why; the EXIT trap stops the PostgreSQL this start started.
fail_start() {
  say "error: $1; the end of $DIR/mlflow.log:"
  tail -n 25 "$DIR/mlflow.log" >&2
  exit 1
}

do_start() {
  local running
  running="$(mlflow_pid)"
  if [ -n "$running" ] && healthy "$(local_addr "$SAVED_HOST" "$SAVED_PORT")"; then
    if [ -n "$PORT$HOST$ARTIFACTS" ] &&
      [ "${PORT:-$SAVED_PORT}|${HOST:-$SAVED_HOST}|${ARTIFACTS:-$SAVED_ARTIFACTS}" != \
        "$SAVED_PORT|$SAVED_HOST|$SAVED_ARTIFACTS" ]; then
      say "already running with other settings (port $SAVED_PORT, host $SAVED_HOST); stop it to change them"
    else
      say "already running (pid $running)"
    fi
    echo "$SAVED_URI"
    return 0
  fi
  [ -z "$running" ] || stop_mlflow # running but deaf: start it afresh
  PORT="${PORT:-${SAVED_PORT:-5000}}"
  HOST="${HOST:-${SAVED_HOST:-127.0.0.1}}"
  WORKERS="${WORKERS:-4}"
  ARTIFACTS="${ARTIFACTS:-${SAVED_ARTIFACTS:-$DIR/artifacts}}"
  mkdir -p "$ARTIFACTS"
  ARTIFACTS="$(cd "$ARTIFACTS" && pwd)"
  local mlflow
  mlflow="$(find_mlflow)"
  PYTHON="$(dirname "$mlflow")/python"
  [ -x "$PYTHON" ] || PYTHON=python3
  "$PYTHON" -c pass 2>/dev/null || die "cannot run $PYTHON (the Python of $mlflow) as $(id -un)"
  "$PYTHON" -c "import psycopg" 2>/dev/null ||
    die "MLflow reaches PostgreSQL through psycopg 3: pip install -e '.[server]' (psycopg[binary])"
  ! port_taken "$PORT" || die "port $PORT is taken by another program; choose --port"
  # A failed start leaves nothing running that it started.
  STARTED_PG=""
  trap 'status=$?; [ $status -eq 0 ] || [ -z "$STARTED_PG" ] || stop_postgres' EXIT
  start_postgres
  local uri_host="$HOST"
  [ "$HOST" != 0.0.0.0 ] || uri_host="$(hostname -f 2>/dev/null || hostname)"
  local uri="http://$uri_host:$PORT"
  printf 'PORT=%s\nHOST=%s\nARTIFACTS=%s\nPG_PORT=%s\nURI=%s\n' "$PORT" "$HOST" "$ARTIFACTS" "$PG_PORT" "$uri" \
    >"$ENV_FILE"
  start_mlflow "$mlflow"
  say "artifacts go to $ARTIFACTS; logs and pid files in $DIR"
  echo "$uri"
}

case "$ACTION" in
  start) do_start ;;
  stop)
    stop_mlflow
    stop_postgres
    ;;
  status) do_status ;;
esac
