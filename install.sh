#!/bin/sh
# skiff installer: sets up and starts a single-node Kubernetes cluster on Debian 12, as root.
#
#   From a checkout:   sh install.sh
#   Piped:             curl -sfL <raw url of install.sh> | INSTALL_SKIFF_REPO=<git url> sh -
#
# It installs what is missing (containerd, runc, CNI plugins, protoc, a C toolchain, and Rust if
# there is no cargo >= 1.85), builds skiff from the source, installs the binary, drops a busybox
# image into the node's image dir (so examples/web.yaml runs with no registry), and starts
# `skiff server` in the background with its log in a file and its pid in a pid file. Run it again
# to rebuild and restart. There is no service manager: use your own (systemd, openrc, runit) to
# start skiff at boot if you want that.
#
# Settings (environment):
#   SKIFF_DATA_DIR             data dir                                   (/var/lib/skiff)
#   SKIFF_WRITE_KUBECONFIG     admin kubeconfig                           (/etc/skiff/skiff.yaml)
#   INSTALL_SKIFF_EXEC         extra flags for `skiff server`, e.g. "--node-ip 192.168.1.5"
#   INSTALL_SKIFF_BIN_DIR      where the binary goes                      (/usr/local/bin)
#   INSTALL_SKIFF_LOG_FILE     server log                                 (/var/log/skiff.log)
#   INSTALL_SKIFF_PID_FILE     server pid                                 (/run/skiff.pid)
#   INSTALL_SKIFF_PROFILE      cargo profile: release or dev              (release)
#   INSTALL_SKIFF_REPO         git URL to build from when not run from a checkout
#   INSTALL_SKIFF_SRC_DIR      where that repository is cloned            (/usr/local/src/skiff)
#   INSTALL_SKIFF_SKIP_DEPS    true: install no packages
#   INSTALL_SKIFF_SKIP_START   true: install only, do not (re)start the server
#   INSTALL_SKIFF_WAIT         seconds to wait for the API to answer      (120)
#
# POSIX sh on purpose (it must run under `| sh`, which is dash on Debian).
set -eu
# pipefail where the shell has it (bash, newer dash); the script does not rely on it.
# shellcheck disable=SC3040
if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi

DATA_DIR=${SKIFF_DATA_DIR:-/var/lib/skiff}
KUBECONFIG_OUT=${SKIFF_WRITE_KUBECONFIG:-/etc/skiff/skiff.yaml}
BIN_DIR=${INSTALL_SKIFF_BIN_DIR:-/usr/local/bin}
LOG_FILE=${INSTALL_SKIFF_LOG_FILE:-/var/log/skiff.log}
PID_FILE=${INSTALL_SKIFF_PID_FILE:-/run/skiff.pid}
PROFILE=${INSTALL_SKIFF_PROFILE:-release}
SRC_DIR=${INSTALL_SKIFF_SRC_DIR:-/usr/local/src/skiff}
WAIT=${INSTALL_SKIFF_WAIT:-120}
EXEC=${INSTALL_SKIFF_EXEC:-}
IMAGE=docker.io/library/busybox:1.36
RUST_MIN=1.85

info() { printf '[skiff] %s\n' "$*"; }
fatal() {
    printf '[skiff] error: %s\n' "$*" >&2
    exit 1
}

is_true() { [ "${1:-}" = true ] || [ "${1:-}" = 1 ] || [ "${1:-}" = yes ]; }

# --- where the source is -----------------------------------------------------------------------
is_checkout() { [ -f "$1/Cargo.toml" ] && grep -q '^name = "skiff"' "$1/Cargo.toml"; }

find_source() {
    case $0 in
        */install.sh | install.sh) dir=$(cd "$(dirname "$0")" && pwd) ;;
        *) dir= ;;
    esac
    if [ -n "$dir" ] && is_checkout "$dir"; then
        SRC=$dir
    elif is_checkout "$PWD"; then
        SRC=$PWD
    elif [ -n "${INSTALL_SKIFF_REPO:-}" ]; then
        if [ -d "$SRC_DIR/.git" ]; then
            info "updating $SRC_DIR"
            git -C "$SRC_DIR" pull -q --ff-only
        else
            info "cloning $INSTALL_SKIFF_REPO into $SRC_DIR"
            mkdir -p "$(dirname "$SRC_DIR")"
            git clone -q "$INSTALL_SKIFF_REPO" "$SRC_DIR"
        fi
        SRC=$SRC_DIR
    else
        fatal "not run from a skiff checkout: set INSTALL_SKIFF_REPO to the git URL to build from"
    fi
    info "source: $SRC"
}

# --- packages ----------------------------------------------------------------------------------
PACKAGES="containerd runc containernetworking-plugins protobuf-compiler libprotobuf-dev build-essential pkg-config
git ca-certificates curl iproute2 nftables conntrack busybox-static python3"

install_packages() {
    is_true "${INSTALL_SKIFF_SKIP_DEPS:-}" && return 0
    command -v apt-get >/dev/null || fatal "apt-get not found: install by hand: $PACKAGES"
    missing=
    for p in $PACKAGES; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
            missing="$missing $p"
        fi
    done
    [ -n "$missing" ] || return 0
    info "installing:$missing"
    # Keep packages from starting their own daemons (skiff runs its own containerd).
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # a word list on purpose
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
}

# --- Rust --------------------------------------------------------------------------------------
version_ok() { # version_ok HAVE WANT: HAVE >= WANT (major.minor)
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -t. -k1,1n -k2,2n | head -n1)" = "$2" ]
}

ensure_rust() {
    if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"; fi
    if command -v cargo >/dev/null; then
        have=$(cargo --version | cut -d' ' -f2 | cut -d. -f1,2)
        version_ok "$have" "$RUST_MIN" && return 0
        info "cargo $have is older than $RUST_MIN"
    fi
    is_true "${INSTALL_SKIFF_SKIP_DEPS:-}" && fatal "Rust >= $RUST_MIN is needed (rustup.rs)"
    info "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
}

# --- build and install -------------------------------------------------------------------------
build() {
    if [ "$PROFILE" = release ]; then
        info "building skiff (release; 15-20 minutes on 2 cores the first time)"
        (cd "$SRC" && cargo build --release --locked --bin skiff)
        BUILT=$SRC/target/release/skiff
    else
        info "building skiff ($PROFILE profile)"
        (cd "$SRC" && cargo build --profile "$PROFILE" --locked --bin skiff)
        case $PROFILE in dev) BUILT=$SRC/target/debug/skiff ;; *) BUILT=$SRC/target/$PROFILE/skiff ;; esac
    fi
    [ -x "$BUILT" ] || fatal "build produced no $BUILT"
}

install_binary() {
    mkdir -p "$BIN_DIR"
    # Copy then rename: replacing the file of a running binary in place fails ("text file busy").
    cp "$BUILT" "$BIN_DIR/.skiff.new"
    chmod 755 "$BIN_DIR/.skiff.new"
    mv -f "$BIN_DIR/.skiff.new" "$BIN_DIR/skiff"
    info "installed $BIN_DIR/skiff"
}

# A busybox image in <data-dir>/agent/images/, imported at start, so the examples run offline.
preload_image() {
    images=$DATA_DIR/agent/images
    [ -e "$images/busybox-1.36.tar" ] && return 0
    if [ -f "$SRC/tests/images/mkimage.py" ] && [ -x /bin/busybox ] && command -v python3 >/dev/null; then
        mkdir -p "$images"
        python3 "$SRC/tests/images/mkimage.py" --name "$IMAGE" --out "$images/busybox-1.36.tar.part"
        mv -f "$images/busybox-1.36.tar.part" "$images/busybox-1.36.tar"
        info "preloaded $IMAGE into $images"
    fi
}

# --- start -------------------------------------------------------------------------------------
running_pid() { # the pid in the pid file, if that process is a skiff
    [ -f "$PID_FILE" ] || return 1
    pid=$(cat "$PID_FILE")
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    case $exe in */skiff | */skiff" (deleted)") echo "$pid" ;; *) return 1 ;; esac
}

stop_server() {
    pid=$(running_pid) || return 0
    info "stopping skiff (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while [ -d "/proc/$pid" ] && [ $i -lt 60 ]; do
        sleep 0.5
        i=$((i + 1))
    done
    if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$PID_FILE"
}

start_server() {
    mkdir -p "$(dirname "$LOG_FILE")" "$(dirname "$PID_FILE")" "$DATA_DIR"
    info "starting skiff server (log: $LOG_FILE)"
    # shellcheck disable=SC2086 # INSTALL_SKIFF_EXEC is a list of flags
    nohup "$BIN_DIR/skiff" server --data-dir "$DATA_DIR" --write-kubeconfig "$KUBECONFIG_OUT" $EXEC \
        >>"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    pid=$!
    i=0
    while :; do
        if [ ! -d "/proc/$pid" ]; then
            tail -n 40 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            fatal "skiff server exited; the end of its log is above"
        fi
        if [ -s "$KUBECONFIG_OUT" ]; then
            if ! command -v kubectl >/dev/null ||
                kubectl --kubeconfig "$KUBECONFIG_OUT" --request-timeout=5s get nodes >/dev/null 2>&1; then
                break
            fi
        fi
        if [ $i -ge $((WAIT * 2)) ]; then
            tail -n 40 "$LOG_FILE" >&2 || true
            fatal "skiff server (pid $pid) is running but its API did not answer within ${WAIT}s; see $LOG_FILE"
        fi
        sleep 0.5
        i=$((i + 1))
    done
}

main() {
    [ "$(id -u)" -eq 0 ] || fatal "run as root (sudo sh install.sh)"
    find_source
    install_packages
    ensure_rust
    build
    is_true "${INSTALL_SKIFF_SKIP_START:-}" || stop_server
    install_binary
    preload_image
    if is_true "${INSTALL_SKIFF_SKIP_START:-}"; then
        info "installed; start it with: $BIN_DIR/skiff server"
        return 0
    fi
    start_server
    info "skiff is running (pid $(cat "$PID_FILE")); log: $LOG_FILE"
    info "reach it with:"
    echo
    echo "    kubectl --kubeconfig $KUBECONFIG_OUT get nodes"
    echo
    command -v kubectl >/dev/null || info "(kubectl v1.32 is needed; it is not in Debian 12's archive)"
    info "stop it with: kill \$(cat $PID_FILE)"
}

main "$@"
