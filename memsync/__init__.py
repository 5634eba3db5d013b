"""memsync: an event-sourced memory log for AI agents, projected into vector and graph stores."""
