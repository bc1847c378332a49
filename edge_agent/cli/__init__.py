"""The operator's commands: `edge-agent run / check / classify / status / models / feedback`.

May import every room.
"""
