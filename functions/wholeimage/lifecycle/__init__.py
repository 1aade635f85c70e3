"""Image lifecycle policies at work: slots run on the ``check`` tick, retention, plans, reports.

``runs`` is the tick's part, ``retention`` decides what goes, ``plan`` shows it ahead without an
IMS write, ``report`` words a run's message (docs/policies.md).
"""
