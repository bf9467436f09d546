"""mergebot: the remerge bot service, its CLI and a Hub-compatible local server."""
