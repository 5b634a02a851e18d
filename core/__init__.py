"""slidefarm's shared core: what every layer uses and that is not persistence.

Settings (:mod:`core.config`), the deck schema and limits (:mod:`core.deck`),
log redaction (:mod:`core.redact`), the callback URL guard
(:mod:`core.urls`) and webhook signatures (:mod:`core.signing`). It imports
nothing else of slidefarm; the API, the workers and the store import it.
"""
