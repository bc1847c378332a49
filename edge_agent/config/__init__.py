"""Settings (env, file, flags) and the models.yaml schema.

Imports contract and errors only.
"""
