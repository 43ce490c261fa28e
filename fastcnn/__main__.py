"""``python -m fastcnn`` runs the ``fastcnn`` command (see fastcnn.cli)."""
import sys

from fastcnn.cli import main

sys.exit(main())
