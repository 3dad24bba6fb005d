"""The scheduled cost aggregator: cost records in, rollups, metrics and reconciliation out.

handler.py is the Lambda entry; aggregator.py the run; rollups.py and windows.py the pure
domain. The AWS side lives with the other adapters: adapters/cost_logs.py (CloudWatch Logs),
adapters/rollup_store.py (DynamoDB), adapters/rollup_metrics.py (CloudWatch metrics).
"""
