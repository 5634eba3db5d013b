"""The app side of the demo: an agent's memory through the Memory facade (mem0-style)."""

from __future__ import annotations

import sys

from memsync import Memory

data_dir = sys.argv[1]
with Memory.from_config({"data_dir": data_dir}) as m:
    print(f"embedder: {m.embedder.model if m.embedder else 'none'}")
    tea = m.add("Alice drinks green tea every morning", user_id="alice", memory_id="m-tea",
                relations=[("Alice", "drinks", "green tea")], actor="agent:planner", reason="from chat")
    m.add("Alice works at Acme as a backend engineer", user_id="alice", memory_id="m-job",
          relations=[("Alice", "works at", "Acme")], entities=[{"name": "Acme", "type": "company"}])
    m.add("Alice moved to Lisbon last spring", user_id="alice", memory_id="m-city",
          relations=[("Alice", "lives in", "Lisbon")])
    m.add("Bob is allergic to peanuts", user_id="bob", memory_id="m-bob",
          relations=[("Bob", "allergic to", "peanuts")], metadata={"category": "health"})
    m.add("Carol plays chess on Sundays", user_id="carol", agent_id="coach", memory_id="m-carol")
    print("added:", [r["id"] for r in (tea["results"])], "+ 4 more")

    m.update("m-tea", "Alice switched from green tea to coffee", relations=[("Alice", "drinks", "coffee")],
             actor="user:alice", reason="correction")
    for query in ("what does alice drink?", "where does she live?"):
        hits = m.search(query, user_id="alice", limit=2)
        print(f"search {query!r}:")
        for hit in hits["results"]:
            print(f"  {hit['score']:.3f}  {hit['memory']}")
        for fact in hits["relations"][:4]:
            print(f"        {fact['source']} -{fact['relationship']}-> {fact['destination']}")
    m.delete("m-job", actor="user:alice", reason="left the company")
    print("alice now has", len(m.get_all(user_id="alice")["results"]), "memories")
