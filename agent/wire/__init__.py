"""What the agent and the collector both read and write on the wire, beside the generated
messages of agent/proto: the column-wise point format of a Batch (`columns`).

Both sides import it; it imports nothing of either (the collector never loads the agent's
stream room, the agent never loads the collector)."""
