"""fedquad on Flower: the same strategies, client training and per-key merge across machines.

`fedquad.flower.serverapp:app` (ServerApp) and `fedquad.flower.clientapp:app` (ClientApp) are the
components of the Flower app declared in `pyproject.toml` (`[tool.flwr.app]`). They are thin
adapters over the core (`fedquad.strategies`, `fedquad.sim.round.train_assignment`,
`fedquad.aggregation`); only this package imports Flower. Starting and stopping a SuperLink and
SuperNodes on one machine is test tooling (`tests/local_federation.py`, used by the tests and
`scripts/deploy_smoke.py`), not part of the package. See docs/deployment.md.
"""
