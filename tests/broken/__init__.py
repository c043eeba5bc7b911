"""Deliberately broken implementations: one real-world bug each, for the meta-tests.

Each class subclasses the reference and breaks exactly one thing; each has a
``make_implementation`` factory in its module so it also plugs in through
``--impl tests.broken.<module>:<Class>``.
"""
