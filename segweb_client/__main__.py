"""``python -m segweb_client``: see the package's docstring."""

import sys

from segweb_client import main

sys.exit(main())
