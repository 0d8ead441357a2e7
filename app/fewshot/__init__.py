"""The Few-shot adaptation tab: ``layout`` (components, wiring), ``handlers`` (events), ``view`` (formatting)."""
