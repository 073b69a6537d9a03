#!/usr/bin/env bash
# Generated mutants (mutmut 3, the dev extra) over one module, against the tests that cover it, in a
# scratch clone of the committed tree (mutmut writes a mutants/ copy beside the code). Not in .ci/run:
# minutes per module. Prints mutmut's summary and the survivors; `mutmut show NAME` (in the clone,
# printed at the end) shows one.
#
#   bash scripts/mutmut.sh inference_engine/engine/acceptance.py tests/test_acceptance.py tests/test_speculative_equivalence.py
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MODULE.py TEST_FILE..." >&2; exit 2; }
module=$1; shift
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/kakeya-mutmut-XXXXXX")
git clone -q "$repo" "$work/tree"
cd "$work/tree"
ln -s "$repo/.venv" .venv
tests=$(printf '"%s", ' "$@")
cat >> pyproject.toml <<TOML

[tool.mutmut]
source_paths = ["inference_engine/"]
only_mutate = ["$module"]
pytest_add_cli_args_test_selection = [${tests%, }]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
also_copy = ["kv_cache_proposer/", "scripts/"]
process_isolation = "forkserver"  # torch is not fork-safe: plain fork turned passing mutants into timeouts
TOML
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1  # two workers on two cores
.venv/bin/mutmut run --max-children 2 > "$work/run.log" 2>&1 || true
.venv/bin/mutmut results --all true 2>/dev/null | grep -v ": killed$" || true
echo "counts: $(.venv/bin/mutmut results --all true 2>/dev/null | awk -F': ' '{print $2}' | sort | uniq -c | tr '\n' ' ')"
echo "clone: $work/tree (mutmut show NAME there)"
