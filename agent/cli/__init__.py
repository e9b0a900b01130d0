"""Command-line interface: one module per `edge-agent` subcommand; agent/__main__.py only parses."""
