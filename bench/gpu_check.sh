#!/usr/bin/env bash
# bench/gpu_check.py on the GPU machine, under a hard 470 s limit; extra arguments go to it (--tiny, --only ppo).
# Where there is no .venv (the GPU machine), the wheels carried in .whl/ (the project's packages its image lacks)
# are installed into /tmp/site first.
cd "$(dirname "$0")/.." || exit 1
if [ -d .whl ] && [ ! -d .venv ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
[ -f .venv/bin/activate ] && . .venv/bin/activate
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
exec timeout 470 python3 bench/gpu_check.py "$@"
