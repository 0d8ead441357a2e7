"""The Predict tab: ``layout`` (components, wiring), ``handlers`` (events), ``view`` formatting in ``app.formatting``."""
