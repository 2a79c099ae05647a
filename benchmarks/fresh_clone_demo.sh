#!/bin/bash
# Time the README's first command from a fresh clone: install, then `spg dashboard --demo` until the
# server answers (it serves at once and builds the demo runs beside it); then a second start.
# benchmarks/demo_start.py times the dashboard alone (no clone, no install), several starts. Run it on an idle machine.
#   bash benchmarks/fresh_clone_demo.sh [REPO (default: this checkout)] [WORK (default /tmp/spg_fresh)]
# The venv sees the machine's installed packages (--system-site-packages): on a machine without
# torch and the other wheels, their download comes on top of the install figure.
set -euo pipefail
REPO=${1:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=${2:-/tmp/spg_fresh}
PORT=${PORT:-8611}
rm -rf "$WORK" && mkdir -p "$WORK/cache"
git clone -q "$REPO" "$WORK/clone" && python -m venv --system-site-packages "$WORK/venv"
cd "$WORK/clone"
export SPG_CACHE="$WORK/cache" PATH="$WORK/venv/bin:$PATH"
healthy() { curl -sf "http://localhost:$PORT/_stcore/health" >/dev/null 2>&1; }
t0=$(date +%s.%N)
pip install -q -e . >"$WORK/install.log" 2>&1
t1=$(date +%s.%N)
spg dashboard --demo --port "$PORT" >"$WORK/dashboard.log" 2>&1 &
until healthy; do sleep 0.5; done
t2=$(date +%s.%N)
kill $! && wait $! 2>/dev/null || true
t3=$(date +%s.%N)
spg dashboard --demo --port "$PORT" >"$WORK/dashboard2.log" 2>&1 &
until healthy; do sleep 0.2; done
t4=$(date +%s.%N)
kill $! && wait $! 2>/dev/null || true
python -c "print(f'install {$t1-$t0:.1f} s; dashboard answering {$t2-$t1:.1f} s after spg dashboard --demo started '
             f'(the demo runs build beside it); second start {$t4-$t3:.1f} s')"
