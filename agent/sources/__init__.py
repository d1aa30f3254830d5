"""Sources of figures: one module per source behind `agent.sources.base.Source`."""
