"""``python -m labkit.data --calibrate`` / ``--write DIR``: see :func:`labkit.data.synthetic.main`."""

from .synthetic import main

main()
