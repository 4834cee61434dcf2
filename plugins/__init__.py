"""Built-in lottery plugins: datasets, models, pruning strategies and reinitialisation policies.

Each module here is a pluggy plugin loaded through the ``lottery`` entry-point group, exactly
like a third-party package's. This folder installs as the package ``lottery_plugins`` (see
``pyproject.toml``); its modules import one another, if ever, relatively, so that they work under
that name.
"""
