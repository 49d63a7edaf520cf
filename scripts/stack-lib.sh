# shellcheck shell=bash
# Shared by scripts/stack-up and scripts/stack-down (sourced, not run). Needs STACK_DIR.
#
# A component NAME that stack-up started has pids/NAME.pid (its PID) and pids/NAME.cmd (its exact
# command line, one argument per line). Nothing is ever signalled unless /proc/PID/cmdline still
# equals NAME.cmd: a PID reused by an unrelated process after a reboot or a crash is left alone.

# The components, in start order (stack-down stops them in reverse).
# shellcheck disable=SC2034 # used by the scripts that source this file
STACK_COMPONENTS=(otel-collector alertmanager task-mcp prometheus)

pid_of() {
    local file="${STACK_DIR}/pids/$1.pid"
    [[ -s "$file" ]] || return 1
    local pid
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    echo "$pid"
}

# alive NAME: the recorded PID exists and is not a zombie (an exited child nobody reaped yet).
alive() {
    local pid state
    pid="$(pid_of "$1")" || return 1
    [[ -r "/proc/${pid}/stat" ]] || return 1
    # The state follows the command name, which is in parentheses and may contain spaces.
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/${pid}/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

# running NAME: alive, and still running the command stack-up recorded for it.
running() {
    alive "$1" || return 1
    local pid cmd="${STACK_DIR}/pids/$1.cmd"
    pid="$(pid_of "$1")" || return 1
    [[ -f "$cmd" ]] || return 1
    [[ "$(tr '\0' '\n' <"/proc/${pid}/cmdline" 2>/dev/null)" == "$(cat "$cmd")" ]]
}
