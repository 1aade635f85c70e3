"""The state store: the port and its records (``records``), the tables once (``schema``), what
each engine writes differently (``dialect``), the algorithm once (``base``), and the SQLite and
PostgreSQL adapters (``sqlite``, ``postgres``), which nothing else in this package imports."""
