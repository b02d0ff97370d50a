"""Helpers shared by the tests (not test modules), importable as ``support.*`` from every test folder (``tests/`` is
on ``sys.path``: ``pythonpath`` in pyproject.toml). Fixtures live in ``tests/conftest.py``.

- :mod:`support.pipelines`: latents and loading for the tiny diffusers pipelines;
- :mod:`support.frontend`: the command line in this process or in a process of its own, pictures, recipes;
- :mod:`support.forkserver`: the fork server those processes start from;
- :mod:`support.evaluation`: image sets, stand-in networks and runs for the quality metrics;
- :mod:`support.reference`: the plain re-statement of the algorithm the package is checked against.
"""
