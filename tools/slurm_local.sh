#!/usr/bin/env bash
# A private one-node SLURM cluster on this machine, for testing the `profiles/slurm*` profiles.
#
#   tools/slurm_local.sh start [STATE_DIR]   install slurm + munge if missing (Debian, root), write a
#                                            one-node slurm.conf, start munged/slurmctld/slurmd, wait
#                                            until the node is idle, print `export SLURM_CONF=...`
#   tools/slurm_local.sh stop  [STATE_DIR]   kill exactly the daemons started from STATE_DIR, clean up
#   tools/slurm_local.sh status [STATE_DIR]  sinfo/squeue of the private cluster
#   tools/slurm_local.sh env   [STATE_DIR]   print `export SLURM_CONF=...` (eval it to use sbatch & co.)
#
# STATE_DIR defaults to $SLURM_LOCAL_DIR or ${TMPDIR:-/tmp}/actionparty-slurm. Everything lives there:
# slurm.conf, the munge key/socket, spool and state dirs, daemon logs, pid files. Nothing in /etc is
# changed and the system's own slurm/munge services (if any) are not touched: the daemons use their
# own ports (free ones from 16817 up) and their own munge socket. Client commands find the cluster
# through SLURM_CONF; jobs inherit it (sbatch --export=ALL). The one thing outside STATE_DIR is the
# link /run/slurm/conf/slurm.conf -> STATE_DIR/slurm.conf while the cluster runs (see link_conf).
#
# No cgroups, no accounting database: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
# AccountingStorageType=accounting_storage/none (so `sacct` does not work; MinJobAge is long enough
# for `squeue --states=all` to report finished jobs), JobCompType=jobcomp/filetxt (one line per
# finished job in STATE_DIR/jobcomp.txt), SelectType=select/cons_tres.
#
# Exit codes: 0 ok; 77 cannot run here (the one-line reason, with the real error, is the last line of
# stderr); 1 usage or other errors.
set -uo pipefail

SKIP=77
CMD="${1:-}"
STATE="${2:-${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/actionparty-slurm}}"
CONF="$STATE/slurm.conf"
WAIT_S="${SLURM_LOCAL_WAIT_S:-60}"
DAEMONS=(munged slurmctld slurmd)

log() { echo "slurm_local: $*" >&2; }
skip() { echo "slurm_local: SKIP: $*" >&2; exit "$SKIP"; }
die() { echo "slurm_local: ERROR: $*" >&2; exit 1; }

# The line of a daemon log that says why it did not come up.
first_error() {
    local f="$1"
    [ -s "$f" ] || { echo "(no log written: $f)"; return; }
    local line
    # A fatal line if any, else the last error line (startup prints harmless errors first), else the end.
    line=$(grep -m1 -i 'fatal' "$f" || true)
    [ -n "$line" ] || line=$(grep -i 'error' "$f" | tail -n 1 || true)
    [ -n "$line" ] || line=$(tail -n 1 "$f")
    echo "$line" | tr -s '[:space:]' ' ' | cut -c1-400
}

# Is the process with this pid file alive and one of ours (its command line names our STATE dir)?
ours_alive() {
    local pidfile="$STATE/$1.pid" pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$STATE"
}

# Processes of our cluster's jobs: their environment names our cluster (SLURM_CLUSTER_NAME, which
# slurm sets in every job and step), or they are slurmstepd started by our slurmd (SLURM_CONF).
job_pids() {
    local cluster pid comm
    cluster=$(sed -n 's/^ClusterName=//p' "$CONF" 2>/dev/null)
    [ -n "$cluster" ] || return 0
    for pid in $(grep -lsxzF -e "SLURM_CLUSTER_NAME=$cluster" -e "SLURM_CONF=$CONF" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
        [ "$pid" != "$$" ] && [ "$pid" != "$PPID" ] || continue
        comm=$(cat "/proc/$pid/comm" 2>/dev/null)
        if grep -qsxzF -e "SLURM_CLUSTER_NAME=$cluster" "/proc/$pid/environ" || [ "$comm" = slurmstepd ]; then
            echo "$pid"
        fi
    done
}

stop_daemons() {
    local name pid
    # Cancel running jobs while the controller is up (slurmd then kills their process trees).
    if ours_alive slurmctld && ours_alive slurmd; then
        if [ -n "$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null)" ]; then
            # shellcheck disable=SC2046  # one argument per job id
            SLURM_CONF="$CONF" scancel --quiet $(SLURM_CONF="$CONF" squeue -h -o %A) 2>/dev/null
            for _ in $(seq 50); do
                [ -z "$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null)" ] && break
                sleep 0.2
            done
            log "cancelled the cluster's jobs"
        fi
    fi
    # Reverse order: slurmd, slurmctld, munged. Only pids we recorded and that still name STATE.
    for name in slurmd slurmctld munged; do
        if ours_alive "$name"; then
            pid=$(cat "$STATE/$name.pid")
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                kill -KILL "$pid" 2>/dev/null
            fi
            log "stopped $name (pid $pid)"
        fi
        rm -f "$STATE/$name.pid"
    done
    unlink_conf
    # Whatever our jobs left behind (e.g. slurmd was killed before its jobs ended).
    for pid in $(job_pids); do
        kill -KILL "$pid" 2>/dev/null && log "killed leftover job process $pid ($(cat "/proc/$pid/comm" 2>/dev/null))"
    done
}

need_install() {
    local b
    for b in slurmctld slurmd sbatch squeue sinfo scontrol munged; do
        command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || return 0
    done
    return 1
}

install_packages() {
    local pkgs=(slurmctld slurmd slurm-client munge) out
    command -v apt-get >/dev/null 2>&1 || skip "slurm/munge not installed and apt-get not available (install Debian's slurm-wlm and munge, or a SLURM of your distribution)"
    [ "$(id -u)" = 0 ] || skip "slurm/munge not installed and not root: cannot apt-get install ${pkgs[*]}"
    log "installing ${pkgs[*]} with apt-get"
    out="$STATE/apt.log"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${pkgs[@]}" >"$out" 2>&1; then
        apt-get update >>"$out" 2>&1
        apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$out" 2>&1 \
            || skip "apt-get install ${pkgs[*]} failed: $(grep -m1 -E '^E:' "$out" || tail -n1 "$out")"
    fi
}

# Client commands find the cluster through SLURM_CONF, but snakemake-executor-plugin-slurm-jobstep
# strips every SLURM_* variable (SLURM_CONF included) before it calls `srun` inside a job, so srun
# falls back to the default paths: /etc/slurm/slurm.conf, then /run/slurm/conf/slurm.conf (where a
# configless slurmd keeps its copy). We link our conf there while the cluster runs (only if neither
# exists; `stop` removes the link if it still points at our conf).
RUN_LINK=/run/slurm/conf/slurm.conf
link_conf() {
    if [ -e /etc/slurm/slurm.conf ]; then
        stop_daemons
        skip "/etc/slurm/slurm.conf exists (a system cluster): srun inside jobs would use it, not ours (the slurm-jobstep plugin drops SLURM_CONF)"
    fi
    if [ -L "$RUN_LINK" ] && [ "$(readlink "$RUN_LINK")" = "$CONF" ]; then
        return 0
    fi
    if [ -L "$RUN_LINK" ]; then
        # A link left by a cluster of this script that is gone (killed without `stop`): replace it.
        local target other
        target=$(readlink "$RUN_LINK")
        other=$(dirname "$target")
        if [ ! -e "$target" ] || { grep -qs 'Written by tools/slurm_local.sh' "$target" \
            && ! kill -0 "$(cat "$other/slurmctld.pid" 2>/dev/null || echo none)" 2>/dev/null; }; then
            rm -f "$RUN_LINK"
        fi
    fi
    if [ -e "$RUN_LINK" ] || [ -L "$RUN_LINK" ]; then
        stop_daemons
        skip "$RUN_LINK exists (a configless slurmd?): srun inside jobs would use it, not ours"
    fi
    mkdir -p "$(dirname "$RUN_LINK")" 2>/dev/null && ln -s "$CONF" "$RUN_LINK" 2>/dev/null \
        || { stop_daemons; skip "cannot link $RUN_LINK -> $CONF (needed by srun inside jobs; not root?)"; }
}
unlink_conf() {
    if [ -L "$RUN_LINK" ] && [ "$(readlink "$RUN_LINK")" = "$CONF" ]; then
        rm -f "$RUN_LINK"
        rmdir "$(dirname "$RUN_LINK")" "$(dirname "$(dirname "$RUN_LINK")")" 2>/dev/null || true
    fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port_pair() {
    local p="${SLURM_LOCAL_PORT:-16817}"
    while [ "$p" -lt 20000 ]; do
        if port_free "$p" && port_free "$((p + 1))"; then
            echo "$p"
            return
        fi
        p=$((p + 2))
    done
    return 1
}

write_conf() {
    local host node user port
    host=$(hostname -s)
    user=$(id -un)
    # The node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory), minus the UpTime line.
    node=$(slurmd -C 2>"$STATE/slurmd-C.err" | head -n 1) || true
    case "$node" in
        NodeName=*) ;;
        *) skip "slurmd -C cannot describe this node: $(head -c 300 "$STATE/slurmd-C.err")" ;;
    esac
    port=$(free_port_pair) || skip "no free TCP port pair for slurmctld/slurmd in 16817..20000"
    cat >"$CONF" <<EOF
# Written by tools/slurm_local.sh: a private one-node cluster under $STATE.
ClusterName=aplocal$port
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.sock
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups, no accounting daemon.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
MpiDefault=none
SwitchType=switch/none
LaunchType=launch/slurm
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Finished jobs stay visible to squeue for 10 min (the snakemake slurm plugin then uses squeue).
MinJobAge=600
ReturnToService=2
MailProg=/bin/true
# Jobs that ask for no memory get 1 GB per CPU, not the whole node.
DefMemPerCPU=1024
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
PlugStackConfig=$STATE/plugstack.conf
$node State=UNKNOWN NodeAddr=127.0.0.1
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    : >"$STATE/plugstack.conf"
}

start_bg() {  # start_bg NAME LOGFILE CMD...: foreground daemon in its own session, pid recorded
    local name="$1" logf="$2"
    shift 2
    setsid "$@" </dev/null >>"$logf" 2>&1 &
    echo $! >"$STATE/$name.pid"
}

wait_for() {  # wait_for SECONDS CMD...: poll until CMD succeeds
    local deadline=$((SECONDS + $1))
    shift
    while [ $SECONDS -lt $deadline ]; do
        "$@" && return 0
        sleep 0.3
    done
    return 1
}

node_idle() { [ "$(sinfo -h -N -o %T 2>/dev/null | head -n1)" = idle ]; }

daemon_died() {  # daemon_died NAME LOGFILE: skip with its real error
    ours_alive "$1" && return 0
    local err
    err=$(first_error "$2")
    stop_daemons
    skip "$1 did not start: $err (log: $2)"
}

start() {
    local t0=$SECONDS
    mkdir -p "$STATE"
    STATE=$(cd "$STATE" && pwd)
    CONF="$STATE/slurm.conf"
    for name in "${DAEMONS[@]}"; do
        ours_alive "$name" && die "$name from $STATE is already running: '$0 stop $STATE' first"
    done
    export PATH="$PATH:/usr/sbin:/sbin"
    if need_install; then install_packages; fi
    rm -rf "$STATE/ctld" "$STATE/spool" "$STATE/run" "$STATE/munge" "$STATE"/*.log "$STATE/jobcomp.txt"
    mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/run" "$STATE/munge"
    chmod 700 "$STATE/munge"
    export SLURM_CONF="$CONF"
    write_conf
    link_conf

    # munge: a private key and socket.
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge/munge.key"
    start_bg munged "$STATE/munged.log" munged --foreground --force \
        --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.sock" \
        --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
        --log-file="$STATE/munged.log"
    wait_for 10 test -S "$STATE/munge/munge.sock" || { daemon_died munged "$STATE/munged.log"; stop_daemons; skip "munged did not create its socket: $(first_error "$STATE/munged.log")"; }
    if command -v munge >/dev/null && command -v unmunge >/dev/null; then
        munge -n -S "$STATE/munge/munge.sock" 2>"$STATE/munge-test.err" | unmunge -S "$STATE/munge/munge.sock" >/dev/null 2>>"$STATE/munge-test.err" \
            || { stop_daemons; skip "munge credential round trip failed: $(head -c 300 "$STATE/munge-test.err")"; }
    fi

    start_bg slurmctld "$STATE/slurmctld.stdout" slurmctld -D -f "$CONF"
    wait_for 20 scontrol ping >/dev/null 2>&1 || { daemon_died slurmctld "$STATE/slurmctld.log"; stop_daemons; skip "slurmctld does not answer scontrol ping: $(first_error "$STATE/slurmctld.log")"; }
    daemon_died slurmctld "$STATE/slurmctld.log"

    start_bg slurmd "$STATE/slurmd.stdout" slurmd -D -f "$CONF"
    if ! wait_for "$WAIT_S" node_idle; then
        daemon_died slurmd "$STATE/slurmd.log"
        daemon_died slurmctld "$STATE/slurmctld.log"
        local state
        state=$(sinfo -h -N -o '%T %E' 2>&1 | head -n1)
        stop_daemons
        skip "node not idle after ${WAIT_S}s (sinfo: '$state'; slurmd: $(first_error "$STATE/slurmd.log"))"
    fi
    log "cluster up in $((SECONDS - t0))s: $(sinfo -h -o '%P %D %c %m %T' | head -n1) (state dir $STATE)"
    echo "export SLURM_CONF=$CONF"
}

case "$CMD" in
    start) start ;;
    stop)
        [ -d "$STATE" ] || { log "nothing to stop: no $STATE"; exit 0; }
        STATE=$(cd "$STATE" && pwd)
        CONF="$STATE/slurm.conf"
        stop_daemons
        rm -rf "$STATE/ctld" "$STATE/spool" "$STATE/run" "$STATE/munge"
        log "stopped; logs kept in $STATE"
        ;;
    status)
        [ -f "$CONF" ] || die "no cluster config $CONF"
        SLURM_CONF="$(cd "$STATE" && pwd)/slurm.conf"
        export SLURM_CONF
        sinfo && squeue --states=all
        ;;
    env)
        [ -f "$CONF" ] || die "no cluster config $CONF ('$0 start $STATE' first)"
        echo "export SLURM_CONF=$(cd "$STATE" && pwd)/slurm.conf"
        ;;
    *)
        echo "usage: $0 {start|stop|status|env} [STATE_DIR]" >&2
        exit 1
        ;;
esac
