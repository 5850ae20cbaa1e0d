"""Key delivery: QKD node -> ZeroMQ bridge -> KME store -> ETSI GS QKD 014 over mutual TLS.

Modules: ``protocol`` (bridge wire format v1), ``bridge`` (node outbox/DEALER and KME
ROUTER), ``store`` (sink interface, SQLite store), ``audit`` (hash-chained log),
``etsi`` (the 014 API), ``kme`` (one KME process), ``client`` (SAE client), ``pki``
(lab CA and Curve keys), ``site`` (two lab sites for tests and the HIL runner), ``cli``.
See docs/kms.md.
"""
