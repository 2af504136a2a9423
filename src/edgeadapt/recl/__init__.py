"""RECL (Khani et al., NSDI '23): a model zoo shared by all devices, a gating network that picks
experts for a window's frames, a safety checker, admission and pruning.

``rules.py`` holds the decisions as pure bookkeeping, ``gating.py`` the gating network,
``store.py`` the zoo on disk as versioned manifests over content-addressed blobs, ``zoo.py``
the live zoo that selects, admits and prunes.
"""
