source scripts/device_env.sh >/dev/null || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p $OUT/new $OUT/base
timeout 200 python3 scripts/check_sm90_bwd.py --part check --out $OUT/new 2>&1 | tail -25
timeout 120 python3 scripts/check_sm90_bwd.py --part bench --out $OUT/new 2>&1 | tail -14
RINGFA3_SM90_LIB=$PWD/.build/dev/base_dfc653e.so timeout 120 python3 scripts/check_sm90_bwd.py --part bench --out $OUT/base 2>&1 | tail -13
