#!/usr/bin/env bash
# The main job on embedded defaults: a short end-to-end scenario.
# Appends memory events, projects them into Qdrant Edge and LadybugDB, deletes,
# shows history, rebuilds both stores from the log, verifies and audits.
set -euo pipefail
DATA="${MEMSYNC_DEMO_DIR:-$(mktemp -d)/memsync-demo}"
export MEMSYNC_DATA_DIR="$DATA"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "append events (JSONL, atomic) into $DATA/events.db"
cat <<'JSONL' | memsync append -
{"type":"memory.added","memory_id":"m-tea","text":"Alice drinks green tea every morning","user_id":"alice","vector":[0.9,0.1,0.0,0.2],"entities":[{"name":"Alice","type":"person"},{"name":"green tea","type":"drink"}],"relations":[{"source":"Alice","relation":"drinks","target":"green tea"}],"actor":"agent:planner","reason":"from chat"}
{"type":"memory.added","memory_id":"m-job","text":"Alice works at Acme as an engineer","user_id":"alice","vector":[0.1,0.8,0.3,0.0],"relations":[{"source":"Alice","relation":"works at","target":"Acme"}]}
{"type":"memory.added","memory_id":"m-bob","text":"Bob is allergic to peanuts","user_id":"bob","vector":[0.2,0.2,0.9,0.1],"entities":[{"name":"Bob","type":"person"},{"name":"peanuts"}],"relations":[{"source":"Bob","relation":"allergic to","target":"peanuts"}]}
JSONL
memsync add "Alice moved to Lisbon" --id m-city --user alice --vector '[0.3,0.3,0.3,0.9]' \
  --relation "Alice,lives in,Lisbon" --actor "agent:planner"
memsync update m-tea --text "Alice switched from green tea to coffee" --vector '[0.7,0.2,0.1,0.3]' \
  --relation "Alice,drinks,coffee" --actor "user:alice" --reason "correction"

step "project into both stores"
memsync project

step "status"
memsync status

step "delete a memory; its graph entities go with it (no orphans)"
memsync delete m-job --actor "user:alice" --reason "left the company"
memsync project
memsync verify

step "history of m-tea"
memsync history m-tea

step "the log for alice"
memsync log --user alice

step "rebuild both stores from the log (fresh build + swap), then verify"
memsync rebuild
memsync verify --json

step "rebuild as of seq 3 (time travel), verify, then back to the head"
memsync rebuild --to-seq 3
memsync verify
memsync project

step "delete everything of bob, audit the hash chain"
memsync delete-all --user bob --reason "account closed"
memsync project
memsync verify
memsync audit
memsync status --json
echo
echo "data left in $DATA (events.db, qdrant/, graph/)"
