"""Which of local and cloud answers: the policy, the router, the cloud client, budgets and breaker, feedback.

Imports lifecycle and the rooms below it.
"""
