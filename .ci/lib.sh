# Sourced by the scripts in .ci/ and packaging/: the steps several of them take the same way.

# Runs a command as root (through sudo when not root).
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Installs the Debian packages named, if any.
apt_install() {
  [ $# -gt 0 ] || return 0
  echo "installing $*" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until the file LOG holds PATTERN (a grep pattern). Exits the calling script, showing the
# log, when process PID ends first or SECONDS pass.
#   await_log PID LOG PATTERN SECONDS
await_log() {
  local pid="$1" log="$2" pattern="$3" seconds="$4"
  for _ in $(seq $((seconds * 10))); do
    grep -q -- "$pattern" "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "exited before '$pattern'" >&2; exit 1; }
    sleep 0.1
  done
  cat "$log" >&2
  echo "no '$pattern' within $seconds s" >&2
  exit 1
}
