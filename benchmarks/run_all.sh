#!/usr/bin/env bash
# Every benchmark in turn, on an otherwise idle machine; paste the output into RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for script in loop_overhead scoring_throughput pass_overhead run_overhead results_speed results_pg site_speed ray_overhead; do
  echo "== benchmarks/$script.py"
  python -m "benchmarks.$script"
  echo
done
