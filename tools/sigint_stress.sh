#!/bin/sh
# make stress-ctrl-c: Ctrl-C in `clexrt chat` under CPU load, the long way. Runs
# tests/test_chat_sigint.py RUNS times in a row (default 50; the first argument or RUNS=n). Each run
# starts one busy loop per core for its duration (the test does; they are always killed), spawns
# the chat with the real SmolLM2 in a pseudo-terminal three times (SIGINT as usual, inherited
# ignored, inherited blocked) and types Ctrl-C at random moments of its replies; every Ctrl-C must
# stop the reply within one token. Prints "stress-ctrl-c: N/RUNS runs passed" and a summary of
# every Ctrl-C (from build/sigint_stress.jsonl); exits 1 unless all passed. A failed run's output
# is kept in build/sigint_stress.fail-<run>.log.
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PY:-.venv/bin/python}
RUNS=${1:-${RUNS:-50}}
LOG=build/sigint_stress.jsonl
OUT=build/sigint_stress.run.log
mkdir -p build
: > "$LOG"
rm -f build/sigint_stress.fail-*.log
"$PY" -c "import pexpect" 2>/dev/null || { echo "stress-ctrl-c: $PY has no pexpect (make install)"; exit 2; }

passed=0
i=1
while [ "$i" -le "$RUNS" ]; do
    t0=$(date +%s)
    if CLEXRT_SIGINT_LOG="$LOG" "$PY" -m pytest -q -p no:cacheprovider -p no:randomly \
            tests/test_chat_sigint.py > "$OUT" 2>&1; then
        passed=$((passed + 1))
        echo "run $i/$RUNS: passed ($(( $(date +%s) - t0 )) s)"
    elif grep -q "skipped" "$OUT" && ! grep -q "failed" "$OUT"; then
        tail -3 "$OUT"
        echo "stress-ctrl-c: the test skipped (no SmolLM2 or no pexpect: make install)"
        exit 2
    else
        cp "$OUT" "build/sigint_stress.fail-$i.log"
        echo "run $i/$RUNS: FAILED (build/sigint_stress.fail-$i.log):"
        grep -E "^(E |FAILED)" "$OUT" | tail -8
    fi
    i=$((i + 1))
done

"$PY" - "$LOG" <<'EOF'
import collections, json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if recs:
    after = collections.Counter(r["after"] for r in recs)
    by = collections.Counter((r["case"], r["mode"]) for r in recs)
    lat = sorted(r["latency_s"] for r in recs)
    print(f"{len(recs)} Ctrl-Cs during replies; tokens generated after the one on screen at "
          f"Ctrl-C: " + ", ".join(f"{k}: {v}" for k, v in sorted(after.items())))
    print("  by case/mode: " + ", ".join(f"{c}/{m} {n}" for (c, m), n in sorted(by.items())))
    print(f"  Ctrl-C to '(stopped)': median {lat[len(lat) // 2]:.3f} s, max {lat[-1]:.3f} s")
EOF
echo "stress-ctrl-c: $passed/$RUNS runs passed"
[ "$passed" -eq "$RUNS" ]
