#!/usr/bin/env bash
# relay-compare.sh — Missive's relay (in missive-edge, --relay-listen) vs coturn 4.6, side by
# side, same box, same run, the same turnutils_uclient load (coturn's own client) against each:
# `missive-bench relay` drives PROCS parallel `turnutils_uclient -y -c` processes sharing N
# allocations (client to client: every delivered message crossed the relay twice) with REST
# credentials (-W secret) and measures the data phase only (after every allocation is made):
# relayed packets/s (2 x delivered / window), Mbit/s of relayed payload, server CPU per relayed
# packet (utime+stime of the server process from /proc/<pid>/stat, before/after), loss, RTT.
#
# Profiles (PROFILES, space separated), each run against coturn first, then ours, RUNS times:
#   paced100   — 100 allocations, PPS msgs/s each (default 50, an audio call's rate)
#   paced1000  — 1,000 allocations, PPS msgs/s each
#   stress200  — 200 allocations, as fast as uclient goes (-z 0): loss-dominated on 2 cores
# PEER=1: every session sends to a UDP echo (turnutils_peer on PEER_PORT, default 34790) through
# its relay socket instead (uclient -e): the path of a call whose other side is not on this
# relay. Client to client, both ends are allocations of the same relay, which ours hands over
# in the process (missive_relay_packets_within_total) and coturn sends through its sockets.
# Knobs: PROFILES RUNS PPS SECS (data phase per paced run) SIZE PROCS TCP=1 (client leg over TCP)
#        STRESS_MSGS (per allocation) COTURN_PORT OUT TABLE_ONLY=1 (re-print OUT's table)
# Needs: coturn (installed from apt by ../shared/peers/install.sh when missing), a release build.
# Every load is bounded (messages per session, a 300 s limit per uclient); loopback only.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILES=${PROFILES:-"paced100 paced1000 stress200"}
RUNS=${RUNS:-1}
PPS=${PPS:-50}
SECS=${SECS:-10}
SIZE=${SIZE:-100}
PROCS=${PROCS:-4}
TCP=${TCP:-0}
PEER=${PEER:-0}
PEER_PORT=${PEER_PORT:-34790}
STRESS_MSGS=${STRESS_MSGS:-2000}
COTURN_PORT=${COTURN_PORT:-34780}
SECRET=relay-compare-secret
OUT=${OUT:-$(mktemp -d /tmp/missive-relay-compare.XXXXXX)}
TABLE_ONLY=${TABLE_ONLY:-0}
mkdir -p "$OUT"

if [ "$TABLE_ONLY" != 1 ]; then
for b in turnserver turnutils_uclient; do
  command -v "$b" >/dev/null || { "$PEERS/install.sh"; break; }
done
command -v turnserver >/dev/null || { echo "coturn missing (run $PEERS/install.sh)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release -q -p missive-edge -p missive-bench)
BENCH="$TARGET/release/missive-bench"
EDGE="$TARGET/release/missive-edge"
TCP_FLAG=""; [ "$TCP" = 1 ] && TCP_FLAG="--tcp"
PEER_FLAG=""; [ "$PEER" = 1 ] && PEER_FLAG="--turn-peer-port $PEER_PORT"
echo "# coturn $(dpkg-query -W -f='${Version}' coturn 2>/dev/null || echo '?'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

COTURN_PID=""
stop_coturn() {
  if [ -n "$COTURN_PID" ]; then
    kill "$COTURN_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$COTURN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$COTURN_PID" 2>/dev/null || true
    wait "$COTURN_PID" 2>/dev/null || true
    COTURN_PID=""
  fi
}
trap stop_coturn EXIT
start_coturn() {
  # As ../shared/peers/turn-baseline.sh starts it, plus room for 1,000 allocations of one user.
  turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$COTURN_PORT" \
    --min-port=40000 --max-port=47999 --use-auth-secret --static-auth-secret="$SECRET" \
    --realm=bench.local --allow-loopback-peers --no-tls --no-dtls --no-cli --fingerprint \
    --user-quota=0 --total-quota=0 \
    --userdb="$OUT/turndb" --pidfile="$OUT/turnserver.pid" --log-file="$OUT/turnserver.log" \
    --simple-log --no-stdout-log >"$OUT/turnserver.stdout" 2>&1 &
  COTURN_PID=$!
  for _ in $(seq 100); do ss -lun | grep -q "127.0.0.1:$COTURN_PORT " && return 0; sleep 0.1; done
  echo "coturn did not start; see $OUT/turnserver.log" >&2; exit 1
}

for run in $(seq "$RUNS"); do
  for profile in $PROFILES; do
    case "$profile" in
      paced100)  n=100;  args=(--clients 100  --messages $((100 * PPS * SECS))  --rate $((100 * PPS))) ;;
      paced1000) n=1000; args=(--clients 1000 --messages $((1000 * PPS * SECS)) --rate $((1000 * PPS))) ;;
      stress200) n=200;  args=(--clients 200  --messages $((200 * STRESS_MSGS))) ;;
      *) echo "unknown profile $profile" >&2; exit 2 ;;
    esac
    common=(relay "${args[@]}" --size "$SIZE" --uclient-procs "$PROCS" --turn-secret "$SECRET" $TCP_FLAG $PEER_FLAG)
    echo "== $profile run $run: coturn"
    start_coturn
    "$BENCH" "${common[@]}" --turn-server "127.0.0.1:$COTURN_PORT" --server-pid "$COTURN_PID" \
      --json "$OUT/coturn-$profile-$run.json" | tee "$OUT/coturn-$profile-$run.txt" || true
    stop_coturn
    sleep 2
    echo "== $profile run $run: missive-edge"
    "$BENCH" "${common[@]}" --spawn --edge-bin "$EDGE" \
      --json "$OUT/missive-$profile-$run.json" | tee "$OUT/missive-$profile-$run.txt" || true
    sleep 2
  done
done
fi

python3 - "$OUT" <<'PY'
import glob, json, os, statistics as st, sys
out = sys.argv[1]
def runs(server, profile):
    rows = []
    for p in sorted(glob.glob(os.path.join(out, f"{server}-{profile}-*.json"))):
        rows.append(json.load(open(p)))
    return rows
def med(rows, key):
    v = [r[key] for r in rows if r.get(key) is not None]
    return st.median(v) if v else None
profiles = sorted({os.path.basename(p).split("-")[1] for p in glob.glob(os.path.join(out, "*-*-*.json"))},
                  key=lambda p: ["paced100", "paced1000", "stress200"].index(p) if p in ["paced100", "paced1000", "stress200"] else 9)
cols = [("relayed packets/s", "relayed_packets_per_s", "{:,.0f}", "higher"),
        ("relayed Mbit/s", "relayed_mbit_per_s", "{:,.1f}", "higher"),
        ("server CPU µs / relayed packet", "server_cpu_us_per_packet", "{:.2f}", "lower"),
        ("server CPU % of a core", "server_cpu_pct", "{:.0f}", "–"),
        ("loss %", "loss_pct", "{:.2f}", "lower"),
        ("RTT avg ms (uclient, 1 ms resolution)", "rtt_avg_ms", "{:.1f}", "lower"),
        ("server RSS MB after", "server_rss_mb", "{:.1f}", "lower")]
print()
print("| profile | metric | missive-edge relay | coturn | ours/theirs | better is |")
print("| --- | --- | ---: | ---: | ---: | --- |")
for prof in profiles:
    a, b = runs("missive", prof), runs("coturn", prof)
    for name, key, fmt, better in cols:
        x, y = med(a, key), med(b, key)
        fx = "–" if x is None else fmt.format(x)
        fy = "–" if y is None else fmt.format(y)
        ratio = "–" if not x or not y else f"{x / y:.2f}"
        print(f"| {prof} | {name} | {fx} | {fy} | {ratio} | {better} |")
    x, y = med(a, "server_cpu_us_per_packet"), med(b, "server_cpu_us_per_packet")
    if x and y:
        print(f"| {prof} | packets per server CPU-second | {1e6 / x:,.0f} | {1e6 / y:,.0f} | {y / x:.2f} | higher |")
print()
print(f"Medians over {max(len(runs('missive', p)) for p in profiles) if profiles else 0} run(s); raw reports: {out}")
PY
