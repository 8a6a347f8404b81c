"""Hydra configs of `python -m ringfa3.train`, packaged as ringfa3.configs (groups: model, data,
parallel, optim, train, logger, experiment). Their schema: ringfa3.train.config."""
