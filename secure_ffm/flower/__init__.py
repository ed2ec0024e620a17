"""secure-ffm on Flower's deployment engine (SuperLink and SuperNodes): see :mod:`secure_ffm.flower.app`."""
