# shellcheck shell=bash
# Process management shared by bench/run.sh and bench/reload.sh (sourced):
# messages, the benchmark lock, starting, waiting for and stopping servers
# by PID, the EXIT trap.
#
# The sourcing script sets, before calling into it:
#   ERR_PREFIX        what die() puts before "error:" (e.g. "bench")
#   HELPER            bench/helper.py (ident, alive, stop)
#   LIFETIME          seconds each server may live, a safety net should the
#                     script be killed before it can stop them
#   WAIT_LISTEN_SECS  how long a server may take to listen on its ports
#   PORT_BASE, PORT_ENV  first port used, and the variable that sets it
#   LOCK, LOCK_WAIT   the benchmark lock file ("" for none; default
#                     $DEFAULT_LOCK) and how long to wait for it, in seconds
# and defines on_exit, run by the EXIT trap before the lock is released (to
# stop its servers with stop_all and undo what it changed).
#
# Servers log to $WORK/logs/NAME.log; each is remembered as "PID:STARTTIME"
# (bench/helper.py ident), so a PID reused by an unrelated process is never
# signalled.

# shellcheck disable=SC2034  # used by the scripts: LOCK=${..._LOCK-$DEFAULT_LOCK}
DEFAULT_LOCK=/tmp/l4mesh-bench.lock

PIDS=()            # "PID:STARTTIME" of every server started and not stopped
declare -A ENTRY   # server name -> "PID:STARTTIME"
WORK=""            # the run's temp dir: configs, logs, raw results
LOCKED=0           # 1 while we hold the lock

# Print a timestamped progress message on stderr.
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Print an error and exit (the EXIT trap stops what was started).
die() { printf '%s: error: %s\n' "$ERR_PREFIX" "$*" >&2; exit 1; }

# The command line as typed, for the report: the variables named $1_* that
# were set, then "bash $2".
typed_command() {
  local vars
  vars=$(env | { grep -E "^$1_[A-Z_]+=" || true; } | sort | sed -E 's/^([^=]+)=(.*)$/\1="\2"/' | tr '\n' ' ')
  printf '%sbash %s' "$vars" "$2"
}

# The l4mesh revision for the report: the short commit, "-dirty" if src/ or
# Cargo.toml has uncommitted changes.
l4mesh_rev() {
  local rev
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no-commit")
  [[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml 2>/dev/null) ]] || rev+="-dirty"
  echo "$rev"
}

# Settings check: each argument is VAR:ENV_NAME; fail unless $VAR is a
# positive integer.
require_positive() {
  local v env_name
  for v in "$@"; do
    env_name=${v#*:} v=${v%%:*}
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$env_name must be a positive integer, got '${!v}'"
  done
}

# Settings check: fail unless the $1 ports from PORT_BASE on are all
# unprivileged and valid.
require_port_range() {
  (( PORT_BASE >= 1024 && PORT_BASE + $1 - 1 <= 65535 )) || die "$PORT_ENV out of range"
}

# Set the traps and make the temp dir WORK (prefix $1, under /tmp) with
# WORK/logs.
begin_run() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  mkdir -p "$WORK/logs"
}

# EXIT trap: the script's on_exit (stop what was started), release the
# lock, and exit with the script's status.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  on_exit
  release_lock
  [[ -n $WORK ]] && log "logs and configs kept in $WORK"
  exit "$rc"
}

# ------------------------------------------------------------------- lock
# Take the benchmark lock: wait (polling every 10 s, up to LOCK_WAIT s)
# until nobody holds it, then create it atomically with our PID.
acquire_lock() {
  [[ -z $LOCK ]] && return 0
  local waited=0
  while ! (set -o noclobber; echo "$$" >"$LOCK") 2>/dev/null; do
    ((waited < LOCK_WAIT)) ||
      die "the benchmark lock $LOCK is still held (by PID $(cat "$LOCK" 2>/dev/null || echo '?')) after ${LOCK_WAIT}s; giving up"
    ((waited % 60 == 0)) &&
      log "waiting for the benchmark lock $LOCK (held by PID $(cat "$LOCK" 2>/dev/null || echo '?'))"
    sleep 10
    waited=$((waited + 10))
  done
  LOCKED=1
  log "took the benchmark lock $LOCK"
}

# Between measurements: warn if the lock is no longer ours, and take it
# again if someone removed it. Returns 1 if it was lost (for the report).
check_lock() {
  ((LOCKED)) || return 0
  local owner
  owner=$(cat "$LOCK" 2>/dev/null || true)
  [[ $owner == "$$" ]] && return 0
  if [[ -z $owner ]] && (set -o noclobber; echo "$$" >"$LOCK") 2>/dev/null; then
    log "warning: someone removed the benchmark lock $LOCK during the run; took it again"
  else
    log "warning: the benchmark lock $LOCK now names PID ${owner:-?}; another benchmark may run alongside"
  fi
  return 1
}

# Remove the lock if it is ours.
release_lock() {
  ((LOCKED)) || return 0
  LOCKED=0
  if [[ $(cat "$LOCK" 2>/dev/null || true) == "$$" ]]; then
    rm -f "$LOCK"
    log "released the benchmark lock"
  else
    log "warning: the benchmark lock $LOCK was no longer ours at the end; left it alone"
  fi
}

# ---------------------------------------------------------------- servers
# True if nothing listens on TCP port $1.
port_free() { [[ -z $(ss -Hltn "( sport = :$1 )") ]]; }

# Fail early if any of the given ports is already taken.
require_free_ports() {
  local port
  for port in "$@"; do
    port_free "$port" || die "port $port is already in use; set $PORT_ENV to a free range"
  done
}

# Start server $1 (log $WORK/logs/$1.log) running "${@:2}" under `timeout`
# with the LIFETIME limit, and remember it in PIDS and ENTRY.
# --foreground: otherwise a SIGTERM to timeout reaches the server twice (once
# directly, once through the process group), and l4mesh takes a second
# SIGTERM as "exit now, without draining" (status 1).
start_server() {
  local name=$1 entry
  shift
  timeout --foreground -k 3 "$LIFETIME" "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null &
  entry=$(python3 "$HELPER" ident "$!") || entry="$!:0"
  PIDS+=("$entry")
  ENTRY[$name]=$entry
}

# Wait until server $1 listens on every port given after it (deadline
# WAIT_LISTEN_SECS); fail with its log if it exits or the deadline passes.
wait_listening() {
  local name=$1 port i
  shift
  for port in "$@"; do
    for ((i = 0; i < WAIT_LISTEN_SECS * 20; i++)); do
      port_free "$port" || continue 2
      [[ -n $(python3 "$HELPER" alive "${ENTRY[$name]}") ]] || break
      sleep 0.05
    done
    tail -n 20 "$WORK/logs/$name.log" >&2 || true
    die "$name did not start listening on 127.0.0.1:$port (log: $WORK/logs/$name.log)"
  done
}

# Reap server $1 once signalled; warn unless it exited 0 (l4mesh must, on
# SIGTERM).
reap_server() {
  local st=0
  wait "${ENTRY[$1]%%:*}" 2>/dev/null || st=$?
  ((st == 0)) || log "warning: $1 exited with status $st on SIGTERM (log: $WORK/logs/$1.log)"
}

# Stop server $1 alone, and reap it.
stop_server() {
  local entry=${ENTRY[$1]} kept=() e
  python3 "$HELPER" stop "$entry" || true
  reap_server "$1"
  for e in "${PIDS[@]}"; do [[ $e == "$entry" ]] || kept+=("$e"); done
  PIDS=("${kept[@]}")
}

# Stop every server still running, all at once; those named as arguments
# (if started) are reaped first, with a warning unless they exited 0.
# shellcheck disable=SC2120  # the names are optional
stop_all() {
  ((${#PIDS[@]})) || return 0
  log "stopping ${#PIDS[@]} server(s)"
  python3 "$HELPER" stop "${PIDS[@]}" || true
  local name
  for name in "$@"; do
    [[ -z ${ENTRY[$name]:-} ]] || reap_server "$name"
  done
  wait 2>/dev/null || true
  PIDS=()
}
