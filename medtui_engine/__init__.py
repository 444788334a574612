"""medtui_engine: the headless engine (never imports textual)."""
__version__ = "0.1.0"
