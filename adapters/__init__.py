"""Third-party implementations plugged into kvconform through the kvconform.implementations entry points."""
