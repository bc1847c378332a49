"""Versions on the device: the store, registry pulls, swaps, probation after a swap, candidates on trial.

Imports transport and the rooms below it.
"""
