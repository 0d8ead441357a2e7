"""The Predict tab: ``layout`` (components, wiring) and ``handlers`` (events); its view is ``app.formatting``."""
