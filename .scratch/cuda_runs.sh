#!/bin/bash
# usage: cuda_runs.sh N WORKERS BUDGET_S  -- N consecutive full runs (tests + conformance, --device all)
N=${1:-1}; W=${2:-16}; BUDGET=${3:-560}
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader
python -c "import torch, triton, hypothesis; print('torch', torch.__version__, 'triton', triton.__version__, 'hypothesis', hypothesis.__version__, 'cuda', torch.cuda.is_available())"
t0=$(date +%s)
for i in $(seq 1 $N); do
  s=$(date +%s); left=$(( BUDGET - (s - t0) ))
  [ $left -lt 60 ] && { echo "run $i: not started, ${left}s left"; break; }
  timeout $left python -m pytest -n $W --device all tests harness/conformance -q -p no:cacheprovider --durations=20 > $OUT/run$i.log 2>&1
  rc=$?
  echo "run $i rc=$rc $(( $(date +%s) - s ))s :: $(grep -E '(passed|failed)' $OUT/run$i.log | tail -1)"
  grep -E "^(FAILED|ERROR)" $OUT/run$i.log | head -20
done
cd $OUT && tar czf x.tgz *.log && rm -f *.log
