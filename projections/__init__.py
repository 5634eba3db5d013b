"""Store backends for memsync's projections (found through the ``memsync.stores`` entry points)."""
