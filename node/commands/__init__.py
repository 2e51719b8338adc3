"""Subcommands of the `phalanx` command, one module each."""
