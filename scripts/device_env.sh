# Source on the GPU machine from the repo root: installs the carried wheels (.whl: the forward anchors,
# Hydra; .whl_bwd: the backward anchor; both fit the carry limit beside the library, about 59 MB) into
# /tmp/site and this package (editable, no deps), so scripts and tests import ringfa3.
wheels=$(ls .whl/*.whl .whl_bwd/*.whl 2>/dev/null | awk -F/ '!seen[$NF]++')   # a wheel in both: once
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels || return 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || return 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
