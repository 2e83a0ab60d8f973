"""Command-line interface: thin adapters over the library. Core modules never import this."""
