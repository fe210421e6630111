"""CLI subcommands for the data side (``synth``, ``ingest``, ``demo``)."""
