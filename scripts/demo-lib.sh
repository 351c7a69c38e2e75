# Shared by scripts/demo.sh and scripts/demo-fleet.sh (sourced): the
# release build, waiting for a port, and name-answering backends. The caller
# keeps the PIDS array and stops them.

# Builds the release binary when it is missing or older than the sources.
build_release() {
  if [[ ! -x target/release/l4mesh || -n "$(find src Cargo.toml -newer target/release/l4mesh -print -quit)" ]]; then
    echo "== building l4mesh (release)"
    cargo build --release --quiet --bin l4mesh
  fi
}

# Waits until something listens on 127.0.0.1:$1 (up to 10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 after 10 s" >&2
  return 1
}

# A backend that writes its name and closes every connection.
backend() {
  python3 -c '
import socket, sys
name, port = sys.argv[1].encode() + b"\n", int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(128)
while True:
    c, _ = s.accept()
    c.sendall(name)
    c.close()
' "$1" "$2" &
  PIDS+=($!)
}

