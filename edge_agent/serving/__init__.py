"""One message in, one outcome out, per endpoint (requests, sensor bindings, operator commands, Home Assistant's
discovery).

Imports routing and the rooms below it.
"""
