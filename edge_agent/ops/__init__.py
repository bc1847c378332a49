"""What an operator watches: metrics, the scrape endpoint, readout, logs, systemd, the task supervisor, Home
Assistant's discovery payloads.

Imports runtimes and the rooms below it.
"""
