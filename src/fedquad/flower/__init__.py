"""fedquad on Flower: the same strategies, client training and per-key merge across machines.

`fedquad.flower.serverapp:app` (ServerApp) and `fedquad.flower.clientapp:app` (ClientApp) are the
components of the Flower app declared in `pyproject.toml` (`[tool.flwr.app]`). They are thin
adapters over the core (`fedquad.strategies`, `fedquad.sim.round.train_assignment`,
`fedquad.aggregation`); only this package imports Flower. `fedquad.flower.local` starts and
stops a SuperLink and SuperNodes on one machine (the smoke command and the tests use it).
See docs/deployment.md.
"""
