"""CLI layer: argument parsing and messages for the three commands."""
