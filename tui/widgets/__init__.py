"""Dashboard widgets. Each owns its DEFAULT_CSS and renders only when one of its reactives changes."""
