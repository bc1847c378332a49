"""What an operator watches: metrics, the scrape endpoint, readout, logs, systemd, the task supervisor.

Imports runtimes and the rooms below it.
"""
