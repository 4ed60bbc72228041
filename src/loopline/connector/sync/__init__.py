"""The connector's sync core: pull (CRM → Loopline), push (Loopline → CRM), manual sync, the error queue, the API
budget and run records ([R3], [R9]–[R29]).

Everything durable is a row (watermarks, outbox entries, links, errors, runs), so a worker killed at any point
resumes where the rows say. The decisions come from the pure engine (:mod:`loopline.connector.engine`); this package
fetches inputs, carries out decisions and records outcomes.
"""
