"""Interoperation with other SPG implementations: reading their checkpoints into ordinary runs.

official.py   the authors' code (riips/SPG): SAE, dead-atom mask and guide checkpoints
cli.py        `spg import-official`
"""
