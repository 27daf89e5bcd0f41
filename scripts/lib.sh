# Shared helpers for scripts/up, scripts/test and scripts/down. Sourced, not run.

# Installs the Debian packages the gateway needs when a command is missing.
# As root it runs apt-get; otherwise it prints the command and fails.
ensure_packages() {
  local missing=()
  command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # The fault suite partitions a NATS node with nftables (docs/reliability.md).
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if [[ $(id -u) -eq 0 ]]; then
    echo "Installing ${missing[*]} with apt-get..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Missing: ${missing[*]}. Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

# Whether cargo-nextest 0.9.91 or later (test priorities) is installed.
# Optional: scripts/test falls back to `cargo test` without it.
nextest_recent() {
  local v
  v=$(cargo nextest --version 2>/dev/null | sed -n 's/^cargo-nextest \([0-9.]*\).*/\1/p' | head -n1)
  [[ -n "$v" ]] || return 1
  printf '%s\n%s\n' 0.9.91 "$v" | sort -V -C
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "cargo is missing: install Rust from https://rustup.rs (rustup), then run this again." >&2
      exit 1
    fi
  fi
}
