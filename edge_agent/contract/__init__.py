"""What the trainer, the agent and clients share: manifest, signatures, JSON schema, topic rules, wire messages,
predictions.

Imports errors only.
"""
