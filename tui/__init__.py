"""The longhaul Textual TUI (`longhaul attach`). Never imports torch, timm or torchaudio.

`tui.app.run_attach` is the entry point; importing this package alone loads nothing else.
"""
