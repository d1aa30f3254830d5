"""egs-agent: the GPU fleet node agent. See README.md and docs/ for the map."""

__version__ = "0.1.0"
