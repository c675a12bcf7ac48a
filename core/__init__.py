"""The leaf every stage stands on: model profiles (``profiles``), the user-facing error
(``errors``), file utilities (``files``), command-line plumbing (``cli``), result records
(``records``) and the usable CPU count (``system``).

Nothing in ``core`` imports another package of this project.
"""
