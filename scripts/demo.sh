#!/usr/bin/env bash
# The main job on embedded defaults: a short end-to-end scenario.
# An app writes memories through the Memory facade (every write goes through the
# event log and is projected into Qdrant Edge and LadybugDB); then an operator
# reads the history, appends raw events, rebuilds both stores from the log,
# verifies them against fold(log) and audits the hash chain.
set -euo pipefail
DATA="${DEMO_DIR:-$(mktemp -d)/memsync-demo}"
export MEMSYNC_DATA_DIR="$DATA"
HERE="$(cd "$(dirname "$0")" && pwd)"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "the app: add, update, search, delete through the Memory facade ($DATA)"
python "$HERE/demo_app.py" "$DATA"

step "status: head of the log, each projection's checkpoint and lag"
memsync status

step "history of m-tea: versions, diffs, who and why"
memsync history m-tea

step "the log for alice"
memsync log --user alice

step "append raw events (JSONL, atomic: all or none) and project them"
cat <<'JSONL' | memsync append -
{"type":"memory.added","memory_id":"m-note","text":"Dana prefers email over phone","user_id":"dana","entities":[{"name":"Dana","type":"person"}],"relations":[{"source":"Dana","relation":"prefers","target":"email"}],"actor":"importer"}
{"type":"memory.updated","memory_id":"m-bob","metadata":{"category":"health","severity":"high"},"actor":"nurse","reason":"triage"}
JSONL
echo '{"type":"memory.updated","memory_id":"m-ghost","text":"refused"}' | memsync append - || echo "(refused as expected: exit $?)"
memsync project
memsync verify

step "rebuild both stores from the log (fresh build + swap), then verify"
memsync rebuild
memsync verify --json

step "rebuild as of seq 4 (time travel), verify, then catch up to the head"
memsync rebuild --to-seq 4
memsync verify
memsync project

step "delete everything of bob, search through the CLI, audit the hash chain"
memsync delete-all --user bob --reason "account closed"
memsync project
memsync search "peanut allergy" --user bob
memsync search "coffee" --user alice --limit 1
memsync verify
memsync audit
memsync status --json
echo
echo "data left in $DATA (events.db, qdrant/, graph/)"
