"""Experiment tooling: sweeps over configs/seeds and reports that summarise their run directories."""
