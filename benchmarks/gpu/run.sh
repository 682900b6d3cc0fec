#!/usr/bin/env bash
# Every GPU script, in priority order, inside one time budget: one command on a GPU machine.
#
#   benchmarks/gpu/run.sh [BUDGET_S]        (from the repository root; default 540 s from the start)
#
# Installs the carried wheels (.gpu-wheels/, see fetch_wheels.sh) into /tmp/site, then runs first_light.py,
# fast_path.py, cold_start.py and train_style.py (those present), each with `--out $OUT --started NOW
# --budget S`: S is the time left, capped by CAP_<script> seconds when set (first_light: 200 by default,
# so that the fast path gets its turn). Each script rewrites its JSON in $OUT after every part, so what
# finished comes back even when the budget cuts a script short. SCRIPTS="fast_path" runs only that one.
set -uo pipefail
T0=${T0:-$(date +%s.%N)}
BUDGET=${1:-540}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
if [ -d .gpu-wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-wheels/*.whl \
    || { echo "the carried wheels did not install"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 CAP_first_light=${CAP_first_light:-200}
for script in ${SCRIPTS:-first_light fast_path cold_start train_style}; do
  file=benchmarks/gpu/$script.py
  if [ ! -f "$file" ]; then
    echo "== $script: not in this checkout, skipped"
    continue
  fi
  now=$(date +%s.%N)
  left=$(python3 -c "print(int($T0 + $BUDGET - $now))")
  cap_name=CAP_$script
  budget=$left
  if [ -n "${!cap_name:-}" ] && [ "${!cap_name}" -lt "$left" ]; then budget=${!cap_name}; fi
  if [ "$budget" -lt 60 ]; then
    echo "== $script: skipped, ${left} s left of ${BUDGET}"
    continue
  fi
  echo "== $script: ${budget} s of the ${left} s left"
  # A hard stop 30 s past its budget: a part that overruns its estimate cannot take the next script's turn.
  timeout --signal=INT --kill-after=10 $((budget + 30)) \
    python3 "$file" --out "$OUT" --started "$now" --budget "$budget" 2>&1 | tee "$OUT/$script.log"
done
ls -l "$OUT"
