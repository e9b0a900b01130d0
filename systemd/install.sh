#!/usr/bin/env bash
# Install (or remove) edge-agent as a systemd service. Safe to run again: it converges on the
# same result and changes nothing that is already right.
#
#   sudo systemd/install.sh                   create user, dirs, config, unit; enable and start
#   sudo systemd/install.sh --no-start        same, enabled but not started
#   sudo systemd/install.sh --exec /opt/venv/bin/edge-agent --config my-config.yaml
#   sudo systemd/install.sh --uninstall       stop, disable, remove the unit (keep state+config)
#   sudo systemd/install.sh --uninstall --purge   ... and remove state, config and the user
#   systemd/install.sh --root /tmp/stage      lay the files out under /tmp/stage only; run no
#                                             useradd/usermod/chown/systemctl, print them
#
# Device groups: the unit asks for SupplementaryGroups=video render jtop jetson_stats. systemd
# fails every start (status=216/GROUP) when one of them does not exist, so the installed unit
# keeps only the groups that exist here, and the user is added to those. Nano/TX2 have no
# "render". jtop's socket group is "jtop" from jetson-stats 4.1.0 and "jetson_stats" in 3.x to
# 4.0.0; it exists once jetson-stats is installed: rerun this script after installing or
# upgrading it. With --root, the groups are read from DIR/etc/group when that file exists, else
# from this machine.
set -euo pipefail
umask 022

NAME=edge-agent
UNIT_NAME=edge-agent.service
# jtop: jetson-stats >= 4.1.0; jetson_stats: jetson-stats 3.x to 4.0.0 (same socket, renamed).
WANTED_GROUPS="video render jtop jetson_stats"
DEFAULT_EXEC=/usr/local/bin/edge-agent

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
UNIT_SRC="$SCRIPT_DIR/$UNIT_NAME"
CONFIG_SRC="$REPO_DIR/config.yaml"

CONFIG_GIVEN=0
ROOT=""
STAGED=0
EXEC_PATH=""
START=1
UNINSTALL=0
PURGE=0

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root|--prefix)
            [ $# -ge 2 ] || die "$1 needs a directory"
            ROOT="$2"; STAGED=1; shift 2 ;;
        --root=*|--prefix=*)
            ROOT="${1#*=}"; STAGED=1; shift ;;
        --exec)
            [ $# -ge 2 ] || die "--exec needs the path of the edge-agent executable"
            EXEC_PATH="$2"; shift 2 ;;
        --exec=*)
            EXEC_PATH="${1#*=}"; shift ;;
        --config)
            [ $# -ge 2 ] || die "--config needs a file (copied to /etc/edge-agent/config.yaml if absent there)"
            CONFIG_SRC="$2"; CONFIG_GIVEN=1; shift 2 ;;
        --config=*)
            CONFIG_SRC="${1#*=}"; CONFIG_GIVEN=1; shift ;;
        --no-start) START=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

[ "$PURGE" -eq 0 ] || [ "$UNINSTALL" -eq 1 ] || die "--purge only goes with --uninstall"
if [ "$STAGED" -eq 1 ]; then
    [ -n "$ROOT" ] || die "--root needs a non-empty directory"
    mkdir -p "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"
    [ "$ROOT" != "/" ] || die "--root / is the real system: run without --root instead"
else
    [ "$(id -u)" -eq 0 ] || die "must run as root (sudo $0 $*), or pass --root DIR to stage files"
    command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this machine does not run systemd"
fi

UNIT_DST="$ROOT/etc/systemd/system/$UNIT_NAME"
CONF_DIR="$ROOT/etc/$NAME"
STATE_DIR="$ROOT/var/lib/$NAME"
# Paths as the running system sees them (the unit and useradd want these, not staged ones).
REAL_STATE_DIR="/var/lib/$NAME"

# Words as a shell would need them typed: plain ones bare, others in single quotes.
quote() {
    local arg out=""
    for arg in "$@"; do
        case "$arg" in
            ""|*[!A-Za-z0-9_./:=,@%+-]*) arg="'${arg//\'/\'\\\'\'}'" ;;
        esac
        out="$out $arg"
    done
    echo "${out# }"
}

# Run a command that changes the system; with --root only say what would run.
run() {
    if [ "$STAGED" -eq 1 ]; then
        echo "would run: $(quote "$@")"
    else
        echo "+ $(quote "$@")"
        "$@"
    fi
}

group_exists() {
    if [ "$STAGED" -eq 1 ] && [ -f "$ROOT/etc/group" ]; then
        grep -q "^$1:" "$ROOT/etc/group"
    else
        getent group "$1" >/dev/null 2>&1
    fi
}

user_exists() {
    if [ "$STAGED" -eq 1 ] && [ -f "$ROOT/etc/passwd" ]; then
        grep -q "^$1:" "$ROOT/etc/passwd"
    else
        id -u "$1" >/dev/null 2>&1
    fi
}

present_groups() {
    local g out=""
    for g in $WANTED_GROUPS; do
        if group_exists "$g"; then out="$out $g"; fi
    done
    echo "${out# }"
}

resolve_exec() {
    local path="$EXEC_PATH"
    if [ -z "$path" ]; then
        path="$(command -v "$NAME" 2>/dev/null || true)"
        if [ -z "$path" ]; then
            if [ "$STAGED" -eq 1 ]; then
                echo "note: $NAME not on PATH; the unit keeps ExecStart=$DEFAULT_EXEC" >&2
                echo "$DEFAULT_EXEC"
                return
            fi
            die "$NAME not found on PATH (sudo may reset PATH): install the package, or pass --exec /path/to/$NAME"
        fi
    fi
    case "$path" in
        /*) ;;
        *) die "--exec '$path' must be an absolute path" ;;
    esac
    case "$path" in
        *[[:space:]]*) die "--exec '$path' contains whitespace; systemd would split it" ;;
    esac
    if [ ! -x "$path" ]; then
        [ "$STAGED" -eq 1 ] || die "--exec '$path' is not an executable file"
        echo "note: $path is not executable here; the unit uses it anyway (staged install)" >&2
    fi
    echo "$path"
}

# The repo's unit with ExecStart= pointing at $1 and SupplementaryGroups= cut to $2.
render_unit() {
    local exec_path="$1" groups="$2" line rest first
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            ExecStart=*)
                rest="${line#ExecStart=}"
                first="${rest%% *}"
                echo "ExecStart=$exec_path${rest#"$first"}" ;;
            SupplementaryGroups=*)
                if [ -n "$groups" ]; then
                    echo "SupplementaryGroups=$groups"
                else
                    echo "# SupplementaryGroups= omitted by install.sh: none of $WANTED_GROUPS exist here."
                fi ;;
            *) echo "$line" ;;
        esac
    done < "$UNIT_SRC"
}

unit_active() {
    [ "$STAGED" -eq 0 ] && systemctl is-active --quiet "$UNIT_NAME"
}

do_install() {
    [ -f "$UNIT_SRC" ] || die "unit template $UNIT_SRC is missing"
    [ "$CONFIG_GIVEN" -eq 0 ] || [ -f "$CONFIG_SRC" ] || die "--config '$CONFIG_SRC' is not a file"
    local exec_path groups changed=0 tmp

    exec_path="$(resolve_exec)"
    groups="$(present_groups)"
    echo "executable: $exec_path"
    echo "device groups present: ${groups:-none} (wanted: $WANTED_GROUPS)"

    # 1. the service user: system account, no login, home = state dir, own primary group.
    if user_exists "$NAME"; then
        echo "user $NAME exists"
    else
        local shell=/usr/sbin/nologin
        [ -x "$shell" ] || shell=/bin/false
        run useradd --system --user-group --home-dir "$REAL_STATE_DIR" --no-create-home \
            --shell "$shell" --comment "edge-agent inference daemon" "$NAME"
    fi
    if [ -n "$groups" ]; then
        run usermod --append --groups "${groups// /,}" "$NAME"
    fi

    # 2. state and config directories (systemd would create them too; doing it here lets the
    #    config be copied in before the first start and gives them the right owner at once).
    install -d -m 0750 "$STATE_DIR"
    run chown "$NAME:$NAME" "$REAL_STATE_DIR"
    install -d -m 0755 "$CONF_DIR"
    if [ -e "$CONF_DIR/config.yaml" ]; then
        echo "config $CONF_DIR/config.yaml exists; left as it is"
    else
        if [ -f "$CONFIG_SRC" ]; then
            # Relative paths in a config are relative to its directory: the repository's
            # default source (the sample photos) must stay reachable from /etc/edge-agent.
            tmp="$(mktemp)"
            sed "s|\"file://models/samples\"|\"file://$REPO_DIR/models/samples\"|" \
                "$CONFIG_SRC" > "$tmp"
            install -m 0640 "$tmp" "$CONF_DIR/config.yaml"
            rm -f "$tmp"
            echo "config: copied $CONFIG_SRC to $CONF_DIR/config.yaml; set source.uri there" \
                 "(csi://0, v4l2:///dev/video0, rtsp://...) for a camera"
        else
            tmp="$(mktemp)"
            printf '%s\n' "# edge-agent configuration. Every key is optional; see config.yaml in the" \
                "# source tree for all keys and their defaults." "logging: {level: INFO}" > "$tmp"
            install -m 0640 "$tmp" "$CONF_DIR/config.yaml"
            rm -f "$tmp"
            echo "config: $CONFIG_SRC not found; wrote a minimal $CONF_DIR/config.yaml"
        fi
        run chgrp "$NAME" "/etc/$NAME/config.yaml"
    fi

    # 3. the unit, replaced only when its content changes.
    install -d -m 0755 "$(dirname "$UNIT_DST")"
    tmp="$(mktemp)"
    render_unit "$exec_path" "$groups" > "$tmp"
    if [ -f "$UNIT_DST" ] && cmp -s "$tmp" "$UNIT_DST"; then
        echo "unit $UNIT_DST unchanged"
        rm -f "$tmp"
    else
        install -m 0644 "$tmp" "$UNIT_DST"
        rm -f "$tmp"
        changed=1
        echo "unit: installed $UNIT_DST"
    fi

    if [ "$STAGED" -eq 0 ] && command -v systemd-analyze >/dev/null 2>&1; then
        systemd-analyze verify "$UNIT_DST" || echo "warning: systemd-analyze verify reported problems (above)" >&2
    fi

    # 4. systemd: reload, enable, start (or restart a running agent onto a changed unit).
    run systemctl daemon-reload
    if [ "$START" -eq 0 ]; then
        run systemctl enable "$UNIT_NAME"
    elif [ "$changed" -eq 1 ] && unit_active; then
        run systemctl enable "$UNIT_NAME"
        run systemctl restart "$UNIT_NAME"
    else
        run systemctl enable --now "$UNIT_NAME"
    fi
    echo "done. Logs: journalctl -u $NAME -f    State: systemctl status $NAME"
}

do_uninstall() {
    run systemctl disable --now "$UNIT_NAME"
    if [ -e "$UNIT_DST" ]; then
        rm -f "$UNIT_DST"
        echo "removed $UNIT_DST"
    else
        echo "unit $UNIT_DST not installed"
    fi
    run systemctl daemon-reload
    run systemctl reset-failed "$UNIT_NAME"
    if [ "$PURGE" -eq 1 ]; then
        rm -rf "$STATE_DIR" "$CONF_DIR"
        echo "purged $STATE_DIR and $CONF_DIR"
        if user_exists "$NAME"; then
            run userdel "$NAME"
        fi
    else
        echo "kept $STATE_DIR and $CONF_DIR (add --purge to remove them and the user)"
    fi
}

if [ "$UNINSTALL" -eq 1 ]; then
    if [ "$STAGED" -eq 0 ]; then
        # A unit that is already gone makes disable/reset-failed fail; that is the goal state.
        run() { echo "+ $(quote "$@")"; "$@" || true; }
    fi
    do_uninstall
else
    do_install
fi
