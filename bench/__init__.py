"""Measurements that benchmark.py runs besides fit / evaluation / latency: the service under
load (``serve``), each script's cold start (``cold_start``), the data readers (``readers``) and
int8 against fp32 (``precision``). Each returns rows for benchmark.py's tables and JSON."""
