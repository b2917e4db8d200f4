"""pipesched's built-in strategies, installed as ``pipesched.strategies``.

Each is one file written against the public API only, exactly as a user's
plug-in would be, and registered through the ``pipesched.strategies``
entry-point group.
"""
