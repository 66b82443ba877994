"""Screens: the run picker, the run dashboard and the modal dialogs."""
