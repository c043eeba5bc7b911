"""Tiny fake implementations and a fake conformance module for the harness's own tests."""
