#!/usr/bin/env bash
# Stop the cluster started by start_cluster.sh: cancel its jobs, then stop exactly the
# slurmd, slurmctld and munged whose PIDs start_cluster.sh recorded (checked by name).
#
#   tests/cluster/stop_cluster.sh [STATE_DIR]       (default: $LH_SLURM_DIR or /tmp/laplace_head_slurm)
set -uo pipefail

PATH="$PATH:/usr/sbin:/sbin"
STATE_DIR="$(realpath -m "${1:-${LH_SLURM_DIR:-/tmp/laplace_head_slurm}}")"
export SLURM_CONF="$STATE_DIR/etc/slurm.conf"

if [[ -f "$SLURM_CONF" ]]; then
    timeout 30 scancel --quiet --user="$(id -un)" 2>/dev/null || true
    sleep 1
fi

stop_daemon() {  # stop_daemon NAME: SIGTERM the recorded PID if it still runs NAME
    local name="$1" pidfile="$STATE_DIR/pids/$1.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if [[ -n "$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
        kill -TERM "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid"
        fi
        echo "stop_cluster.sh: stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

stop_daemon slurmd
stop_daemon slurmctld
stop_daemon munged

# Remove the /etc/slurm/slurm.conf link start_cluster.sh created (only if it still points here).
if [[ -f "$STATE_DIR/created_system_conf_link" ]]; then
    link="$(cat "$STATE_DIR/created_system_conf_link")"
    if [[ -L "$link" && "$(readlink "$link")" == "$SLURM_CONF" ]]; then
        rm -f "$link"
        echo "stop_cluster.sh: removed $link"
    fi
    rm -f "$STATE_DIR/created_system_conf_link"
fi
