#!/usr/bin/env bash
# compare.sh — Missive vs mosquitto, side by side, same box, same run, same workload shapes as
# ../shared/peers/mqtt-baseline.sh: PAIRS senders → PAIRS receivers, SIZE-byte messages, a
# WINDOW of unacknowledged sends per sender, three scenarios:
#   sat     — MSGS per sender, unpaced (saturation)
#   paced   — RATE msgs/s per sender × PACED_MSGS (PAIRS×RATE offered, e.g. 4,000 msgs/s);
#             senders start together (--aligned), as msgload's do
#   offline — receivers offline while MSGS per sender queue, then they connect and drain
# Prints one table: msgs/s, p50/p99 latency, server CPU µs per message, server RSS, and the
# ratio ours/theirs. Missive fsyncs every acknowledged message; mosquitto (persistence on,
# autosave snapshots) does not fsync per message.
#
# Knobs (same names as mqtt-baseline.sh): PAIRS MSGS SIZE WINDOW RATE PACED_MSGS RUNS
# Needs: mosquitto (installed by the peers' install.sh when missing), a release build of ours.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
PAIRS=${PAIRS:-200}
MSGS=${MSGS:-500}
SIZE=${SIZE:-100}
WINDOW=${WINDOW:-10}
RATE=${RATE:-20}
PACED_MSGS=${PACED_MSGS:-200}
RUNS=${RUNS:-1}
OUT=${OUT:-$(mktemp -d /tmp/missive-compare.XXXXXX)}
ENGINE=${ENGINE:-fjall}                # storage engine of the spawned edge: fjall or sled
mkdir -p "$OUT"

TABLE_ONLY=${TABLE_ONLY:-0}           # 1: only print the table of an earlier run's OUT=DIR
if [ "$TABLE_ONLY" != 1 ]; then
[ -x "$PEERS/mqtt-baseline.sh" ] || { echo "peers scripts not found at $PEERS (set PEERS=)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release -q -p missive-edge -p missive-bench)
BENCH="$ROOT/target/release/missive-bench"
printf '[storage]\nengine = "%s"\n' "$ENGINE" > "$OUT/edge.toml"

echo "== mosquitto (mqtt-baseline.sh, RUNS=$RUNS)"
OUTDIR="$OUT/mqtt" PAIRS=$PAIRS MSGS=$MSGS SIZE=$SIZE WINDOW=$WINDOW RATE=$RATE \
  PACED_MSGS=$PACED_MSGS RUNS=$RUNS "$PEERS/mqtt-baseline.sh" | tee "$OUT/mqtt.txt"

echo "== missive (missive-bench, storage engine $ENGINE, RUNS=$RUNS)"
clients=$((2 * PAIRS))
for run in $(seq "$RUNS"); do
  "$BENCH" chat --spawn --edge-config "$OUT/edge.toml" --one-way --clients "$clients" --messages $((PAIRS * MSGS)) \
    --size "$SIZE" --window "$WINDOW" --json "$OUT/ours-sat-$run.json" > "$OUT/ours-sat-$run.txt" 2>&1
  "$BENCH" chat --spawn --edge-config "$OUT/edge.toml" --one-way --clients "$clients" --messages $((PAIRS * PACED_MSGS)) \
    --rate $((PAIRS * RATE)) --aligned --size "$SIZE" --window "$WINDOW" --json "$OUT/ours-paced-$run.json" > "$OUT/ours-paced-$run.txt" 2>&1
  "$BENCH" offline --spawn --edge-config "$OUT/edge.toml" --clients "$clients" --messages $((PAIRS * MSGS)) \
    --size "$SIZE" --window "$WINDOW" --json "$OUT/ours-offline-$run.json" > "$OUT/ours-offline-$run.txt" 2>&1
done
fi

python3 - "$OUT" <<'PY'
import json, glob, os, statistics as st, sys
out = sys.argv[1]
rows = []
for line in open(os.path.join(out, "mqtt", "results.txt")):
    kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
    if "recv" in kv:
        rows.append(kv)
def theirs(sc, key):
    v = [float(r[key]) for r in rows if r.get("sc") == sc and key in r]
    return st.median(v) if v else None
def theirs_cpu(sc):
    v = [1e6 * float(r["srv_cpu_s"]) / float(r["recv"]) for r in rows
         if r.get("sc") == sc and "srv_cpu_s" in r and float(r["recv"]) > 0]
    return st.median(v) if v else None
def ours(sc, f):
    v = [f(json.load(open(p))) for p in sorted(glob.glob(os.path.join(out, f"ours-{sc}-*.json")))]
    v = [x for x in v if x is not None]
    return st.median(v) if v else None
table = [
    ("sat msgs/s", ours("sat", lambda r: r["throughput_msgs_per_s"]), theirs("sat", "recv_rate"), "higher"),
    ("sat p50 ms", ours("sat", lambda r: r["latency_ms"]["p50"]), theirs("sat", "p50_ms"), "lower"),
    ("sat p99 ms", ours("sat", lambda r: r["latency_ms"]["p99"]), theirs("sat", "p99_ms"), "lower"),
    ("sat server CPU µs/msg", ours("sat", lambda r: r["server"]["cpu_us_per_msg"]), theirs_cpu("sat"), "lower"),
    ("paced p50 ms", ours("paced", lambda r: r["latency_ms"]["p50"]), theirs("paced", "p50_ms"), "lower"),
    ("paced p99 ms", ours("paced", lambda r: r["latency_ms"]["p99"]), theirs("paced", "p99_ms"), "lower"),
    ("paced server CPU µs/msg", ours("paced", lambda r: r["server"]["cpu_us_per_msg"]), theirs_cpu("paced"), "lower"),
    ("offline accept msgs/s", ours("offline", lambda r: r["extra"]["accept_msgs_per_s"]), theirs("offline", "publish_rate"), "higher"),
    ("offline drain msgs/s", ours("offline", lambda r: r["extra"]["drain_msgs_per_s"]), theirs("offline", "drain_rate"), "higher"),
    ("server peak RSS MB (sat)", ours("sat", lambda r: r["server"]["rss_peak_bytes"] / 1e6), theirs("sat", "srv_hwm_mb"), "lower"),
]
print()
print("| metric | missive | mosquitto | ours/theirs | better is |")
print("| --- | ---: | ---: | ---: | --- |")
for name, a, b, better in table:
    fa = "–" if a is None else f"{a:,.1f}"
    fb = "–" if b is None else f"{b:,.1f}"
    ratio = "–" if not a or not b else f"{a / b:.2f}"
    print(f"| {name} | {fa} | {fb} | {ratio} | {better} |")
print()
engine = open(os.path.join(out, "edge.toml")).read().split('"')[1]
print(f"Missive storage engine: {engine}.")
print("Missive acknowledges a message only after it is fsync'd; mosquitto does not fsync per message.")
print(f"Raw reports: {out}")
PY

# The relay side of the comparison (Missive's TURN relay vs coturn, same uclient load):
# RELAY=0 skips it; its knobs are relay-compare.sh's (PROFILES, PPS, SECS, RUNS, TCP, ...).
if [ "${RELAY:-1}" = 1 ] && [ "$TABLE_ONLY" != 1 ]; then
  echo "== relay: missive-edge vs coturn (relay-compare.sh)"
  OUT="$OUT/relay" "$HERE/relay-compare.sh"
fi
