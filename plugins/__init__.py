"""Built-in lottery plugins: datasets, models, pruning strategies and reinitialisation policies.

Each module here is a pluggy plugin loaded through the ``lottery`` entry-point group, exactly
like a third-party package's.
"""
