"""medtui: the Textual app."""
