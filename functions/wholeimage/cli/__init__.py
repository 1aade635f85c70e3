"""The operator command line: parser (``main``), commands, output and exit codes, serve, tables."""
