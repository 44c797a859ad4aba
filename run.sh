#!/usr/bin/env bash
# duvflow entry point: sets up .venv (pinned, offline-friendly) on first use, then
#   ./run.sh demo  [snakemake args]   run the whole workflow on the generated demo cohort
#   ./run.sh test  [pytest args]      run the test suite
#   ./run.sh setup                    only create/update the environment
#   ./run.sh snakemake ARGS...        run snakemake inside the environment (your own config)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DUVFLOW_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
    local stamp want
    want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
    stamp="$VENV/.duvflow-installed"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    echo "[duvflow] setting up $VENV (first run takes a few minutes)" >&2
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "[duvflow] Python >= 3.11 is needed (found $("$PY" --version 2>&1)); set PYTHON=..." >&2
        exit 1
    }
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
}

cmd=${1:-help}
shift || true
case "$cmd" in
setup)
    setup
    ;;
demo)
    setup
    export PATH="$PWD/$VENV/bin:$PATH"
    out=$(python -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("output_dir", "results"))' \
        config/demo.yaml)  # the demo's output_dir
    snakemake --configfile config/demo.yaml --cores "${DUVFLOW_CORES:-2}" "$@"
    snakemake --configfile config/demo.yaml --report "$out/report.html"
    echo "[duvflow] demo finished: results table in $out/comparison/arms.md, report in $out/report.html" >&2
    ;;
test)
    setup
    export PATH="$PWD/$VENV/bin:$PATH"
    python -m pytest "$@"
    ;;
snakemake)
    setup
    export PATH="$PWD/$VENV/bin:$PATH"
    snakemake "$@"
    ;;
*)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    [[ "$cmd" == help || "$cmd" == -h || "$cmd" == --help ]] || exit 2
    ;;
esac
