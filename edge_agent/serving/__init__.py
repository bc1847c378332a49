"""One message in, one outcome out, per endpoint (requests, sensor bindings, operator commands).

Imports routing and the rooms below it.
"""
