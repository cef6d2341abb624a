#!/usr/bin/env bash
# Run the end-to-end collection tests N times (default 10) while two CPU burners load the
# machine, and count the failures. Usage: tools/flake_check.sh [runs] [pytest args...]
# Prints one line per run and a total; exit 1 if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
RUNS=${1:-10}
shift || true
TARGET=("$@")
[ ${#TARGET[@]} -eq 0 ] && TARGET=(tests/test_collection.py)

burners=()
for _ in 1 2; do
  "$PY" -c "while True: pass" &
  burners+=($!)
done
trap 'kill "${burners[@]}" 2>/dev/null' EXIT

failed=0
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s)
  if out=$("$PY" -m pytest -q -p no:cacheprovider "${TARGET[@]}" 2>&1); then
    status=ok
  else
    status=FAILED
    failed=$((failed + 1))
    echo "$out" | grep -E "^(FAILED|ERROR|E  )" | head -20
  fi
  echo "run $i/$RUNS: $status ($(( $(date +%s) - start )) s, load $(cut -d' ' -f1 /proc/loadavg)): $(echo "$out" | tail -1)"
done
echo "flake check: $failed of $RUNS runs failed (2 CPU burners, $(nproc) cores)"
[ "$failed" -eq 0 ]
