# shellcheck shell=bash
# Shared helpers for scripts/setup, scripts/test and scripts/bench.
# Source it (`. scripts/lib.sh`); it defines functions and constants only.
#
# Environment it honours:
#   CARGO_TARGET_DIR  cargo's target dir (default $HOME/.cache/kwasm/target, shared
#                     by every checkout and CI run on this machine so builds are reused)
#   KWASM_TOOLS       install root for tools we build (default $HOME/.cache/kwasm/tools)

KWASM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The WASM crates built for wasm32-wasip2: example plugins and test fixtures.
KWASM_WASM_CRATES=(passthrough filter transform router redact misbehave other-world)

# The test broker: nisshi (crates.io), a Kafka-compatible broker. See shared/broker.md
# for why this one and why these features (plain `--locked` needs a newer rustc).
NISSHI_VERSION="0.8.1"
# shellcheck disable=SC2034,SC2054  # used by scripts/setup; the commas are one argument
NISSHI_INSTALL_ARGS=(nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version
    --no-default-features --features dynostore,libsql)

kwasm_log() {
    printf '[kwasm] %s\n' "$*" >&2
}

kwasm_die() {
    printf '[kwasm] error: %s\n' "$*" >&2
    exit 1
}

kwasm_tools_dir() {
    printf '%s\n' "${KWASM_TOOLS:-$HOME/.cache/kwasm/tools}"
}

kwasm_nisshi_bin() {
    printf '%s/bin/nisshi\n' "$(kwasm_tools_dir)"
}

# Exports CARGO_TARGET_DIR, defaulting to the shared per-machine cache.
kwasm_export_target_dir() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kwasm/target}"
    mkdir -p "$CARGO_TARGET_DIR"
}

# Builds every WASM crate once (release, wasm32-wasip2) and exports
# KWASM_PLUGIN_DIR, where the .wasm files are.
kwasm_build_plugins() {
    local args=() crate
    for crate in "${KWASM_WASM_CRATES[@]}"; do
        args+=(-p "$crate")
    done
    kwasm_log "building WASM plugins: ${KWASM_WASM_CRATES[*]}"
    (cd "$KWASM_ROOT" && cargo build --release --target wasm32-wasip2 "${args[@]}")
    export KWASM_PLUGIN_DIR="$CARGO_TARGET_DIR/wasm32-wasip2/release"
    kwasm_log "KWASM_PLUGIN_DIR=$KWASM_PLUGIN_DIR"
}

# Builds the host binary and exports KWASM_BIN.
kwasm_build_host() {
    kwasm_log "building the kwasm host binary"
    (cd "$KWASM_ROOT" && cargo build -p kwasm-host --bin kwasm)
    export KWASM_BIN="$CARGO_TARGET_DIR/debug/kwasm"
    kwasm_log "KWASM_BIN=$KWASM_BIN"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
kwasm_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints a port on 127.0.0.1 that nothing listens on right now.
kwasm_pick_port() {
    local port _
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! kwasm_port_open "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    kwasm_die "no free port found on 127.0.0.1 after 100 tries"
}

# Starts one nisshi broker with in-memory storage on a free 127.0.0.1 port and
# waits until it accepts connections. Sets (globals) KWASM_BROKER_PID and
# KWASM_BROKER_LOG, exports KWASM_TEST_BROKERS. $1: directory for the log.
# The caller must arrange kwasm_stop_broker on exit (a trap).
kwasm_start_broker() {
    local log_dir="$1" nisshi port attempt _
    nisshi="$(kwasm_nisshi_bin)"
    [[ -x "$nisshi" ]] || kwasm_die "nisshi not found at $nisshi: run scripts/setup"
    KWASM_BROKER_LOG="$log_dir/nisshi.log"
    # A port can be taken between picking and binding: retry with another.
    for attempt in 1 2 3; do
        port="$(kwasm_pick_port)"
        kwasm_log "starting nisshi on 127.0.0.1:$port (log: $KWASM_BROKER_LOG)"
        # --group-initial-rebalance-delay: the first join of an empty group waits
        # this long for more members (Kafka's group.initial.rebalance.delay.ms,
        # 3 s by default); 100 ms cut the smoke tests from 3.4 s to 1.3 s.
        # KWASM_NISSHI_ARGS: extra flags, word-split (see `nisshi broker --help`).
        # shellcheck disable=SC2086
        "$nisshi" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "memory://nisshi/" \
            --group-initial-rebalance-delay 100ms \
            ${KWASM_NISSHI_ARGS:-} \
            >"$KWASM_BROKER_LOG" 2>&1 &
        KWASM_BROKER_PID=$!
        for _ in $(seq 1 300); do
            if kwasm_port_open "$port"; then
                # Accepting is not quite serving: give it a moment to finish starting.
                sleep 0.5
                if kill -0 "$KWASM_BROKER_PID" 2>/dev/null; then
                    export KWASM_TEST_BROKERS="127.0.0.1:$port"
                    kwasm_log "nisshi (pid $KWASM_BROKER_PID) is up: KWASM_TEST_BROKERS=$KWASM_TEST_BROKERS"
                    return 0
                fi
            fi
            kill -0 "$KWASM_BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kwasm_log "nisshi did not come up on port $port (attempt $attempt); log tail:"
        tail -n 20 "$KWASM_BROKER_LOG" >&2 || true
        kwasm_stop_broker
    done
    kwasm_die "could not start nisshi"
}

# Stops the broker started by kwasm_start_broker, if any: SIGTERM, then SIGKILL.
kwasm_stop_broker() {
    local pid="${KWASM_BROKER_PID:-}" _
    [[ -n "$pid" ]] || return 0
    KWASM_BROKER_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
