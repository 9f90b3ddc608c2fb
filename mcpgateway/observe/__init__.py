"""
What an operator sees of the gateway: logs, metrics, traces and the
records of tool calls and security events.  Everything here only records;
nothing decides.

  - L{logs}: the gateway's loggers and their level, JSON log output;
  - L{metrics}: Prometheus metrics, rendered inline;
  - L{tracing}: an optional OpenTelemetry span per tool call;
  - L{access}: the access log of tool calls;
  - L{security}: security events (refused credentials, limits, bad input);
  - L{audit}: the audit log, one record per tool call (the queue, drops,
    start and stop, reading), L{auditwriter}, its writer thread, and
    L{auditrecord}, what a record holds (redaction, caps);
  - its storage: L{auditsql} (the table, its migrations, the SQL both
    dialects share), L{auditsqlite} and L{auditpostgres} (each dialect),
    L{auditstorage} (the storage a URI names, opened);
  - L{auditquery}: which audit records to read (C{GET /audit}'s query
    string, the next page's cursor).
"""
