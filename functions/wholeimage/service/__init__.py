"""The application layer: what the HTTP edge (``wholeimage.web``) and the CLI both call.

One module per capability, so a function's process loads only what it serves: ``jobs`` (submit,
read, list; the ``create`` function), ``tick`` (one ``check`` tick) and ``delivery`` (``notify``:
deliver, re-drive, dead letters). Each takes the process's ``Dependencies`` and returns a typed
result; the edges only translate their input and output.
"""
