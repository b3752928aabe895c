#!/usr/bin/env bash
# Two biaslens binaries on the same tasks, back to back, no cache: seconds per task for each,
# and whether their metric tables are identical (exit 1 if not). For comparing builds (the
# vectorised-exp A/B, in git history at 402cab8); harness/eval-speed.sh compares the fast and
# reference paths of one build instead.
#
#   harness/ab-binaries.sh OLD_BIN NEW_BIN "boolq 200" "lambada_openai 400" "wikitext2 3"
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,7p "$0"; exit 2; }
old=$1 new=$2
shift 2
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for spec in "$@"; do
    read -r task limit <<< "$spec"
    for side in old new; do
        bin=${!side}
        t0=$(date +%s.%N)
        "$bin" eval --model smollm2-135m --tasks "$task" --limit "$limit" --no-cache \
            --out "$out/$side-$task" > "$out/$side-$task.log" 2>&1 || { cat "$out/$side-$task.log"; exit 1; }
        t1=$(date +%s.%N)
        printf '%-16s %-5s first %-5s %8.1f s\n' "$task" "$side" "$limit" "$(echo "$t1 - $t0" | bc)"
    done
    if diff <(grep '^|' "$out/old-$task/results.md") <(grep '^|' "$out/new-$task/results.md") > /dev/null; then
        echo "$task: identical tables"
    else
        echo "$task: TABLES DIFFER"; exit 1
    fi
done
