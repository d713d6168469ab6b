#!/usr/bin/env bash
# Bring up / tear down a REAL single-host Slurm cluster (Debian 12 packages) for vmim's CI and tests.
#
#   tools/slurm_cluster.sh up [--nodes N]   install if missing, configure, start, wait, smoke test
#   tools/slurm_cluster.sh down [--purge]   stop everything we started (by PID); --purge wipes state,
#                                           our configs and our /etc/hosts lines
#   tools/slurm_cluster.sh status           exit 0 and print sinfo if the cluster is up and usable
#
# Daemons: munged, mariadbd (datadir under the state base), slurmdbd (so `sacct` works: without it
# submitit can hang forever on a job that dies, pitfall 5), slurmctld, and one slurmd per node.
# N=1: one node named after this host. N>=2: nodes n1..nN, each a `slurmd -N nK` on its own port
# (the Debian build has MULTIPLE_SLURMD=Yes).
#
# Env knobs:
#   VMIM_SLURM_BASE     state base (default /var/tmp/vmim-slurm): state/ spool/<node>/ run/ log/ mysql/
#   SLURM_CPUS          CPUs per node (default 2; more than the host has is allowed: oversubscription)
#   VMIM_SLURM_NODES    node count when --nodes is not given (default: keep the current count, else 1)
#   VMIM_SLURM_DB_PORT  MariaDB TCP port on 127.0.0.1 (default 3306)
#   VMIM_SLURM_SMOKE=0  skip the smoke test at the end of `up`
#
# Needs root, Debian 12 (apt), no systemd. Uses only bash, coreutils, util-linux, grep, sed, mawk:
# no `bc`, no `ps` (slim images lack both, pitfall 21). "pitfall N" below refers to the list in
# shared/research/slurm-local-cluster.md, section 8.

set -Eeuo pipefail

readonly BASE=${VMIM_SLURM_BASE:-/var/tmp/vmim-slurm}
readonly CLUSTER=vmim              # fixed: slurmctld refuses a StateSaveLocation made under another name
readonly TAG='# vmim-slurm'        # marks our /etc/hosts lines and config files
readonly ETC=/etc/slurm
readonly SLURM_CONF_FILE=$ETC/slurm.conf
readonly DBD_CONF_FILE=$ETC/slurmdbd.conf  # slurmdbd only reads it next to slurm.conf; -f is ignored (pitfall 9)
readonly CTLD_PORT=6817 SLURMD_PORT=6818 DBD_PORT=6819 NODE_PORT_BASE=17000
readonly DB_PORT=${VMIM_SLURM_DB_PORT:-3306}
readonly CPUS=${SLURM_CPUS:-2}
readonly RUN=$BASE/run LOG=$BASE/log MYSQL_DIR=$BASE/mysql MYSQL_RUN=$BASE/mysql-run
readonly MYSQL_SOCK=$MYSQL_RUN/mysqld.sock MYSQL_PID=$MYSQL_RUN/mysqld.pid
readonly MUNGE_PID=/run/munge/munged.pid MUNGE_MARK=$BASE/run/munged.ours
readonly LOCK_FILE=$BASE.lock      # outside BASE so `down --purge` does not delete a held lock
readonly PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd slurm-wlm-mysql-plugin mariadb-server)
export SLURM_CONF=$SLURM_CONF_FILE # clients must read our config even if the caller's env points elsewhere
export DEBIAN_FRONTEND=noninteractive

HOST=$(uname -n); HOST=${HOST%%.*}  # short hostname: what slurmctld compares with SlurmctldHost
NODES=()                            # node names, filled by set_nodes
NODE_COUNT=0
TIMINGS=()
TMP_POLICY=""                       # a policy-rc.d we created for the duration of apt (pitfall 1)

# ---------------------------------------------------------------------------------------------- utils

log() { echo "slurm_cluster: $*"; }
die() { echo "slurm_cluster: ERROR: $*" >&2; exit 1; }
# die with the tail of a daemon's log: most start failures are only explained there
die_log() { local f=$1; shift; echo "slurm_cluster: ERROR: $*" >&2
  if [[ -s $f ]]; then echo "--- last lines of $f:" >&2; tail -n 15 "$f" >&2; fi; exit 1; }
on_err() { echo "slurm_cluster: ERROR: command failed (line $1, exit $2): $3" >&2; }
trap 'on_err "$LINENO" "$?" "$BASH_COMMAND"' ERR
cleanup() { if [[ -n $TMP_POLICY ]]; then rm -f "$TMP_POLICY"; fi; }
trap cleanup EXIT

# Microseconds since the epoch without forking `date` and without `bc`. EPOCHREALTIME's decimal
# separator follows the locale, so keep only the digits.
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
fmt_s() { printf '%d.%02d s' $(($1 / 1000000)) $(($1 / 10000 % 100)); }
# record NAME START_US: remember how long a phase took, for the timing table printed at the end
record() { TIMINGS+=("$(printf '%-14s %s' "$1" "$(fmt_s $(($(now_us) - $2)))")"); }

# pid_alive PID [COMM]: true if PID runs (and is named COMM). Parses /proc/PID/stat because `ps`
# may be missing. State Z counts as dead: this sandbox's PID 1 reaps orphans only every ~2 s, so
# waiting for /proc/PID to vanish made every stop take seconds longer (pitfall 18).
pid_alive() {
  local pid=$1 want=${2:-} stat comm rest
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
  comm=${stat#*(}; comm=${comm%)*}           # comm may contain spaces, so cut at the parentheses
  rest=${stat##*) }                           # "S ppid pgrp ..."
  [[ ${rest%% *} != Z ]] || return 1
  [[ -z $want || $comm == "$want" ]]
}
# pidfile_running FILE COMM: print the pid recorded in FILE if that process is alive and is COMM
pidfile_running() {
  local pid=""
  [[ -s $1 ]] || return 1
  { read -r pid <"$1"; } 2>/dev/null || return 1
  pid_alive "$pid" "$2" || return 1
  echo "$pid"
}
# wait_dead SECONDS PID...: wait until all PIDs are dead (zombies count as dead); false on timeout
wait_dead() {
  local deadline=$(($(now_us) + $1 * 1000000)) p left; shift
  while :; do
    left=0
    for p in "$@"; do if pid_alive "$p"; then left=1; fi; done
    ((left)) || return 0
    (($(now_us) < deadline)) || return 1
    sleep 0.1
  done
}
# stop_pid PID NAME TIMEOUT: SIGTERM, wait, then SIGKILL
stop_pid() {
  local pid=$1 name=$2 t=$3
  kill -TERM "$pid" 2>/dev/null || return 0
  wait_dead "$t" "$pid" && return 0
  log "$name (pid $pid) ignored SIGTERM for ${t}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait_dead 5 "$pid" || true
}
# port_listening PORT: true if something listens on TCP PORT. Reads /proc/net/tcp{,6} ("0A" is
# LISTEN) because ss/netstat are not in slim images.
port_listening() {
  local hex files=() f
  printf -v hex ':%04X' "$1"
  for f in /proc/net/tcp /proc/net/tcp6; do [[ -r $f ]] && files+=("$f"); done
  awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' "${files[@]}"
}
# need_port PORT WHAT: fail clearly when a port we are about to bind is taken by someone else
need_port() {
  if port_listening "$1"; then
    die "TCP port $1 (needed by $2) is already in use by another process. Stop it, or (for MariaDB) set VMIM_SLURM_DB_PORT."
  fi
}
# poll SECONDS CMD...: run CMD every 0.2 s until it succeeds; false on timeout
poll() {
  local deadline=$(($(now_us) + $1 * 1000000)); shift
  until "$@" >/dev/null 2>&1; do
    (($(now_us) < deadline)) || return 1
    sleep 0.2
  done
}
# take the lock so two concurrent `up`/`down` (e.g. two pytest workers) do not race. Every daemon
# is started with 9>&- : a daemon inheriting fd 9 would hold the lock forever.
lock() {
  exec 9>"$LOCK_FILE"
  flock -w 600 9 || die "another slurm_cluster.sh holds $LOCK_FILE for more than 10 min"
}

have_slurm_clients() { command -v scontrol >/dev/null 2>&1; }
ctld_up() { [[ $(timeout 10 scontrol ping 2>/dev/null) == *"is UP"* ]]; }

# set_nodes N: node names. One node is named after the host (slurmd finds itself by hostname, the
# host resolves to 127.0.0.1); several nodes are n1..nN, all on 127.0.0.1 with distinct ports.
set_nodes() {
  local i
  NODE_COUNT=$1; NODES=()
  if ((NODE_COUNT == 1)); then NODES=("$HOST"); else
    for ((i = 1; i <= NODE_COUNT; i++)); do NODES+=("n$i"); done
  fi
}
# node count of the config currently written (0 if none): `up` without --nodes keeps it
current_node_count() {
  [[ -f $SLURM_CONF_FILE ]] || { echo 0; return; }
  grep -c '^NodeName=' "$SLURM_CONF_FILE" || true
}

# ---------------------------------------------------------------------------------------- install

# missing_packages PKG...: print those not installed (one dpkg-query for all: this runs on every `up`)
missing_packages() {
  local out
  out=$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null || true)
  for p in "$@"; do
    [[ $'\n'$out$'\n' == *$'\n'"$p install ok installed"$'\n'* ]] || echo "$p"
  done
}

# (not named `install`: that would shadow coreutils' install(1), used throughout)
install_packages() {
  local t0 missing=() i
  t0=$(now_us)
  mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
  if ((${#missing[@]} == 0)); then record install "$t0"; return; fi
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get: Debian 12 is required"
  log "installing: ${missing[*]}"
  # Package scripts must not start daemons: there is no systemd here and we start them ourselves
  # with our own paths. This image ships a policy-rc.d that denies it; create one if not (pitfall 1).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    TMP_POLICY=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$TMP_POLICY"; chmod 755 "$TMP_POLICY"
  fi
  # few retries inside apt: this loop already retries 3 times
  local apt_opts=(-o Acquire::Retries=1 -o Acquire::http::Timeout=30 -o DPkg::Lock::Timeout=120)
  for i in 1 2 3; do
    # update first: a stale or empty index gives "Unable to locate package" or 404s
    if apt-get "${apt_opts[@]}" -qq update >"$LOG/apt.log" 2>&1 &&
      apt-get "${apt_opts[@]}" -y -q --no-install-recommends install "${missing[@]}" >>"$LOG/apt.log" 2>&1; then
      break
    fi
    ((i < 3)) || die_log "$LOG/apt.log" "apt-get failed 3 times (apt mirror unreachable?); see $LOG/apt.log"
    log "apt-get failed (try $i/3), retrying in $((i * 5)) s"
    sleep $((i * 5))
  done
  if [[ -n $TMP_POLICY ]]; then rm -f "$TMP_POLICY"; TMP_POLICY=""; fi
  mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
  ((${#missing[@]} == 0)) || die "still not installed: ${missing[*]}; see $LOG/apt.log"
  record install "$t0"
}

# ----------------------------------------------------------------------------------- write_config

slurm_conf_text() {
  local mem_kb mem_mb i name port
  # RealMemory: 90% of RAM, split among the emulated nodes (integer arithmetic, no bc). With
  # config_overrides slurmd reports these values instead of the probed ones.
  mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
  mem_mb=$((mem_kb / 1024 * 9 / 10 / NODE_COUNT))
  cat <<EOF
$TAG: written by tools/slurm_cluster.sh on every \`up\`; edits are overwritten.
ClusterName=$CLUSTER
# hostname(address): slurmctld matches the name to this host, the address avoids any DNS lookup
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
# requeued jobs become eligible cred_expire+1 s later: the default 120 s stalls every requeue (pitfall 6)
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$BASE/state
# %n = node name, so several slurmd on this host keep apart; the script pre-creates it (pitfall 3)
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups without systemd: track processes through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# real accounting, so sacct (and submitit's state polling) works (pitfall 5)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# schedule every 2 s, so a requeued job restarts within ~2 s of becoming eligible (pitfall 6)
SchedulerParameters=sched_interval=2,bf_interval=2
# jobs in a higher-PriorityTier partition preempt (requeue) jobs in "debug"; the victims get their
# --signal (e.g. submitit's USR2) first
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# a DOWN node comes back as soon as its slurmd registers with a valid config
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
# the CPUs/RealMemory below win over the probed hardware (oversubscription, emulated nodes)
SlurmdParameters=config_overrides
EOF
  for ((i = 0; i < NODE_COUNT; i++)); do
    name=${NODES[i]}
    if ((NODE_COUNT == 1)); then
      echo "NodeName=$name NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN"
    else
      port=$((NODE_PORT_BASE + i + 1))
      echo "NodeName=$name NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$port CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN"
    fi
  done
  cat <<EOF
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

dbd_conf_text() {
  cat <<EOF
$TAG: written by tools/slurm_cluster.sh on every \`up\`; edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$BASE/db.pass")
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
EOF
}

# /etc/hosts: emulated node names must resolve, or torch.distributed's MASTER_ADDR=n1 fails
# (pitfall 15); the host name too. Our lines carry $TAG so `down --purge` can remove them. The file
# is rewritten in place, not renamed over: in containers /etc/hosts is often a bind mount.
write_hosts() {
  local want=() n line hosts
  hosts=$(grep -v -- "$TAG\$" /etc/hosts || true)
  if ((NODE_COUNT > 1)); then want=("${NODES[@]}"); fi
  if ! getent hosts "$HOST" >/dev/null 2>&1 || grep -q -- "[[:space:]]$HOST[[:space:]]*$TAG\$" /etc/hosts; then
    want+=("$HOST")
  fi
  line=""
  if ((${#want[@]})); then line="127.0.0.1 ${want[*]} $TAG"; fi
  [[ $(grep -- "$TAG\$" /etc/hosts || true) == "$line" ]] && return 0
  { [[ -z $hosts ]] || printf '%s\n' "$hosts"; [[ -z $line ]] || printf '%s\n' "$line"; } >"$BASE/hosts.new"
  cat "$BASE/hosts.new" >/etc/hosts
  rm -f "$BASE/hosts.new"
  for n in "${NODES[@]}"; do getent hosts "$n" >/dev/null || die "node name $n does not resolve after editing /etc/hosts"; done
}

# write_config: (re)write slurm.conf and slurmdbd.conf. When slurm.conf changes while slurmctld
# runs (e.g. --nodes 1 -> 2), slurmctld and the slurmds are stopped first, with the OLD config so
# that `scontrol shutdown` reaches the old nodes; start_slurm starts them again. MariaDB, slurmdbd
# and munged are left alone. A new cred_expire needs this restart anyway: reconfigure ignores it (pitfall 6).
write_config() {
  local t0 new
  t0=$(now_us)
  install -d -m 755 "$ETC"
  if [[ ! -s $BASE/db.pass ]]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$BASE/db.pass")
  fi
  new=$(slurm_conf_text)
  if [[ ! -f $SLURM_CONF_FILE || $(<"$SLURM_CONF_FILE") != "$new" ]]; then
    if [[ -f $SLURM_CONF_FILE ]] && pidfile_running "$RUN/slurmctld.pid" slurmctld >/dev/null; then
      log "slurm.conf changed: restarting slurmctld and slurmd (jobs are cancelled)"
      stop_slurm
    fi
    printf '%s\n' "$new" >"$SLURM_CONF_FILE.tmp"
    chmod 644 "$SLURM_CONF_FILE.tmp"; mv -f "$SLURM_CONF_FILE.tmp" "$SLURM_CONF_FILE"
  fi
  new=$(dbd_conf_text)
  if [[ ! -f $DBD_CONF_FILE || $(<"$DBD_CONF_FILE") != "$new" ]]; then
    local pid
    if pid=$(pidfile_running "$RUN/slurmdbd.pid" slurmdbd); then
      log "slurmdbd.conf changed: restarting slurmdbd"
      stop_pid "$pid" slurmdbd 15
    fi
    # slurmdbd refuses a slurmdbd.conf readable by group/others (pitfall 9)
    (umask 077; printf '%s\n' "$new" >"$DBD_CONF_FILE.tmp")
    chmod 600 "$DBD_CONF_FILE.tmp"; mv -f "$DBD_CONF_FILE.tmp" "$DBD_CONF_FILE"
  fi
  write_hosts
  record config "$t0"
}

# ------------------------------------------------------------------------------------- start_munge

start_munge() {
  local t0
  t0=$(now_us)
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 700 /etc/munge
    (umask 077; head -c 1024 /dev/urandom >/etc/munge/munge.key)
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  if ! pidfile_running "$MUNGE_PID" munged >/dev/null; then
    # systemd's RuntimeDirectory= normally creates /run/munge (pitfall 2)
    install -d -o munge -g munge -m 755 /run/munge
    # after a crash the old socket/lock make munged refuse to start (pitfall 2)
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 9>&- ||
      die_log /var/log/munge/munged.log "munged failed to start"
    touch "$MUNGE_MARK"  # `down` stops munged only if we started it
  fi
  poll 10 bash -c 'munge -n | unmunge' || die_log /var/log/munge/munged.log "munge credentials do not work"
  record munge "$t0"
}

# ---------------------------------------------------------------------------------------- start_db

start_db() {
  local t0 pid pass
  t0=$(now_us)
  pass=$(<"$BASE/db.pass")
  if ! pidfile_running "$MYSQL_PID" mariadbd >/dev/null; then
    need_port "$DB_PORT" "MariaDB for slurmdbd"
    install -d -o mysql -g mysql -m 755 "$MYSQL_RUN"
    rm -f "$MYSQL_PID" "$MYSQL_SOCK"   # stale after an unclean stop
    # mariadbd runs as mysql and cannot create its log in a root-owned dir: it would log nowhere (pitfall 8)
    touch "$LOG/mysqld.log"; chown mysql:mysql "$LOG/mysqld.log"
    if [[ ! -d $MYSQL_DIR/mysql ]]; then
      mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
        --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install-db.log" 2>&1 9>&- ||
        die_log "$LOG/mariadb-install-db.log" "mariadb-install-db failed"
    fi
    # mariadbd does not daemonize: setsid -f detaches it from this shell. 512M buffer pool silences
    # slurmdbd's innodb_buffer_pool_size warning (pitfall 10); it is virtual memory until used.
    setsid -f mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR" --socket="$MYSQL_SOCK" \
      --pid-file="$MYSQL_PID" --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$LOG/mysqld.log" \
      --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 9>&-
    poll 60 mariadb-admin --no-defaults --socket="$MYSQL_SOCK" ping || die_log "$LOG/mysqld.log" "mariadbd did not come up"
    # idempotent: (re)create slurmdbd's DB user with the current password. TCP from 127.0.0.1 may
    # authenticate as either host name, so create both.
    mariadb --no-defaults --socket="$MYSQL_SOCK" -u root <<EOF || die "could not create the slurm DB user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
  fi
  record mariadb "$t0"
  t0=$(now_us)
  if ! pidfile_running "$RUN/slurmdbd.pid" slurmdbd >/dev/null; then
    rm -f "$RUN/slurmdbd.pid"
    need_port "$DBD_PORT" slurmdbd
    slurmdbd </dev/null >/dev/null 2>&1 9>&- || die_log "$LOG/slurmdbd.log" "slurmdbd failed to start"
  fi
  # slurmdbd daemonizes before connecting to MariaDB: only a working sacctmgr proves it is up.
  # (slurmdbd logging "Connection refused to $CLUSTER at 127.0.0.1(6817)" before slurmctld runs is
  # benign, pitfall 11.)
  poll 30 timeout 10 sacctmgr -n list cluster || die_log "$LOG/slurmdbd.log" "slurmdbd does not answer sacctmgr"
  record slurmdbd "$t0"
}

# ------------------------------------------------------------------------------------- start_slurm

# our_orphan_stepds: slurmstepd processes of THIS cluster. They survive slurmd (kill -9, crash).
# Ownership test: an open fd on $LOG/slurmd-*.log. An environment marker does not work: slurmstepd
# rewrites its environ/cmdline to set its process title (pitfall 17).
our_orphan_stepds() {
  local d comm fd target
  for d in /proc/[0-9]*; do
    { read -r comm <"$d/comm"; } 2>/dev/null || continue
    [[ $comm == slurmstepd ]] || continue
    for fd in "$d"/fd/*; do
      target=$(readlink "$fd" 2>/dev/null) || continue
      if [[ $target == "$LOG/slurmd-"* ]]; then echo "${d#/proc/}"; break; fi
    done
  done
}
# descendants PID...: the given PIDs and all their descendants (ppid from /proc/*/stat)
descendants() {
  local -A kids=()
  local d stat rest ppid p queue=("$@") out=()
  for d in /proc/[0-9]*; do
    { read -r stat <"$d/stat"; } 2>/dev/null || continue
    rest=${stat##*) }; rest=${rest#* }; ppid=${rest%% *}
    kids[$ppid]+=" ${d#/proc/}"
  done
  while ((${#queue[@]})); do
    p=${queue[0]}; queue=("${queue[@]:1}"); out+=("$p")
    for d in ${kids[$p]:-}; do queue+=("$d"); done
  done
  echo "${out[*]}"
}
# kill_orphans: SIGKILL our orphan slurmstepds and their job processes; prints how many it killed
kill_orphans() {
  local stepds pids
  stepds=$(our_orphan_stepds)
  [[ -n $stepds ]] || { echo 0; return; }
  # collect the whole tree before killing: killed parents get their children reparented to PID 1
  # shellcheck disable=SC2086
  pids=$(descendants $stepds)
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  # shellcheck disable=SC2086
  wait_dead 10 $pids || true
  # shellcheck disable=SC2086
  set -- $pids; echo $#
}

cancel_all_jobs() {
  local ids
  ids=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
  [[ -n $ids ]] || return 0
  log "cancelling jobs: $(echo $ids)"
  # shellcheck disable=SC2086
  timeout 10 scancel $ids 2>/dev/null || true
  # CG jobs stay until their processes die: up to KillWait (10 s) for jobs ignoring SIGTERM (pitfall 13)
  poll 25 bash -c '[[ -z $(squeue -h -o %i 2>/dev/null) ]]' || log "warning: jobs still listed after 25 s"
}

# stop_slurm [nocancel]: cancel jobs, `scontrol shutdown` (stops slurmctld and every slurmd it
# knows), then make sure by PID; finally kill orphan slurmstepds and drop stale pid files.
# nocancel (unclean-stop recovery): a job on a node whose slurmd died would sit in CG until the
# timeout; start_slurm cancels the recovered jobs after the restart instead.
stop_slurm() {
  local pids=() f pid comm
  if have_slurm_clients && pidfile_running "$RUN/slurmctld.pid" slurmctld >/dev/null && ctld_up; then
    [[ ${1:-} == nocancel ]] || cancel_all_jobs
    timeout 10 scontrol shutdown >/dev/null 2>&1 || true
  fi
  for f in "$RUN"/slurmctld.pid "$RUN"/slurmd-*.pid; do
    [[ -e $f ]] || continue
    comm=slurmd; [[ $f == */slurmctld.pid ]] && comm=slurmctld
    if pid=$(pidfile_running "$f" "$comm"); then pids+=("$pid"); fi
  done
  if ((${#pids[@]})) && ! wait_dead 15 "${pids[@]}"; then
    for pid in "${pids[@]}"; do if pid_alive "$pid"; then stop_pid "$pid" "slurm daemon" 5; fi; done
  fi
  [[ $(kill_orphans) == 0 ]] || log "killed orphan slurmstepd processes"
  rm -f "$RUN"/slurmctld.pid "$RUN"/slurmd-*.pid
}

start_slurm() {
  local t0 f comm unclean=0 n i port ids
  t0=$(now_us)
  # An unclean stop (crash, kill -9, reboot of the sandbox) leaves pid files of dead daemons, and
  # slurmstepd processes that keep running. slurmctld may then reuse a job id that the restarted
  # slurmd revokes ("Job credential revoked"), and jobs it saved come back RUNNING with dead
  # processes, holding the nodes for minutes (pitfall 17). So: stop whatever of slurmctld/slurmd
  # still runs, kill the orphans, start fresh, and cancel the recovered RUNNING jobs.
  for f in "$RUN"/slurmctld.pid "$RUN"/slurmd-*.pid; do
    [[ -e $f ]] || continue
    comm=slurmd; [[ $f == */slurmctld.pid ]] && comm=slurmctld
    pidfile_running "$f" "$comm" >/dev/null || unclean=1
  done
  if ((unclean)); then
    log "stale pid files: recovering from an unclean stop"
    stop_slurm nocancel
  elif ! compgen -G "$RUN/slurmd-*.pid" >/dev/null && [[ $(kill_orphans) != 0 ]]; then
    log "killed orphan slurmstepd processes of a previous run"   # no slurmd, yet its steps live on
    unclean=1
  fi
  if ! pidfile_running "$RUN/slurmctld.pid" slurmctld >/dev/null; then
    need_port "$CTLD_PORT" slurmctld
    slurmctld </dev/null >/dev/null 2>&1 9>&- || die_log "$LOG/slurmctld.log" "slurmctld failed to start"
  fi
  poll 30 ctld_up || die_log "$LOG/slurmctld.log" "slurmctld does not answer scontrol ping"
  if ((unclean)); then
    ids=$(timeout 10 squeue -h -t RUNNING,SUSPENDED,COMPLETING -o %i || true)
    if [[ -n $ids ]]; then
      log "cancelling jobs recovered as running: $(echo $ids)"
      # shellcheck disable=SC2086
      timeout 10 scancel $ids || true
    fi
  fi
  for ((i = 0; i < NODE_COUNT; i++)); do
    n=${NODES[i]}
    pidfile_running "$RUN/slurmd-$n.pid" slurmd >/dev/null && continue
    port=$SLURMD_PORT; ((NODE_COUNT == 1)) || port=$((NODE_PORT_BASE + i + 1))
    need_port "$port" "slurmd $n"
    # slurmd does not create its %n spool dir: "Domain socket directory ... No such file" (pitfall 3)
    install -d -m 755 "$BASE/spool/$n"
    slurmd -N "$n" </dev/null >/dev/null 2>&1 9>&- || die_log "$LOG/slurmd-$n.log" "slurmd -N $n failed to start"
  done
  record slurmctld+d "$t0"
}

# ---------------------------------------------------------------------------------------- wait_ready

# node_states: "name state" per node (sinfo lists a node once per partition, hence sort -u)
node_states() { timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }

# all_nodes_ready: every configured node is idle/mixed/allocated/completing, with no flag suffix
# (* = not responding, ~ = powered down, ...). Not only idle: `up` may run while tests use the cluster.
all_nodes_ready() {
  local states n
  states=$(node_states) || return 1
  for n in "${NODES[@]}"; do
    [[ $'\n'$states$'\n' =~ $'\n'"$n "(idle|mixed|allocated|completing)$'\n' ]] || return 1
  done
}

wait_ready() {
  local t0 deadline next_resume states name state
  t0=$(now_us)
  deadline=$((t0 + 90 * 1000000))
  next_resume=$((t0 + 5 * 1000000))
  # Right after a (re)start the nodes are unknown/down for ~1-5 s; a job submitted then waits with
  # "Nodes required for job are DOWN, DRAINED..." (pitfall 7). So wait for all nodes.
  until all_nodes_ready; do
    (($(now_us) < deadline)) || { node_states >&2 || true; die_log "$LOG/slurmctld.log" "nodes not ready after 90 s"; }
    # after 5 s (then every 10 s), resume nodes left DOWN/DRAINED, e.g. "Kill task failed" in a
    # previous session or an old state file; ReturnToService=2 covers the not-yet-registered case
    if (($(now_us) > next_resume)); then
      states=$(node_states || true)
      while read -r name state; do
        [[ $state =~ ^(down|drain|fail|inval) ]] || continue
        log "resuming node $name ($state)"
        timeout 10 scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true
      done <<<"$states"
      next_resume=$((next_resume + 10 * 1000000))
    fi
    sleep 0.2
  done
  # the cluster registers itself in slurmdbd on slurmctld's first connection (no `sacctmgr add
  # cluster` needed); wait for it so sacct works from the first job
  poll 30 bash -c "[[ \$(timeout 10 sacctmgr -n -P list cluster format=cluster) == *$CLUSTER* ]]" ||
    die_log "$LOG/slurmdbd.log" "cluster $CLUSTER not registered in slurmdbd after 30 s"
  record wait_ready "$t0"
}

# --------------------------------------------------------------------------------------------- smoke

smoke() {
  local t0 out id state
  [[ ${VMIM_SLURM_SMOKE:-1} != 0 ]] || return 0
  t0=$(now_us)
  # the cluster may be in use (up re-run during tests): only test what can run right away
  if [[ -z $(timeout 10 sinfo -h -t idle,mixed -o %N) ]]; then
    log "smoke test skipped: all nodes busy"; return 0
  fi
  # stderr kept apart (srun may print "queued and waiting for resources"), shown only on failure
  out=$(timeout 60 srun -n1 -t 1 hostname 2>"$LOG/smoke.err") || die "smoke: srun hostname failed: $out $(<"$LOG/smoke.err")"
  if ((NODE_COUNT > 1)) && [[ $(timeout 10 sinfo -h -t idle -o %D) == "$NODE_COUNT" ]]; then
    out=$(timeout 60 srun -N"$NODE_COUNT" -n"$NODE_COUNT" -t 1 printenv SLURMD_NODENAME 2>"$LOG/smoke.err" | sort | tr '\n' ' ')
    [[ $out == "${NODES[*]} " ]] ||
      die "smoke: srun -N$NODE_COUNT did not run on ${NODES[*]}: $out $(<"$LOG/smoke.err")"
  fi
  # stderr apart: a warning line would corrupt the parsed job id
  out=$(cd / && timeout 60 sbatch --parsable --wait -t 1 -J vmim-smoke -o /dev/null --wrap true 2>"$LOG/smoke.err") ||
    die "smoke: sbatch --wait failed: $out $(<"$LOG/smoke.err")"
  id=${out%%;*}
  # accounting reaches slurmdbd asynchronously: poll sacct briefly
  poll 15 bash -c "[[ \$(sacct -n -X -P -j $id -o State) == COMPLETED ]]" ||
    die "smoke: sacct does not show job $id COMPLETED: $(sacct -n -X -P -j "$id" -o State 2>&1 || true)"
  log "smoke test ok (srun, sbatch --wait job $id, sacct)"
  record smoke "$t0"
}

# ---------------------------------------------------------------------------------------- commands

cmd_up() {
  local n="" t0
  t0=$(now_us)
  while (($#)); do
    case $1 in
      --nodes) [[ $# -ge 2 ]] || die "--nodes needs a value"; n=$2; shift 2 ;;
      --nodes=*) n=${1#*=}; shift ;;
      *) die "up: unknown argument $1 (usage: up [--nodes N])" ;;
    esac
  done
  [[ $EUID -eq 0 ]] || die "must run as root"
  [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "SLURM_CPUS must be a positive integer, got '$CPUS'"
  install -d -m 755 "$BASE" "$BASE/state" "$BASE/spool" "$RUN" "$LOG"
  lock
  # default node count: VMIM_SLURM_NODES, else keep the current config's, else 1
  [[ -n $n ]] || n=${VMIM_SLURM_NODES:-}
  [[ -n $n ]] || n=$(current_node_count)
  [[ $n != 0 ]] || n=1
  [[ $n =~ ^[1-9][0-9]?$ ]] || die "--nodes must be 1..99, got '$n'"
  set_nodes "$n"
  install_packages
  write_config
  start_munge
  start_db
  start_slurm
  wait_ready
  smoke
  record TOTAL "$t0"
  log "up: $NODE_COUNT node(s) (${NODES[*]}), $CPUS CPUs each, cluster '$CLUSTER', state in $BASE"
  printf '  %s\n' "${TIMINGS[@]}"
}

cmd_down() {
  local purge=0 t0 pid
  t0=$(now_us)
  while (($#)); do
    case $1 in
      --purge) purge=1; shift ;;
      *) die "down: unknown argument $1 (usage: down [--purge])" ;;
    esac
  done
  [[ $EUID -eq 0 ]] || die "must run as root"
  [[ -d $BASE ]] || install -d -m 755 "$BASE"
  lock
  stop_slurm
  if pid=$(pidfile_running "$RUN/slurmdbd.pid" slurmdbd); then stop_pid "$pid" slurmdbd 15; fi
  rm -f "$RUN/slurmdbd.pid"
  # SIGTERM = clean InnoDB shutdown; give it time before SIGKILL
  if pid=$(pidfile_running "$MYSQL_PID" mariadbd); then stop_pid "$pid" mariadbd 60; fi
  if [[ -e $MUNGE_MARK ]]; then
    if pid=$(pidfile_running "$MUNGE_PID" munged); then stop_pid "$pid" munged 10; fi
    rm -f "$MUNGE_MARK"
  fi
  if ((purge)); then
    rm -rf "$BASE"
    # only files we wrote (they start with our tag)
    local f
    for f in "$SLURM_CONF_FILE" "$DBD_CONF_FILE"; do
      if [[ -f $f ]] && [[ $(head -n 1 "$f") == "$TAG"* ]]; then rm -f "$f"; fi
    done
    if grep -q -- "$TAG\$" /etc/hosts; then
      local rest
      rest=$(grep -v -- "$TAG\$" /etc/hosts || true)
      printf '%s\n' "$rest" >/etc/hosts   # in place: /etc/hosts may be a bind mount
    fi
    log "purged $BASE, our slurm configs and /etc/hosts lines (packages and munge key kept)"
  fi
  log "down in $(fmt_s $(($(now_us) - t0)))"
}

cmd_status() {
  local states n state bad=0
  [[ -f $SLURM_CONF_FILE ]] && have_slurm_clients || { echo "slurm_cluster: not configured" >&2; return 1; }
  ctld_up || { echo "slurm_cluster: slurmctld is not answering" >&2; return 1; }
  # a dead slurmd still shows as idle for SlurmdTimeout (60 s): check our daemons by PID too
  for n in $(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$SLURM_CONF_FILE"); do
    pidfile_running "$RUN/slurmd-$n.pid" slurmd >/dev/null || { echo "slurm_cluster: slurmd of node $n is not running" >&2; bad=1; }
  done
  pidfile_running "$RUN/slurmdbd.pid" slurmdbd >/dev/null || { echo "slurm_cluster: slurmdbd is not running" >&2; bad=1; }
  states=$(node_states) || { echo "slurm_cluster: sinfo failed" >&2; return 1; }
  [[ -n $states ]] || { echo "slurm_cluster: no nodes" >&2; return 1; }
  while read -r n state; do
    [[ $state =~ ^(idle|mixed|allocated|completing)$ ]] || { echo "slurm_cluster: node $n is $state" >&2; bad=1; }
  done <<<"$states"
  [[ $(timeout 10 sacctmgr -n -P list cluster format=cluster 2>/dev/null) == *"$CLUSTER"* ]] ||
    { echo "slurm_cluster: accounting (slurmdbd) not available" >&2; bad=1; }
  timeout 10 sinfo
  return $bad
}

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" || exit 1 ;;  # `|| exit` keeps the ERR trap quiet: not an error
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
