"""On-device diagnostics: measure what a plan really costs on the machine at hand."""
