"""MQTT: the paho wrapper (events onto the loop), delivery (acks on PUBACK, spool replay), the spool.

Imports ops and the rooms below it.
"""
