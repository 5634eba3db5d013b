"""Session-wide real servers (Neo4j, PostgreSQL) started by the suite itself."""
