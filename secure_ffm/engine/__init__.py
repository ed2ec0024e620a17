"""The engine: the round orchestrator and what it drives (client, server, strategies, transforms, aggregation, wire)."""
